"""Post-processing of automatic (prompt-free) segmentations, chosen on validation data as nnU-Net does.

A prompt-free model decodes every slice, so a false positive far from the organ survives as a
separate island. Keeping each class's largest connected component (26-connectivity in 3D) removes
such islands, but it would also delete real parts of structures that come in pieces (vessel trees,
paired organs). nnU-Net therefore decides per class on the validation cases: keep the step only
where it raises the mean DSC. :func:`choose_keep_largest` does that after an automatic-mode fit;
the chosen classes are stored in the run's ``postprocess.json`` (:class:`medadapt.run.RunFolder`)
and applied by the predictor.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from medadapt.data.transforms3d import keep_largest_component
from medadapt.engine.sam_fit import FitOptions, load_fit_dataset
from medadapt.infer.factory import PredictorSpec, load_predictor
from medadapt.infer.loaded import predict_loaded
from medadapt.metrics import dice
from medadapt.run import RunFolder, automatic_mode

__all__ = ["choose_keep_largest", "tune_auto_postprocessing"]


def choose_keep_largest(predictor, dataset, keys: Sequence[str], classes: Sequence[int]) -> tuple[list[int], dict]:
    """Classes whose mean validation DSC rises when only their largest component is kept.

    ``predictor`` predicts without post-processing (built with ``PredictorSpec(keep_largest=())``).
    Returns (classes, report) with the per-class mean DSC before and after on ``keys`` (a class
    absent from both the prediction and the reference of a case scores 1 there).
    """
    if predictor.keep_largest:
        raise ValueError("choose_keep_largest needs a predictor without post-processing "
                         "(PredictorSpec(keep_largest=())).")
    before: dict[int, list[float]] = {int(c): [] for c in classes}
    after: dict[int, list[float]] = {int(c): [] for c in classes}
    for key in keys:
        image, label, _, axis = dataset.load(dataset.case(key))
        seg = predict_loaded(predictor, image, label, axis, "auto")
        kept = keep_largest_component(seg, classes)
        for c in before:
            before[c].append(dice(label == c, seg == c, empty=1.0))
            after[c].append(dice(label == c, kept == c, empty=1.0))
    chosen = [c for c in before if before[c] and np.mean(after[c]) > np.mean(before[c])]
    report = {"cases": list(keys), "keep_largest": chosen, "classes": {
        str(c): {"dsc": float(np.mean(before[c])), "dsc_largest_component": float(np.mean(after[c])),
                 "keep_largest": c in chosen} for c in before if before[c]}}
    return chosen, report


def tune_auto_postprocessing(run_dir: str | Path, encode: Callable | None = None) -> dict | None:
    """After an automatic-mode fit: choose ``keep_largest`` on the run's validation cases and store
    it in the run's ``postprocess.json``. ``encode`` may replace a frozen encoder (``fit --encoder-engine``).

    Returns the report, or None when the run has no validation case or is not an automatic-mode run.
    """
    run = RunFolder(run_dir)
    classes, _ = automatic_mode(run.read_adapter_meta())
    if classes is None:
        return None
    dataset = load_fit_dataset(FitOptions.model_validate(run.read_fit_config(required=True)))
    val = list(run.read_split(dataset).val)
    if not val:
        return None
    predictor = load_predictor(PredictorSpec(adapters=(run.root,), encoder=encode, keep_largest=()))
    chosen, report = choose_keep_largest(predictor, dataset, val, classes)
    run.write_postprocess(chosen, report)
    return report
