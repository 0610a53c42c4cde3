"""Apply a fitted 3D segmentation or classification run to new images (``medadapt predict --adapter RUN``).

The task is read from the run's adapter metadata (:func:`run_task`), so one command serves every kind of
run: SAM-family runs go through :mod:`medadapt.infer.cases`; volumetric runs (3D U-Net / SwinUNETR) are
segmented with the Gaussian-blended sliding window that ``evaluate --task volumetric`` uses and written
with each input's header (:func:`medadapt.io.volumes.write_like`); classification runs write one CSV row
of class probabilities per input image. Outputs appear atomically, only once every input succeeded.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from medadapt.data.classification import (
    ClassificationDataset,
    ClassificationSplit,
    ImageTransform,
    dataset_splits,
    load_classification_split,
)
from medadapt.engine.fitted import load_fitted, load_trained_classifier, prep_from_fields
from medadapt.errors import MedadaptError
from medadapt.infer.sliding_window import segment_volume
from medadapt.io.atomic import staged_dir, write_text
from medadapt.io.discovery import IMAGE_2D_SUFFIXES, find_files, full_suffix, is_volume_file, stem
from medadapt.io.volumes import read_volume, write_like
from medadapt.precision import autocast
from medadapt.run import RunFolder, adapter_info, is_bank, is_ensemble

TASKS = ("segment", "volumetric", "classify")


def run_task(run: str | Path) -> str:
    """segment | volumetric | classify: what the run (or adapter folder) at ``run`` was fitted for."""
    if is_bank(run) or is_ensemble(run):  # SAM-family bank; an ensemble runs through the SAM-family path
        return "segment"
    return adapter_info(RunFolder.resolve(run).read_adapter_meta()).task


# ----------------------------------------------------------------------------- volumetric


def predict_volumes(run: str | Path, inputs: list[Path], out: str | Path, *, batch_size: int = 4,
                    precision: str = "fp32", progress: Callable[[], None] | None = None) -> list[Path]:
    """Segment each volume of ``inputs`` with the 3D run ``run``; label maps keep the input's geometry."""
    bad = [p for p in inputs if not is_volume_file(p)]
    if bad:
        raise MedadaptError("is not a 3D volume (NIfTI / MHA / NRRD); a volumetric run segments volumes.",
                            path=bad[0], fix="pass volumes, e.g. --input imagesTs/")
    model, fit_config, _ = load_fitted(run)
    resolved = fit_config["resolved"]
    prep = prep_from_fields(resolved["preprocessing"])
    lut = np.asarray([0, *[int(c) for c in resolved["classes"]]], dtype=np.int32)  # model label -> label value
    written = []
    with staged_dir(Path(out)) as stage:
        for path in inputs:
            volume = read_volume(path)
            with torch.no_grad(), autocast(precision, model):
                labels = segment_volume(
                    model, volume, prep, resolved["roi"], overlap=resolved.get("overlap", 0.5),
                    sw_batch_size=batch_size, sigmoid=resolved["sigmoid"],
                    largest_component=resolved.get("largest_component", False),
                )
            # the input's name (.mhd / .nhdr are two files, written as .nii.gz)
            name = path.name if full_suffix(path) not in (".mhd", ".nhdr") else stem(path) + ".nii.gz"
            write_like(stage / name, lut[labels], volume)
            written.append(Path(out) / name)
            if progress:
                progress()
    return written


# ----------------------------------------------------------------------------- classification


def read_images_to_classify(source: Path):
    """(ids, ClassificationSplit-like images) from a folder of images, a MedMNIST ``.npz`` (its test split,
    or its only split) or a CSV with an ``image`` column (labels, if any, are not read)."""
    source = Path(source)
    if source.is_file() and source.suffix.lower() == ".npz":
        names = dataset_splits(source) or []
        if not names:
            raise MedadaptError("holds no '<split>_images' array.", path=source, fix="pass a MedMNIST-style .npz")
        part = "test" if "test" in names else names[0]
        split = load_classification_split(source, part)
        return list(split.ids), split
    if source.is_file() and source.suffix.lower() == ".csv":
        rows = list(csv.DictReader(io.StringIO(source.read_text())))
        if not rows or "image" not in rows[0]:
            raise MedadaptError("needs an 'image' column with one image path per row.", path=source,
                                fix="write the CSV as image[,label...] with paths relative to the CSV's folder")
        paths = [Path(r["image"]) if Path(r["image"]).is_absolute() else source.parent / r["image"] for r in rows]
        missing = [p for p in paths if not p.is_file()]
        if missing:
            raise MedadaptError(f"{len(missing)} image(s) listed are missing, e.g. {missing[0]}.", path=source)
        ids = [r["image"] for r in rows]
    else:
        paths = find_files(source, IMAGE_2D_SUFFIXES, what="image")
        ids = [str(p.relative_to(source)) if source.is_dir() else p.name for p in paths]
    split = ClassificationSplit(paths, np.zeros(len(paths), np.int64), "binary", ["unlabelled"], ids,
                                source=str(source))
    return ids, split


def predict_classes(run: str | Path, source: Path, out_csv: str | Path, *, batch_size: int = 64,
                    precision: str = "fp32") -> Path:
    """Write ``out_csv``: ``id`` and one probability column per class (``prob_<class>``), one row per image."""
    model = load_trained_classifier(RunFolder.resolve(run).adapter_dir)
    ids, images = read_images_to_classify(source)
    spec = model.input_spec
    loader = DataLoader(ClassificationDataset(images, ImageTransform(spec.size, spec.normalize, spec.fit)),
                        batch_size=batch_size, shuffle=False)
    with torch.no_grad(), autocast(precision, model):
        logits = torch.cat([model(b["image"]).float() for b in loader])
    if model.task_type == "multiclass":
        probs, names = torch.softmax(logits, 1).numpy(), list(model.class_names)
    elif model.task_type == "binary":  # one logit: the probability of the second class
        probs, names = torch.sigmoid(logits).numpy(), [model.class_names[-1]]
    else:
        probs, names = torch.sigmoid(logits).numpy(), list(model.class_names)
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["id", *[f"prob_{n}" for n in names]])
    for i, row in zip(ids, probs, strict=True):
        writer.writerow([i, *[f"{float(p):.6f}" for p in row]])
    out_csv = Path(out_csv)
    write_text(out_csv, buf.getvalue())
    return out_csv
