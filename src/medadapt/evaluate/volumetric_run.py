"""``medadapt evaluate --task volumetric``: score a 3D fit run on its held-out volumes.

The adapted model is rebuilt from the run folder (:func:`medadapt.engine.fitted.load_fitted`:
base model + checkpoint + head + adapter), each test volume of the run's ``split.json`` (or
``--split``) is segmented with the Gaussian-blended sliding window and mapped back to its original
grid (:func:`medadapt.infer.sliding_window.segment_volume`), the training label values are restored,
and DSC, NSD at ``tolerance_mm`` and HD95 are computed per case and class exactly as for the segment
task (:func:`medadapt.metrics.segmentation.case_metrics`, :mod:`medadapt.evaluate.summary`).
Nothing is written until every volume is scored, so a bad input leaves no partial output.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from medadapt.data.fewshot import cases_to_score, load_split
from medadapt.data.volume_dataset import load_volume_dataset
from medadapt.engine.fitted import load_fitted, prep_from_fields
from medadapt.errors import MedadaptError
from medadapt.evaluate.summary import summarize, write_per_case_csv, write_summary_json
from medadapt.infer.sliding_window import segment_volume
from medadapt.io.discovery import resolve_spec
from medadapt.io.volumes import read_volume, write_like
from medadapt.metrics import case_metrics
from medadapt.precision import TORCH_PRECISIONS, autocast, parse_precision
from medadapt.run import SUMMARY, RunFolder

__all__ = ["evaluate_volumetric_run"]


def evaluate_volumetric_run(
    *,
    data: str,
    adapter: str | Path,
    split: str | Path | None = None,
    out: str | Path,
    batch_size: int = 4,
    precision: str = "fp32",
    n_boot: int = 1000,
    tolerance_mm: float = 2.0,
    save_predictions: bool = False,
) -> dict:
    """Write ``per_case.csv`` + ``summary.json`` (and ``pred/*.nii.gz``) under ``out``; returns the summary."""
    precision = parse_precision(precision, allowed=TORCH_PRECISIONS).value
    if batch_size < 1:
        raise MedadaptError(f"--batch-size must be >= 1, got {batch_size}.")
    model, fit_config, _ = load_fitted(adapter)
    folder = RunFolder(adapter) if RunFolder(adapter).fit_config_path.is_file() else RunFolder(Path(adapter).parent)
    run = folder.root
    resolved = fit_config["resolved"]
    dataset = load_volume_dataset(data, modality=fit_config.get("modality", "auto"))
    split_path = Path(split) if split is not None else folder.split_path
    if split is not None:  # a split file given by hand names this dataset's cases
        the_split = load_split(split_path, dataset)
        keys, which = list(the_split.test), "the --split file's test cases"
    else:  # the run's own split: its test cases, or every case of another dataset
        the_split = load_split(split_path)
        keys, which = cases_to_score(the_split, dataset, path=split_path)
    if not keys:
        raise MedadaptError("the split has no held-out (test) volume to evaluate.", path=split_path)
    leaked = sorted(set(keys) & (set(the_split.train) | set(the_split.val)))
    if leaked:  # load_split refuses overlaps already; keep the contract explicit
        raise MedadaptError(f"test volumes {leaked} were trained on.", path=split_path)
    prep = prep_from_fields(resolved["preprocessing"])
    classes = [int(c) for c in resolved["classes"]]
    lut = np.asarray([0, *classes], dtype=np.int32)  # model label i -> dataset label value
    cast = autocast(precision, model)

    rows: list[dict] = []
    predictions = []
    start = time.perf_counter()
    for key in keys:
        case = dataset.case(key)
        if case.label is None:
            raise MedadaptError(f"test case {key} has no label to score against.", path=case.image)
        volume = read_volume(case.image)
        gt = read_volume(case.label, label=True).array
        if gt.shape != volume.array.shape:
            raise MedadaptError(f"label shape {gt.shape} differs from the image's {volume.array.shape}.",
                                path=case.label)
        with cast:
            labels = segment_volume(
                model, volume, prep, resolved["roi"], overlap=resolved.get("overlap", 0.5),
                sw_batch_size=batch_size, sigmoid=resolved["sigmoid"],
                largest_component=resolved.get("largest_component", False),
            )
        pred = lut[labels].astype(gt.dtype if np.issubdtype(gt.dtype, np.integer) else np.uint8)
        for row in case_metrics(gt, pred, volume.spacing, classes=classes, tolerance_mm=tolerance_mm):
            rows.append({"case": key, **row})
        if save_predictions:
            predictions.append((key, pred, volume))
    seconds = time.perf_counter() - start

    summary = summarize(rows, n_boot=n_boot)
    summary["settings"] = {
        "task": "volumetric", "data": resolve_spec(data), "adapter": str(run), "split": str(split_path), "cases": which,
        "tolerance_mm": tolerance_mm, "precision": precision, "roi": resolved["roi"],
        "classes": classes, "class_names": resolved["class_names"], "recipe": resolved["recipe"],
        "head": resolved["head"], "transductive": fit_config.get("transductive", False),
        "seconds": seconds,
    }
    out = Path(out)
    for key, pred, volume in predictions:  # written atomically, with the input's affine / header
        write_like(out / "pred" / f"{key}.nii.gz", pred, volume)
    write_per_case_csv(out / "per_case.csv", rows)
    write_summary_json(out / SUMMARY, summary)
    o = summary["overall"]
    summary["message"] = (
        f"evaluated {len(keys)} held-out volume(s): DSC {o['dsc']['mean']:.4f}, "
        f"NSD@{tolerance_mm:g}mm {o['nsd']['mean']:.4f}, HD95 {o['hd95']['mean']:.2f} mm "
        f"({o['hd95']['n_inf']} inf); wrote {out / 'per_case.csv'} and {out / SUMMARY}"
    )
    return summary
