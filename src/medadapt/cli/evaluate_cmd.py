"""``medadapt evaluate``: DSC, NSD and HD95 per case and class, as the official CVPR24 code computes them."""

from __future__ import annotations

import math
from pathlib import Path

import typer
from rich.table import Table

from medadapt.cli.common import (
    ADAPTER_HELP,
    MIRROR_HELP,
    RESIZE_HELP,
    ROI_HELP,
    console,
    parse_int_list,
    progress_bar,
    set_threads,
    user_errors,
)


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
    resize: str | None = typer.Option(None, "--resize", help="With --data. " + RESIZE_HELP),
    roi_margin: float | None = typer.Option(None, "--roi-margin", metavar="F", help="With --data. " + ROI_HELP),
) -> None:
    """Score predictions against ground truth; writes per_case.csv (case,class,dsc,nsd,hd95) and summary.json.

    Either --pred/--gt (files matched by name), or --data SPEC with --adapter RUN (or a zero-shot
    --model) to segment the held-out cases and score them in one go.
    """
    from medadapt.pipeline.evaluate import evaluate as run_evaluation

    set_threads(threads)
    with progress_bar() as bar:
        result = run_evaluation(
            task=task, out=out, pred=pred, gt=gt, data=data, adapters=adapter or [], model=model, split=split,
            prompt=prompt, save_predictions=save_predictions, label_dir=label_dir, image_suffix=image_suffix,
            label_suffix=label_suffix, batch_size=batch_size, precision=precision, tolerance_mm=tolerance_mm,
            cvpr24=cvpr24, classes=parse_int_list(classes, option="--classes"), pred_suffix=pred_suffix,
            gt_suffix=gt_suffix, n_boot=n_boot, mirror=mirror, resize=resize, roi_margin=roi_margin,
            progress=lambda n, what: _advance(bar, bar.add_task(what, total=n)),
            notify=lambda line: console.print(f"[yellow]{line}[/]"),
        )
    if result.segmentation:
        print_summary(result.summary)
    for line in result.messages:
        console.print(line)


def _advance(bar, task):
    return lambda: bar.advance(task)


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
