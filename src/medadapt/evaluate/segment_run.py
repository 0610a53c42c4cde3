"""Score a SAM-family model (zero-shot, one run, or an ensemble) on the held-out cases of a dataset.

``medadapt evaluate --data SPEC --adapter RUN``: the test cases of the run's ``split.json`` (or
``--split``, or a default split) are segmented exactly as ``medadapt predict`` would segment the
files (:func:`medadapt.infer.loaded.predict_loaded`), then scored in 3D with their spacing by
:func:`medadapt.metrics.case_metrics`. Cases an ensemble member trained or validated on are left out.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from medadapt.data.datasets import Dataset, load_segmentation_dataset
from medadapt.data.fewshot import cases_to_score, make_split
from medadapt.errors import MedadaptError
from medadapt.evaluate.summary import adapter_settings
from medadapt.infer.ensemble import check_mirror, check_prompt_mode
from medadapt.infer.factory import PredictorSpec, adapters_of, load_predictor
from medadapt.infer.loaded import predict_loaded
from medadapt.infer.predictor import SamPredictor
from medadapt.io.cvpr24 import write_cvpr24_segs
from medadapt.io.discovery import full_suffix, resolve_spec, stem
from medadapt.io.images import write_mask_png
from medadapt.io.volumes import Volume, read_volume, write_like
from medadapt.metrics import case_metrics
from medadapt.run import RunFolder, read_split_file

__all__ = ["evaluate_dataset", "evaluate_segment_run"]


def source_volume(predictor, ref) -> Volume | None:
    """The case's volume as read, for a predictor with a 3D member (it sees intensities and geometry); else None."""
    return read_volume(ref.image) if getattr(predictor, "needs_volume", False) else None


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
        volume = source_volume(predictor, ref)
        seg = predict_loaded(predictor, image, label, axis, mode, volume=volume)
        for row in case_metrics(label, seg, spacing, classes=classes, tolerance_mm=tolerance_mm):
            rows.append({"case": key, **row})
        if save_dir is not None:
            _save(save_dir, ref, seg)
        if progress:
            progress()
    info = {"cases": len(keys), "seconds": time.perf_counter() - start,
            "images_encoded": predictor.images_encoded, "encoder_calls": predictor.encoder_calls}
    return rows, info


def evaluate_segment_run(
    data: str,
    *,
    adapters: Sequence[Path],
    model: str | None = None,
    split: str | Path | None = None,
    prompt: str | None = None,
    classes: Sequence[int] | None = None,
    tolerance_mm: float = 2.0,
    out: Path,
    save: bool = False,
    label_dir: str | None = None,
    image_suffix: str | None = None,
    label_suffix: str | None = None,
    batch_size: int | None = None,
    precision: str = "fp32",
    mirror: bool = False,
    resize: str | None = None,
    roi_margin: float | None = None,
    progress: Callable[[int], Callable[[], None]] | None = None,
    notify: Callable[[str], None] | None = None,
) -> tuple[list[dict], dict]:
    """Rows (case, class, dsc, nsd, hd95) of the held-out cases and the settings to record.

    ``progress(n)`` is called once with the number of cases and returns the per-case callback;
    ``notify`` receives a line about cases left out.
    """
    dataset = load_segmentation_dataset(data, label_dir=label_dir, image_suffix=image_suffix, label_suffix=label_suffix)
    run_splits = [RunFolder(a).split_path for a in adapters if RunFolder(a).split_path.is_file()]
    if split is not None:  # a split file given by hand names this dataset's cases
        keys, which = list(read_split_file(Path(split), dataset).test), "the --split file's test cases"
    elif run_splits:  # the run's test cases, or every case of another dataset
        keys, which = cases_to_score(read_split_file(run_splits[0]), dataset, path=run_splits[0])
    else:
        keys, which = list(make_split(dataset, shots=1, seed=0).test), "the dataset's default test set"
    predictor = load_predictor(PredictorSpec(model=model, adapters=adapters_of(adapters), batch_size=batch_size,
                                             precision=precision, mirror=mirror, resize=resize,
                                             roi_margin=roi_margin))
    mode = prompt or ("auto" if predictor.is_automatic else "box")
    if mode == "auto" and not predictor.is_automatic:
        raise MedadaptError("--prompt auto needs an adapter trained with --prompt auto.", fix="pass --adapter RUN.")
    check_prompt_mode(predictor, mode)
    run = adapters[0] if adapters else None
    check_mirror(mirror, mode, run)
    seen: set[str] = set()
    for f in run_splits:
        member = read_split_file(f)
        seen |= set(member.train) | set(member.val)
    if seen & set(keys):  # an ensemble member trained on some of these cases: they are not held out for it
        dropped = [k for k in keys if k in seen]
        keys = [k for k in keys if k not in seen]
        if notify:
            notify(f"not scored: {', '.join(dropped)} (trained on by an --adapter run)")
        if not keys:
            raise MedadaptError("every test case was a training or validation case of one of the --adapter runs.",
                                fix="ensemble runs whose splits share held-out cases (same dataset, default split).")
    rows, info = evaluate_dataset(
        predictor, dataset, keys, mode=mode, classes=classes, tolerance_mm=tolerance_mm,
        save_dir=(out / "pred") if save else None, progress=progress(len(keys)) if progress else None,
    )
    settings = {"data": resolve_spec(data), **adapter_settings(adapters),
                "label_dir": label_dir, "image_suffix": image_suffix, "label_suffix": label_suffix,
                "model": predictor.spec.name if predictor.spec is not None else None, "prompt": mode, "split": str(split) if split else which,
                "tolerance_mm": tolerance_mm, "mirror": mirror, "resize": getattr(predictor, "resize", resize),
                "roi_margin": roi_margin, **info}
    return rows, settings


def _save(save_dir: Path, ref, seg: np.ndarray) -> None:

    save_dir = Path(save_dir)
    if ref.is_3d and full_suffix(ref.image) != ".npz":
        write_like(save_dir / ref.image.name, seg, read_volume(ref.image))
    elif full_suffix(ref.image) == ".npz":
        write_cvpr24_segs(save_dir / ref.image.name, seg)
    else:
        write_mask_png(save_dir / f"{stem(ref.image)}.png", seg)
