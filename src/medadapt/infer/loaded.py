"""Run a (zero-shot or adapted) SAM-family model over held-out cases of a dataset and score them.

Volumes are segmented slice by slice and reassembled, then scored in 3D with their spacing,
exactly as ``medadapt predict`` + ``medadapt evaluate`` would do on the files: box mode uses
a 2D box per class on every slice holding the class (the seeds' protocol), automatic mode
segments every slice with no prompt.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from medadapt.data.datasets import Dataset
from medadapt.data.prompts import boxes_from_label
from medadapt.evaluate.segmentation import case_metrics
from medadapt.infer.ensemble import EnsemblePredictor, check_prompt_mode
from medadapt.infer.predictor import SamPredictor
from medadapt.infer.volume import segment_volume_auto, segment_volume_from_labels


def predict_loaded(predictor: SamPredictor, image: np.ndarray, label: np.ndarray, slice_axis: int | None,
                   mode: str) -> np.ndarray:
    """Prediction for one loaded case (volume when ``slice_axis`` is set, else a 2D image).

    A volume is cut along the predictor's own axis when its adapter was trained on a chosen one.
    """
    check_prompt_mode(predictor, mode)
    if slice_axis is not None:
        slice_axis = slice_axis if predictor.slice_axis is None else predictor.slice_axis
        if isinstance(predictor, EnsemblePredictor):  # each member along its own axis
            return predictor.segment_volume_auto(image, slice_axis=slice_axis)
        if mode == "auto":
            return segment_volume_auto(predictor, image, slice_axis=slice_axis)
        return segment_volume_from_labels(predictor, image, label, slice_axis=slice_axis)
    if mode == "auto":
        return predictor.segment_auto(image)
    prompts = boxes_from_label(label, per="class")
    if not prompts:
        return np.zeros(label.shape, dtype=np.uint16)
    seg, _ = predictor.segment(image, prompts)
    return seg


def evaluate_dataset(
    predictor: SamPredictor,
    dataset: Dataset,
    keys: Sequence[str],
    *,
    mode: str = "box",
    classes: Sequence[int] | None = None,
    tolerance_mm: float = 2.0,
    save_dir: Path | None = None,
    progress: Callable[[], None] | None = None,
) -> tuple[list[dict], dict]:
    """Rows (case, class, dsc, nsd, hd95) for every key, and timing info."""
    if classes is None:
        classes = sorted(dataset.classes) if dataset.classes else None
    rows: list[dict] = []
    start = time.perf_counter()
    for key in keys:
        ref = dataset.case(key)
        image, label, spacing, axis = dataset.load(ref)
        seg = predict_loaded(predictor, image, label, axis, mode)
        for row in case_metrics(label, seg, spacing, classes=classes, tolerance_mm=tolerance_mm):
            rows.append({"case": key, **row})
        if save_dir is not None:
            _save(save_dir, ref, seg)
        if progress:
            progress()
    info = {"cases": len(keys), "seconds": time.perf_counter() - start,
            "images_encoded": predictor.images_encoded, "encoder_calls": predictor.encoder_calls}
    return rows, info


def _save(save_dir: Path, ref, seg: np.ndarray) -> None:
    from medadapt.io.discovery import full_suffix, stem

    save_dir = Path(save_dir)
    if ref.is_3d and full_suffix(ref.image) != ".npz":
        from medadapt.io.volumes import read_volume, write_like

        write_like(save_dir / ref.image.name, seg, read_volume(ref.image))
    elif full_suffix(ref.image) == ".npz":
        from medadapt.io.cvpr24 import write_cvpr24_segs

        write_cvpr24_segs(save_dir / ref.image.name, seg)
    else:
        from medadapt.io.images import write_mask_png

        write_mask_png(save_dir / f"{stem(ref.image)}.png", seg)
