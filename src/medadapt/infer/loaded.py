"""Predict one case of a dataset, already loaded: a volume slice by slice (reassembled), or a 2D image.

Box mode uses a 2D box per class on every slice holding the class (the seeds' protocol), as
``medadapt predict --prompts boxes-from-labels`` does on files; automatic mode segments every slice
with no prompt.
"""

from __future__ import annotations

import numpy as np

from medadapt.data.prompts import boxes_from_label
from medadapt.infer.ensemble import EnsemblePredictor, check_prompt_mode
from medadapt.infer.predictor import SamPredictor
from medadapt.infer.volume import segment_volume_auto, segment_volume_from_labels
from medadapt.io.volumes import Volume


def predict_loaded(predictor: SamPredictor, image: np.ndarray, label: np.ndarray, slice_axis: int | None,
                   mode: str, *, volume: Volume | None = None) -> np.ndarray:
    """Prediction for one loaded case (volume when ``slice_axis`` is set, else a 2D image).

    A volume is cut along the predictor's own axis when its adapter was trained on a chosen one;
    ``volume`` (the file as read) is what an ensemble's 3D members segment.
    """
    check_prompt_mode(predictor, mode)
    if slice_axis is not None:
        slice_axis = slice_axis if predictor.slice_axis is None else predictor.slice_axis
        if isinstance(predictor, EnsemblePredictor):  # each member along its own axis
            return predictor.segment_volume_auto(image, slice_axis=slice_axis, volume=volume)
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
