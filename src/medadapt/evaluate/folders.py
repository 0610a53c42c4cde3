"""Scoring a folder of predictions against a folder of ground truth, matched by file name.

Predictions and ground truth may be NIfTI/other volumes (spacing from the ground truth's header),
2D masks (spacing 1), or CVPR24 ``.npz`` (``segs`` vs ``gts``, ``spacing`` key).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from medadapt.errors import MedadaptError
from medadapt.io.discovery import ALL_SUFFIXES, find_files, full_suffix, is_volume_file, pair_by_name
from medadapt.io.images import read_label_2d
from medadapt.io.volumes import read_volume
from medadapt.metrics.segmentation import case_metrics


def _read_labels(path: Path, key: str) -> tuple[np.ndarray, tuple[float, ...] | None, object]:
    """(label array, spacing or None, geometry reference) of a prediction or ground-truth file."""
    if full_suffix(path) == ".npz":
        with np.load(path, allow_pickle=False) as z:
            if key not in z:
                raise MedadaptError(f"this .npz has no '{key}' array.", path=path, fix=f"store labels under '{key}'.")
            spacing = tuple(float(s) for s in z["spacing"]) if "spacing" in z else None
            return np.asarray(z[key]), spacing, None
    if is_volume_file(path):
        vol = read_volume(path, label=True)
        squeezed = vol.array.astype(np.int64)
        spacing = tuple(float(s) for s in vol.spacing)
        if sum(s > 1 for s in squeezed.shape) == 2 and squeezed.ndim == 3:
            keep = [i for i, s in enumerate(squeezed.shape) if s > 1]
            spacing = tuple(spacing[i] for i in keep)
            squeezed = squeezed.reshape([squeezed.shape[i] for i in keep])
        return squeezed, spacing, vol

    return read_label_2d(path).astype(np.int64), None, None


def evaluate_folders(
    pred: Path,
    gt: Path,
    *,
    tolerance_mm: float = 2.0,
    cvpr24: bool = False,
    classes: Sequence[int] | None = None,
    pred_suffix: str | None = None,
    gt_suffix: str | None = None,
    progress: Callable[[], None] | None = None,
) -> list[dict]:
    """One row per case and class: case, class, dsc, nsd, hd95."""
    pred_files = find_files(pred, ALL_SUFFIXES, what="prediction")
    gt_files = find_files(gt, ALL_SUFFIXES, what="ground-truth")
    pairs = pair_by_name(pred_files, gt_files, image_suffix=pred_suffix, label_suffix=gt_suffix, labels_root=gt)
    rows: list[dict] = []
    for pair in pairs:
        seg, _, _ = _read_labels(pair.image, "segs")
        ref, spacing, _ = _read_labels(pair.label, "gts")
        if seg.shape != ref.shape:
            raise MedadaptError(
                f"prediction shape {seg.shape} differs from ground truth {ref.shape} ({pair.label.name}).",
                path=pair.image,
                fix="predict on the same images the ground truth belongs to.",
            )
        if spacing is None:
            spacing = (1.0,) * ref.ndim
        for row in case_metrics(ref, seg, spacing, classes=classes, tolerance_mm=tolerance_mm, cvpr24=cvpr24):
            rows.append({"case": pair.key, **row})
        if progress:
            progress()
    return rows
