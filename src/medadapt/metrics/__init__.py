"""Metric functions: pure maths on arrays, no files, no models (as ``monai.metrics``).

Segmentation metrics equal the official CVPR24 "MedSAM on Laptop" code; see
:mod:`medadapt.metrics.segmentation` and :mod:`medadapt.metrics.surface`.
"""

from medadapt.metrics.segmentation import CVPR24_NSD_MIN_DSC, case_metrics, dice
from medadapt.metrics.surface import hd95, nsd, surface_distances

__all__ = ["CVPR24_NSD_MIN_DSC", "case_metrics", "dice", "hd95", "nsd", "surface_distances"]
