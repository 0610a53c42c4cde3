"""``medadapt evaluate --task classify``: score a fitted classifier run on a split of a dataset.

Writes ``per_image.csv`` (id, true label per class, score per class) and ``summary.json`` (per-class
AUROC with a 95 % bootstrap CI, AP, accuracy and balanced accuracy, and their means at the top level
with ``auroc`` the headline), both atomically and only after every check and every prediction has
succeeded, so a bad input leaves no output behind.

``--split`` is a split name the data offers (``test``, ``val``; a MedMNIST ``.npz`` lists its own), or
a file (CSV / split list) to score instead of ``--data``'s. For a single-file source (CSV, split
list) without named splits, ``val`` is the part the fit held out (same stratified seed-0 hold-out)
and no split (or ``all``) scores the whole file. The reader options the run was trained with
(CheXpert uncertain policy, image root, chosen classes) are taken from its ``fit_config.json``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from medadapt.data.classification import (
    ClassificationDataset,
    ClassificationSplit,
    ImageTransform,
    dataset_splits,
    holdout_split,
    load_classification_split,
)
from medadapt.engine.fitted import load_trained_classifier
from medadapt.errors import MedadaptError
from medadapt.evaluate.classification import (
    evaluate_scores,
    scores_from_logits,
    write_scores_csv,
    write_summary,
)
from medadapt.precision import TORCH_PRECISIONS, autocast, parse_precision
from medadapt.run import SUMMARY, RunFolder


def load_eval_split(data: str, split: str | None, fit: dict[str, Any]) -> tuple[ClassificationSplit, str]:
    """The images to score and a description of them; unknown split names list the ones that exist."""
    opts = {k: v for k, v in {"uncertain": fit.get("uncertain_policy"), "image_root": fit.get("image_root"),
                              "frontal_only": fit.get("frontal_only")}.items() if v is not None}
    if split is not None and Path(split).is_file():
        return load_classification_split(split, **opts), str(split)
    if not Path(data).exists():
        raise MedadaptError("dataset not found", path=data, fix="check --data")
    names = dataset_splits(data)
    if names is None:  # one file, no named splits
        if split in (None, "all"):
            return load_classification_split(data, **opts), "all"
        if split == "val":
            whole = load_classification_split(data, **opts)
            held = holdout_split(whole.labels, float(fit.get("val_fraction", 0.1)), seed=0)
            return whole.subset(np.flatnonzero(held)), "val (held out of the file as in fit)"
        raise MedadaptError(f"{Path(data).name} has no split named '{split}': it is a single file "
                            "(its splits: all, and val = the part fit held out)", path=data,
                            fix="pass the test CSV / list itself with --split FILE")
    split = split or "test"
    if split not in names:
        raise MedadaptError(f"the data has no '{split}' split (it has: {', '.join(names) or 'none'})", path=data,
                            fix=f"use --split {names[0] if names else 'FILE'}, or --split FILE")
    return load_classification_split(data, split, **opts), split


@torch.no_grad()
def predict_logits(model: torch.nn.Module, split: ClassificationSplit, *, batch_size: int = 64,
                   precision: str = "fp32") -> np.ndarray:
    """Logits ``[N, num_outputs]`` with the model's own preprocessing (eval transform)."""
    spec = model.input_spec
    loader = DataLoader(ClassificationDataset(split, ImageTransform(spec.size, spec.normalize, spec.fit)),
                        batch_size=batch_size, shuffle=False)
    out = []
    with autocast(precision, model):
        for batch in loader:
            out.append(model(batch["image"]).float())
    return torch.cat(out).numpy()


def evaluate_classifier_run(*, data: str, adapter: Path, split: str | None, out: Path, batch_size: int = 64,
                            precision: str = "fp32", n_boot: int = 1000, tolerance_mm: float | None = None,
                            save_predictions: bool = False) -> dict[str, Any]:
    """Score the run ``adapter`` on ``split`` of ``data``; ``tolerance_mm`` / ``save_predictions`` are
    segmentation options and are ignored. Returns the summary plus ``message``."""
    del tolerance_mm, save_predictions
    precision = parse_precision(precision, allowed=TORCH_PRECISIONS).value
    if batch_size < 1 or n_boot < 0:
        raise MedadaptError("--batch-size must be >= 1 and --bootstrap >= 0")
    run = RunFolder.resolve(adapter)
    adapter_dir = run.adapter_dir
    fit = run.read_fit_config()
    images, which = load_eval_split(data, split, fit)
    if fit.get("classes"):
        images = images.select_classes(fit["classes"])
    model = load_trained_classifier(adapter_dir)
    if images.num_outputs != model.head.out_features or list(images.class_names) != list(model.class_names):
        raise MedadaptError(f"the data has {images.task} classes {images.class_names} but the model was trained on "
                            f"{model.task_type} classes {model.class_names}", path=data,
                            fix="evaluate on the dataset the run was fitted on")
    start = time.perf_counter()
    logits = predict_logits(model, images, batch_size=batch_size, precision=precision)
    seconds = time.perf_counter() - start
    probs = scores_from_logits(logits, images.task)
    known = images.known() if images.task == "multilabel" else None
    summary = evaluate_scores(images.targets(), probs, images.task, known=known, class_names=images.class_names,
                              n_boot=n_boot)
    summary["settings"] = {"data": str(data), "split": which, "adapter": str(adapter_dir), "model": model.backbone,
                           "input_size": model.input_spec.size, "precision": precision, "images": len(images),
                           "predict_seconds": seconds}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_scores_csv(out / "per_image.csv", images.ids, images.targets(), probs, images.task,
                     class_names=images.class_names, known=known)
    write_summary(out / SUMMARY, summary)
    lo, hi = summary.get("auroc_ci", [float("nan")] * 2)
    summary["message"] = (f"{images.task}, {len(images)} images ({which}): AUROC {summary['auroc']:.4f} "
                          f"[95 % CI {lo:.4f}, {hi:.4f}], balanced accuracy {summary['balanced_accuracy']:.4f}; "
                          f"wrote {out / 'per_image.csv'} and {out / SUMMARY}")
    return summary
