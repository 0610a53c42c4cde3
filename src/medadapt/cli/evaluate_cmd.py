"""``medadapt evaluate``: DSC, NSD and HD95 per case and class, as the official CVPR24 code computes them."""

from __future__ import annotations

import math
from pathlib import Path

import typer
from rich.table import Table

from medadapt.cli.common import (
    ADAPTER_HELP,
    MIRROR_HELP,
    check_mirror,
    console,
    parse_int_list,
    progress_bar,
    set_threads,
    user_errors,
)
from medadapt.errors import MedadaptError
from medadapt.io.discovery import resolve_spec


@user_errors
def evaluate(
    task: str = typer.Option("segment", "--task", help="segment | classify | volumetric (what --adapter was fitted for)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder for per_case.csv and summary.json."),
    pred: Path | None = typer.Option(None, "--pred", help="Prediction file or folder."),
    gt: Path | None = typer.Option(None, "--gt", help="Ground-truth file or folder (matched to predictions by name)."),
    data: str | None = typer.Option(None, "--data", help="Dataset spec: run the model on its held-out cases instead."),
    adapter: list[Path] | None = typer.Option(
        None, "--adapter", metavar="RUN", help="With --data: a `medadapt fit` run (its split's test cases). " + ADAPTER_HELP
    ),
    model: str | None = typer.Option(None, "--model", help="With --data and no --adapter: zero-shot model (litemedsam)."),
    split: str | None = typer.Option(
        None, "--split", help="With --data: a split.json whose test cases to use (classify: test | val | a split file)."
    ),
    prompt: str | None = typer.Option(None, "--prompt", help="With --data: box | auto (default: the adapter's mode)."),
    save_predictions: bool = typer.Option(False, "--save-predictions", help="With --data: write predictions to OUT/pred."),
    label_dir: str | None = typer.Option(None, "--label-dir", help="With --data: label folder name."),
    image_suffix: str | None = typer.Option(None, "--image-suffix", help="With --data: image name suffix rule."),
    label_suffix: str | None = typer.Option(None, "--label-suffix", help="With --data: label name suffix rule."),
    batch_size: int | None = typer.Option(None, "--batch-size", min=1,
                                           help="Per call: slices (segment; default 1 on a CPU, 8 on a GPU), images (classify; 64) or windows (volumetric; 4)."),
    precision: str = typer.Option("fp32", "--precision", help="With --data: fp32 | bf16."),
    threads: int | None = typer.Option(None, "--threads", help="Torch CPU threads."),
    tolerance_mm: float = typer.Option(2.0, "--tolerance-mm", help="NSD tolerance in mm."),
    cvpr24: bool = typer.Option(False, "--cvpr24", help="CVPR24 conventions: NSD only when DSC > 0.2; 2D spacing 1."),
    classes: str | None = typer.Option(None, "--classes", help="Classes to score, e.g. 1,2 (default: those in the GT)."),
    pred_suffix: str | None = typer.Option(None, "--pred-suffix", help="Suffix dropped from prediction names."),
    gt_suffix: str | None = typer.Option(None, "--gt-suffix", help="Suffix dropped from ground-truth names."),
    n_boot: int = typer.Option(1000, "--bootstrap", help="Bootstrap resamples for the 95 % CIs."),
    mirror: bool = typer.Option(False, "--mirror", help="With --data. " + MIRROR_HELP),
) -> None:
    """Score predictions against ground truth; writes per_case.csv (case,class,dsc,nsd,hd95) and summary.json.

    Either --pred/--gt (files matched by name), or --data SPEC with --adapter RUN (or a zero-shot
    --model) to segment the held-out cases and score them in one go.
    """
    from medadapt.evaluate.folders import evaluate_folders

    set_threads(threads)
    if task not in ("segment", "classify", "volumetric"):
        raise MedadaptError(f"--task '{task}' is not one of segment, classify, volumetric.", fix="use --task segment")
    adapters = list(adapter or [])
    if task != "segment":
        if data is None or not adapters:
            raise MedadaptError(f"--task {task} evaluates a fitted run on a dataset.", fix="pass --data SPEC and --adapter RUN.")
        if len(adapters) > 1:
            raise MedadaptError(f"--task {task} evaluates one run; --adapter was given {len(adapters)} times.",
                                fix="pass a single --adapter RUN (ensembles are for --task segment).")
        adapter = adapters[0]
        if task == "classify":
            from medadapt.evaluate.classify_run import evaluate_classifier_run as run_eval
        else:
            from medadapt.evaluate.volumetric_run import evaluate_volumetric_run as run_eval
        result = run_eval(
            data=data, adapter=adapter, split=split, out=out, precision=precision,
            n_boot=n_boot, tolerance_mm=tolerance_mm, save_predictions=save_predictions,
            **({} if batch_size is None else {"batch_size": batch_size}),
        )
        console.print(result.get("message", f"wrote {out}"))
        return
    class_list = parse_int_list(classes, option="--classes")
    if mirror and data is None:
        raise MedadaptError("--mirror segments images, so it needs --data SPEC (with an automatic-mode --adapter RUN).",
                            fix="add --data and --adapter, or leave --mirror out when scoring --pred/--gt files.")
    if data is not None:
        rows, settings = _evaluate_dataset(
            data, adapters=adapters, model=model, split=split, prompt=prompt, classes=class_list,
            tolerance_mm=tolerance_mm, out=out, save=save_predictions, label_dir=label_dir,
            image_suffix=image_suffix, label_suffix=label_suffix, batch_size=batch_size, precision=precision,
            mirror=mirror,
        )
        _write(out, rows, settings, n_boot)
        return
    if pred is None or gt is None:
        raise MedadaptError("give --pred and --gt folders, or --data SPEC (with --adapter RUN or --model).")
    with progress_bar() as bar:
        task = bar.add_task("evaluate", total=None)
        rows = evaluate_folders(
            pred, gt, tolerance_mm=tolerance_mm, cvpr24=cvpr24, classes=class_list,
            pred_suffix=pred_suffix, gt_suffix=gt_suffix, progress=lambda: bar.advance(task),
        )
    _write(out, rows, {"tolerance_mm": tolerance_mm, "cvpr24": cvpr24, "pred": str(pred), "gt": str(gt)}, n_boot)


def _write(out: Path, rows: list[dict], settings: dict, n_boot: int) -> None:
    from medadapt.evaluate.summary import summarize, write_per_case_csv, write_summary_json

    summary = summarize(rows, n_boot=n_boot)
    summary["settings"] = settings
    out.mkdir(parents=True, exist_ok=True)
    write_per_case_csv(out / "per_case.csv", rows)
    write_summary_json(out / "summary.json", summary)
    print_summary(summary)
    console.print(f"wrote {out / 'per_case.csv'} and {out / 'summary.json'}")
    from medadapt.report import write_report

    run = settings.get("adapter")
    target = Path(run) if run and Path(out).resolve().parent == Path(run).resolve() else out
    console.print(f"report: {write_report(target)}")


def _evaluate_dataset(data, *, adapters, model, split, prompt, classes, tolerance_mm, out, save, label_dir,
                      image_suffix, label_suffix, batch_size, precision, mirror):
    from medadapt.data.datasets import load_segmentation_dataset
    from medadapt.data.fewshot import load_split, make_split
    from medadapt.infer.dataset_eval import evaluate_dataset
    from medadapt.infer.ensemble import check_prompt_mode
    from medadapt.infer.factory import build_predictor

    dataset = load_segmentation_dataset(data, label_dir=label_dir, image_suffix=image_suffix, label_suffix=label_suffix)
    run_splits = [Path(a) / "split.json" for a in adapters if (Path(a) / "split.json").is_file()]
    if split is None and run_splits:
        split = run_splits[0]
    the_split = load_split(Path(split), dataset) if split is not None else make_split(dataset, shots=1, seed=0)
    predictor = build_predictor(model, adapter=adapters or None, batch_size=batch_size, precision=precision)
    mode = prompt or ("auto" if predictor.is_automatic else "box")
    if mode == "auto" and not predictor.is_automatic:
        raise MedadaptError("--prompt auto needs an adapter trained with --prompt auto.", fix="pass --adapter RUN.")
    check_prompt_mode(predictor, mode)
    run = adapters[0] if adapters else None
    check_mirror(mirror, mode, run)
    predictor.mirror = mirror
    keys = list(the_split.test)
    seen: set[str] = set()
    for f in run_splits:
        run_split = load_split(f, dataset)
        seen |= set(run_split.train) | set(run_split.val)
    if seen & set(keys):  # an ensemble member trained on some of these cases: they are not held out for it
        dropped = [k for k in keys if k in seen]
        keys = [k for k in keys if k not in seen]
        console.print(f"[yellow]not scored: {', '.join(dropped)} (trained on by an --adapter run)[/]")
        if not keys:
            raise MedadaptError("every test case was a training or validation case of one of the --adapter runs.",
                                fix="ensemble runs whose splits share held-out cases (same dataset, default split).")
    with progress_bar() as bar:
        task = bar.add_task("segment + score", total=len(keys))
        rows, info = evaluate_dataset(
            predictor, dataset, keys, mode=mode, classes=classes, tolerance_mm=tolerance_mm,
            save_dir=(out / "pred") if save else None, progress=lambda: bar.advance(task),
        )
    settings = {"data": resolve_spec(data), "adapter": str(run) if len(adapters) == 1 else None,
                **({"ensemble": [str(a) for a in adapters]} if len(adapters) > 1 else {}),
                "label_dir": label_dir, "image_suffix": image_suffix, "label_suffix": label_suffix,
                "model": predictor.spec.name, "prompt": mode, "split": str(split) if split else "default test set",
                "tolerance_mm": tolerance_mm, "mirror": mirror, **info}
    return rows, settings


def print_summary(summary: dict) -> None:
    table = Table(title="evaluation (mean ± sd [95 % CI])")
    table.add_column("class")
    table.add_column("n")
    for m in ("dsc", "nsd", "hd95"):
        table.add_column(m.upper())
    for cls, stats in summary.get("per_class", {}).items():
        cells = []
        for m in ("dsc", "nsd", "hd95"):
            s = stats.get(m, {})
            mean, sd = s.get("mean", float("nan")), s.get("std", float("nan"))
            if not math.isfinite(sd):  # one case: a mean, no spread, no interval
                cells.append(f"{mean:.4f}")
                continue
            lo, hi = (s.get("ci95") or [float("nan"), float("nan")])[:2]
            cells.append(f"{mean:.4f} ± {sd:.4f} [{lo:.3f}, {hi:.3f}]")
        n = stats.get("dsc", {}).get("n", "")
        table.add_row(str(cls), str(n), *cells)
    console.print(table)
