"""``medadapt evaluate``: DSC, NSD and HD95 per case and class, as the official CVPR24 code computes them."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from medadapt.cli.common import console, parse_int_list, progress_bar, user_errors


@user_errors
def evaluate(
    pred: Path = typer.Option(..., "--pred", help="Prediction file or folder."),
    gt: Path = typer.Option(..., "--gt", help="Ground-truth file or folder (matched to predictions by name)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder for per_case.csv and summary.json."),
    tolerance_mm: float = typer.Option(2.0, "--tolerance-mm", help="NSD tolerance in mm."),
    cvpr24: bool = typer.Option(False, "--cvpr24", help="CVPR24 conventions: NSD only when DSC > 0.2; 2D spacing 1."),
    classes: str | None = typer.Option(None, "--classes", help="Classes to score, e.g. 1,2 (default: those in the GT)."),
    pred_suffix: str | None = typer.Option(None, "--pred-suffix", help="Suffix dropped from prediction names."),
    gt_suffix: str | None = typer.Option(None, "--gt-suffix", help="Suffix dropped from ground-truth names."),
    n_boot: int = typer.Option(1000, "--bootstrap", help="Bootstrap resamples for the 95 % CIs."),
) -> None:
    """Score predictions against ground truth; writes per_case.csv (case,class,dsc,nsd,hd95) and summary.json."""
    from medadapt.evaluate.folders import evaluate_folders
    from medadapt.evaluate.summary import summarize, write_per_case_csv, write_summary_json

    class_list = parse_int_list(classes, option="--classes")
    with progress_bar() as bar:
        task = bar.add_task("evaluate", total=None)
        rows = evaluate_folders(
            pred, gt, tolerance_mm=tolerance_mm, cvpr24=cvpr24, classes=class_list,
            pred_suffix=pred_suffix, gt_suffix=gt_suffix, progress=lambda: bar.advance(task),
        )
    summary = summarize(rows, n_boot=n_boot)
    summary["settings"] = {"tolerance_mm": tolerance_mm, "cvpr24": cvpr24, "pred": str(pred), "gt": str(gt)}
    out.mkdir(parents=True, exist_ok=True)
    write_per_case_csv(out / "per_case.csv", rows)
    write_summary_json(out / "summary.json", summary)
    print_summary(summary)
    console.print(f"wrote {out / 'per_case.csv'} and {out / 'summary.json'}")


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
            lo, hi = (s.get("ci95") or [float("nan"), float("nan")])[:2]
            cells.append(f"{s.get('mean', float('nan')):.4f} ± {s.get('std', float('nan')):.4f} [{lo:.3f}, {hi:.3f}]")
        n = stats.get("dsc", {}).get("n", "")
        table.add_row(str(cls), str(n), *cells)
    console.print(table)
