"""``medadapt evaluate`` as one library call: score a fitted run on a dataset, or prediction files against labels.

Three ways in: ``task`` classify / volumetric score one fitted run on ``data``
(:mod:`medadapt.evaluate.classify_run`, :mod:`medadapt.evaluate.volumetric_run`); ``task="segment"`` with
``data`` segments the held-out cases with a run, an ensemble or a zero-shot model and scores them
(:mod:`medadapt.evaluate.segment_run`); without ``data``, ``pred`` files are matched to ``gt`` files by name
(:mod:`medadapt.evaluate.folders`). Segmentation scores are written as ``per_case.csv`` + ``summary.json``
and shown on the run's report page, which is why this sits above ``report``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from medadapt.errors import MedadaptError
from medadapt.evaluate.classify_run import evaluate_classifier_run
from medadapt.evaluate.folders import evaluate_folders
from medadapt.evaluate.segment_run import evaluate_segment_run
from medadapt.evaluate.summary import summarize, write_per_case_csv, write_summary_json
from medadapt.evaluate.volumetric_run import evaluate_volumetric_run
from medadapt.infer.run_predict import run_task
from medadapt.report import write_report
from medadapt.run import SUMMARY

__all__ = ["TASKS", "Evaluation", "evaluate"]

TASKS = ("segment", "classify", "volumetric")

#: ``progress(total, what)`` is called once per stage (total None: unknown) and returns the per-item callback
Progress = Callable[[int | None, str], Callable[[], None]]


@dataclass
class Evaluation:
    """What an evaluation wrote: its summary, whether that holds per-class segmentation scores, and lines for the user."""

    summary: dict
    segmentation: bool
    messages: list[str] = field(default_factory=list)


def evaluate(
    *,
    out: Path,
    task: str = "segment",
    pred: Path | None = None,
    gt: Path | None = None,
    data: str | None = None,
    adapters: Sequence[Path] = (),
    model: str | None = None,
    split: str | None = None,
    prompt: str | None = None,
    save_predictions: bool = False,
    label_dir: str | None = None,
    image_suffix: str | None = None,
    label_suffix: str | None = None,
    batch_size: int | None = None,
    precision: str = "fp32",
    tolerance_mm: float = 2.0,
    cvpr24: bool = False,
    classes: Sequence[int] | None = None,
    pred_suffix: str | None = None,
    gt_suffix: str | None = None,
    n_boot: int = 1000,
    mirror: bool = False,
    resize: str | None = None,
    roi_margin: float | None = None,
    progress: Progress | None = None,
    notify: Callable[[str], None] | None = None,
) -> Evaluation:
    """Score into ``out`` (see the module docstring for the three ways in); ``notify`` gets lines about
    cases left out."""
    if task not in TASKS:
        raise MedadaptError(f"--task '{task}' is not one of {', '.join(TASKS)}.", fix="use --task segment")
    adapters = list(adapters)
    if task == "segment" and len(adapters) == 1 and data is not None and run_task(adapters[0]) == "volumetric":
        task = "volumetric"  # a 3D run (e.g. the winner of `fit --method best`) is scored as one
    if task != "segment":
        return _evaluate_run(task, data=data, adapters=adapters, split=split, out=out, precision=precision,
                             n_boot=n_boot, tolerance_mm=tolerance_mm, save_predictions=save_predictions,
                             batch_size=batch_size)
    if data is None and (resize is not None or roi_margin is not None):
        raise MedadaptError("--resize and --roi-margin change how images are segmented, so they need --data SPEC.",
                            fix="add --data (with --adapter RUN or --model), or pass them to `medadapt predict`.")
    if mirror and data is None:
        raise MedadaptError("--mirror segments images, so it needs --data SPEC (with an automatic-mode --adapter RUN).",
                            fix="add --data and --adapter, or leave --mirror out when scoring --pred/--gt files.")
    if data is not None:
        rows, settings = evaluate_segment_run(
            data, adapters=adapters, model=model, split=split, prompt=prompt, classes=classes,
            tolerance_mm=tolerance_mm, out=out, save=save_predictions, label_dir=label_dir,
            image_suffix=image_suffix, label_suffix=label_suffix, batch_size=batch_size, precision=precision,
            mirror=mirror, resize=resize, roi_margin=roi_margin, notify=notify,
            progress=(lambda n: progress(n, "segment + score")) if progress else None,
        )
        return _write(out, rows, settings, n_boot)
    if pred is None or gt is None:
        raise MedadaptError("give --pred and --gt folders, or --data SPEC (with --adapter RUN or --model).")
    rows = evaluate_folders(
        pred, gt, tolerance_mm=tolerance_mm, cvpr24=cvpr24, classes=classes, pred_suffix=pred_suffix,
        gt_suffix=gt_suffix, progress=progress(None, "evaluate") if progress else None,
    )
    return _write(out, rows, {"tolerance_mm": tolerance_mm, "cvpr24": cvpr24, "pred": str(pred), "gt": str(gt)}, n_boot)


def _evaluate_run(task: str, *, data: str | None, adapters: list[Path], batch_size: int | None, **kwargs) -> Evaluation:
    """A classify or volumetric run scored on ``data``."""
    if data is None or not adapters:
        raise MedadaptError(f"--task {task} evaluates a fitted run on a dataset.", fix="pass --data SPEC and --adapter RUN.")
    if len(adapters) > 1:
        raise MedadaptError(f"--task {task} evaluates one run; --adapter was given {len(adapters)} times.",
                            fix="pass a single --adapter RUN (ensembles are for --task segment).")
    run_eval = evaluate_classifier_run if task == "classify" else evaluate_volumetric_run
    result = run_eval(data=data, adapter=adapters[0], **kwargs,
                      **({} if batch_size is None else {"batch_size": batch_size}))
    return Evaluation(result, segmentation=False, messages=[result.get("message", f"wrote {kwargs['out']}")])


def _write(out: Path, rows: list[dict], settings: dict, n_boot: int) -> Evaluation:
    """``per_case.csv`` + ``summary.json`` of segmentation rows, and the report page (the run's own when
    ``out`` lies inside the evaluated run folder)."""
    summary = summarize(rows, n_boot=n_boot)
    summary["settings"] = settings
    out.mkdir(parents=True, exist_ok=True)
    write_per_case_csv(out / "per_case.csv", rows)
    write_summary_json(out / SUMMARY, summary)
    run = settings.get("adapter")
    target = Path(run) if run and Path(out).resolve().parent == Path(run).resolve() else out
    return Evaluation(summary, segmentation=True, messages=[f"wrote {out / 'per_case.csv'} and {out / SUMMARY}",
                                                            f"report: {write_report(target)}"])
