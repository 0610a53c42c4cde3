"""``medadapt report``: a self-contained HTML page (and PNGs) for a run, or several runs side by side."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from medadapt.cli.common import console, user_errors


@user_errors
def report(
    runs: list[Path] = typer.Argument(..., help="Run folder(s) from fit / evaluate; several: a comparison."),
    out: Path | None = typer.Option(
        None, "--out", "-o",
        help="Output folder. One run: default RUN/report. Several: default comparison/ beside the runs.",
    ),
) -> None:
    """Write an offline HTML report: configuration, split, learning curves, metrics with 95 % CIs, per-case
    scores worst first and overlays; with several runs, tables and bar charts side by side."""
    from medadapt.report import write_comparison, write_report

    if len(runs) == 1:
        page = write_report(runs[0], out)
    else:
        page = write_comparison(runs, out if out is not None else _default_comparison_dir(runs))
    console.print(f"wrote {page}")


def _default_comparison_dir(runs: list[Path]) -> Path:
    """``comparison/`` in the runs' common parent folder (the current folder if they share none)."""
    parents = [str(p.resolve().parent) for p in runs]
    common = Path(os.path.commonpath(parents))
    return (common if common != Path(common.anchor) else Path.cwd()) / "comparison"
