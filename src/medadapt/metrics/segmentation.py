"""Per-case, per-class DSC / NSD / HD95 with the CVPR24 "MedSAM on Laptop" conventions.

Values equal what the official evaluation code computes (DeepMind ``surface-distance`` underneath, see
:mod:`medadapt.metrics.surface`); ``tests/test_metrics_reference.py`` checks every case of
``shared/reference/metric_cases.json``.

Conventions (the official ones):

- DSC is NaN when both masks are empty, 0 when exactly one is.
- A class present in the ground truth and absent from the prediction (or the reverse) scores DSC 0,
  NSD 0 and HD95 ``inf``; a class empty in both gives NaN for all three.
- 2D label maps are evaluated as ``H x W x 1`` volumes: the surface then includes the top and bottom
  faces of the slab, as in the official code (which is not DeepMind's 2D contour length).
- ``cvpr24=True`` adds the challenge rules of its ``compute_metrics.py``: NSD is computed only when the
  case DSC (mean over the evaluated classes present in the ground truth) is > 0.2, otherwise every class
  scores NSD 0; and 2D images use spacing 1 whatever spacing is given. The rule is per case, not per
  class, so that the mean of the per-class NSDs is the official case NSD.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np

from medadapt.errors import MedadaptError
from medadapt.metrics.surface import check_same_grid, hd95, nsd, surface_distances

CVPR24_NSD_MIN_DSC = 0.2  # the challenge sets NSD to 0 for cases at or below this DSC


def dice(gt: np.ndarray, seg: np.ndarray, *, empty: float = math.nan) -> float:
    """Dice similarity coefficient of two boolean masks; ``empty`` when both are empty.

    The official convention (and the default) is NaN: a class absent from both is not scored. Where a
    mean over cases must count such a case as right (choosing post-processing), pass ``empty=1.0``.
    """
    check_same_grid(gt, seg)
    gt, seg = np.asarray(gt, dtype=bool), np.asarray(seg, dtype=bool)
    volume_sum = np.count_nonzero(gt) + np.count_nonzero(seg)
    if volume_sum == 0:
        return empty
    return 2 * np.count_nonzero(gt & seg) / volume_sum


def _as_labels(name: str, labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.dtype == bool or np.issubdtype(labels.dtype, np.integer):
        return labels
    if (
        np.issubdtype(labels.dtype, np.floating)
        and np.all(np.isfinite(labels))
        and np.all(labels == np.round(labels))
    ):
        return labels.astype(np.int64)  # label maps stored as float (e.g. some NIfTI files)
    raise MedadaptError(
        f"{name} is not a label map: dtype {labels.dtype} with non-integer values",
        fix="pass integer class labels (0 = background), not probabilities or logits",
    )


def case_metrics(
    gt: np.ndarray,
    seg: np.ndarray,
    spacing: Sequence[float],
    *,
    classes: Iterable[int] | None = None,
    tolerance_mm: float = 2.0,
    cvpr24: bool = False,
) -> list[dict]:
    """DSC, NSD at ``tolerance_mm`` and HD95 of one case, one dict per class.

    ``gt`` / ``seg`` are integer label maps (0 = background), ``H x W`` or ``D x H x W``; ``spacing`` is
    in mm in array-axis order (2 values for 2D, 3 for 3D). ``classes`` defaults to ``1..max(gt)``.
    Returns ``[{"class": c, "dsc": .., "nsd": .., "hd95": ..}, ...]`` in the order of ``classes``.
    """
    gt, seg = _as_labels("ground truth", gt), _as_labels("prediction", seg)
    check_same_grid(gt, seg)
    if gt.ndim not in (2, 3):
        raise MedadaptError(f"label maps must be 2D or 3D, got shape {gt.shape}")
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != gt.ndim:
        raise MedadaptError(
            f"spacing {spacing} has {len(spacing)} values for a {gt.ndim}D label map of shape {gt.shape}",
            fix=f"give {gt.ndim} voxel sizes in mm, in array-axis order",
        )
    if gt.ndim == 2:  # the official code evaluates 2D images as H x W x 1 volumes
        gt, seg = gt[..., None], seg[..., None]
        spacing = (1.0, 1.0, 1.0) if cvpr24 else (*spacing, 1.0)

    if classes is None:
        classes = range(1, int(gt.max()) + 1 if gt.size else 1)
    classes = [int(c) for c in classes]

    masks = [(gt == c, seg == c) for c in classes]
    dscs = [dice(g, s) for g, s in masks]
    compute_nsd = True
    if cvpr24:
        present = [d for (g, _), d in zip(masks, dscs, strict=True) if g.any()]
        case_dsc = float(np.mean(present)) if present else math.nan
        compute_nsd = case_dsc > CVPR24_NSD_MIN_DSC  # NaN > 0.2 is False, as in the official code

    rows = []
    for c, (g, s), d in zip(classes, masks, dscs, strict=True):
        if math.isnan(d):  # empty in both: nothing to measure
            rows.append({"class": c, "dsc": math.nan, "nsd": math.nan, "hd95": math.nan})
            continue
        sd = surface_distances(g, s, spacing)
        rows.append(
            {
                "class": c,
                "dsc": float(d),
                "nsd": nsd(sd, tolerance_mm) if compute_nsd else 0.0,
                "hd95": hd95(sd),
            }
        )
    return rows
