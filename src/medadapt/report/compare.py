"""Several runs side by side: ``OUT/index.html`` + bar charts (PNG) + ``comparison.json``.

Each run contributes its primary evaluation (the folder itself, else ``RUN/eval``). The page reads as
method-matrix results are read: one row per run (method, prompt, k, seed, cost, score with its 95 %
CI), per-class tables, horizontal bar charts of the mean with its CI per run and class, and, when the
runs span several methods and shot counts, a method × k table (mean ± sd over seeds) with the
score-against-k curve.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from medadapt.errors import MedadaptError
from medadapt.io.atomic import write_json
from medadapt.report.html import (
    PAGE,
    REPORT_DIR,
    DatasetCache,
    Raw,
    ci_text,
    esc,
    figure,
    fmt,
    human_bytes,
    human_seconds,
    num,
    page,
    table,
    write_files,
)
from medadapt.report.run import Run, read_run
from medadapt.run import SUMMARY, RunFolder

COMPARISON_JSON = "comparison.json"
SCORES = ("dsc", "nsd")


def write_comparison(run_dirs: Sequence[str | Path], out_dir: str | Path) -> Path:
    """Compare runs in one page at ``out_dir/index.html`` (+ PNGs, ``comparison.json``); returns the page.

    A folder that holds only an earlier comparison (``comparison.json``) is skipped, so
    ``medadapt report runs/*`` can be repeated with its output inside ``runs/``.
    """
    if not run_dirs:
        raise MedadaptError("no run folder given.", fix="give one or more folders written by fit / evaluate.")
    out = Path(out_dir)
    runs, notes = [], []
    for d in run_dirs:
        d = Path(d)
        if (d / COMPARISON_JSON).is_file() and not RunFolder(d).result_path.is_file() and not (d / SUMMARY).is_file():
            notes.append(f"{d} holds a comparison, not a run: skipped.")
            continue
        runs.append(read_run(d))
    if not runs:
        raise MedadaptError("none of the folders is a run.", fix="give folders written by fit / evaluate.")
    html, pngs, data = build_comparison(runs, out, notes)
    write_json(out / COMPARISON_JSON, data)
    return write_files(out, pngs, html)


def _labels(runs: Sequence[Run]) -> list[str]:
    """Short unique names: the folder name, with its parent where names repeat (``seed0/eval``)."""
    names = [r.name for r in runs]
    if len(set(names)) < len(names):
        names = [f"{r.path.parent.name}/{r.name}" for r in runs]
    if len(set(names)) < len(names):
        names = [f"{i + 1}: {n}" for i, n in enumerate(names)]
    return names


def build_comparison(runs: Sequence[Run], out_dir: Path, notes: list[str] | None = None) \
        -> tuple[str, dict[str, bytes], dict]:
    """The page's HTML, its PNGs and the JSON record of the numbers shown."""
    from medadapt.report import figures

    notes = list(notes or [])
    labels = _labels(runs)
    pngs: dict[str, bytes] = {}
    evals = [r.primary for r in runs]
    for r, ev in zip(runs, evals, strict=True):
        if ev is None:
            notes.append(f"{r.path}: not evaluated yet, so it has no scores here.")
    classes = sorted({c for ev in evals if ev for c in (ev.summary.get("per_class") or {})}, key=_class_key)
    groups = ["overall", *classes]
    names = _class_names(runs, evals)
    titles = ["overall", *[f"{c} · {names[c]}" if c in names else f"class {c}" for c in classes]]
    methods = [_method(r) for r in runs]

    def stats(ev, group, metric):
        if ev is None:
            return None
        src = ev.summary.get("overall") if group == "overall" else (ev.summary.get("per_class") or {}).get(group)
        return (src or {}).get(metric)

    sections = [("runs", "Runs", _runs_table(runs, labels, out_dir, stats))]
    for metric in SCORES:
        table_stats = {t: [stats(ev, g, metric) for ev in evals] for t, g in zip(titles, groups, strict=True)}
        if not any(s for col in table_stats.values() for s in col):
            continue
        rows = []
        for i, label in enumerate(labels):
            row: list = [label]
            for t in titles:
                s = table_stats[t][i]
                mean, cell_attrs = num((s or {}).get("mean"), shade=True)
                row.append((Raw(f"{esc(mean)}<br><span class='muted'>{esc(ci_text(s))}</span>"), cell_attrs))
            rows.append(row)
        body = [table(["run", *titles], rows)]
        png = figures.comparison_bars(labels, titles, table_stats, metric, hue=methods)
        if png:
            pngs[f"{metric}_by_run.png"] = png
            body.append(figure(png, f"{metric} by run", f"Mean {metric.upper()} per run and class (colour: method); "
                               "error bars: 95 % bootstrap CI over test cases."))
        sections.append((metric, f"{metric.upper()} per class (mean, 95 % CI)", "".join(body)))

    matrix = _matrix(runs, evals)
    if matrix is not None:
        html, curves = matrix
        png = figures.shots_curve(curves)
        if png:
            pngs["dsc_vs_shots.png"] = png
            html += figure(png, "DSC against k", "Mean test DSC against the number of training cases; error "
                           "bars: sd over seeds.")
        sections.append(("matrix", "Method × k", html))

    data = {
        "runs": [
            {"name": label, "path": str(r.path.resolve()), **r.facts(),
             "trainable_params": (r.result or {}).get("trainable_params"),
             "adapter_bytes": (r.result or {}).get("adapter_bytes"),
             "fit_seconds": (r.result or {}).get("fit_seconds"),
             "n_cases": ev.summary.get("n_cases") if ev else None,
             "overall": (ev.summary.get("overall") if ev else None),
             "per_class": (ev.summary.get("per_class") if ev else None)}
            for label, r, ev in zip(labels, runs, evals, strict=True)
        ],
    }
    title = f"medadapt comparison: {len(runs)} runs"
    return page(title, str(out_dir.resolve()), sections, notes), pngs, data


def _runs_table(runs, labels, out_dir: Path, stats) -> str:
    headers = ["run", "method", "k", "seed", "trainable", "adapter", "fit time", "best val", "test cases",
               "DSC", "DSC 95 % CI", "NSD", "NSD 95 % CI"]
    rows = []
    for label, r in zip(labels, runs, strict=True):
        ev, res, f = r.primary, r.result or {}, r.facts()
        report = r.path / REPORT_DIR / PAGE
        name = label
        if report.is_file():
            href = Path(os.path.relpath(report.resolve(), out_dir.resolve())).as_posix()
            name = Raw(f'<a href="{esc(href)}">{esc(label)}</a>')
        method = _method(r) or "–"
        k = f"{100 * float(f['fraction']):g} %" if f["fraction"] else fmt(f["shots"])
        row = [name, method, (k, 'class="num"'), (fmt(f["seed"]), 'class="num"'),
               (fmt(res.get("trainable_params")), 'class="num"'), (human_bytes(res.get("adapter_bytes")), 'class="num"'),
               (human_seconds(res.get("fit_seconds")), 'class="num"'), num(res.get("best_metric")),
               (fmt(ev.summary.get("n_cases")) if ev else "–", 'class="num"')]
        for m in SCORES:
            s = stats(ev, "overall", m)
            row += [num((s or {}).get("mean"), shade=True), (ci_text(s), 'class="num"')]
        rows.append(row)
    linked = any((r.path / REPORT_DIR / PAGE).is_file() for r in runs)
    return table(headers, rows) + ('<p class="muted">Linked runs have their own report.</p>' if linked else "")


def _matrix(runs: Sequence[Run], evals) -> tuple[str, dict[str, dict[int, list[float]]]] | None:
    """Method (· prompt) × k table of mean DSC over seeds, when the runs span more than one cell."""
    cells: dict[str, dict[int, list[float]]] = {}
    for r, ev in zip(runs, evals, strict=True):
        f = r.facts()
        mean = ((ev.summary.get("overall") or {}).get("dsc") or {}).get("mean") if ev else None
        if not f["method"] or f["shots"] is None or not isinstance(mean, int | float):
            continue
        cells.setdefault(_method(r), {}).setdefault(int(f["shots"]), []).append(float(mean))
    shots = sorted({k for v in cells.values() for k in v})
    if sum(len(v) for v in cells.values()) < 2:
        return None
    rows = []
    for name in sorted(cells):
        row: list = [name]
        for k in shots:
            vals = np.asarray(cells[name].get(k, []), dtype=np.float64)
            vals = vals[np.isfinite(vals)]
            if vals.size == 0:
                row.append(("–", 'class="num"'))
                continue
            text, attrs = num(float(vals.mean()), shade=True)
            if vals.size > 1:
                text += f" ± {float(vals.std(ddof=1)):.3f}"
            row.append((f"{text} (n={vals.size})", attrs))
        rows.append(row)
    headers = ["method", *[("zero-shot" if k == 0 else f"k = {k}") for k in shots]]
    html = (table(headers, rows) + '<p class="muted">Mean test DSC over seeds ± sd (n = runs); each run\'s own '
            "score is the mean over its test cases.</p>")
    return html, cells


def _method(run: Run) -> str:
    f = run.facts()
    return " · ".join(str(x) for x in (f["method"], f["prompt"]) if x)


def _class_names(runs: Sequence[Run], evals) -> dict[str, str]:
    """Class names from the first run whose dataset can be opened (none if no dataset is reachable)."""
    cache = DatasetCache()
    for r, ev in zip(runs, evals, strict=True):
        names = cache.class_names(r, ev)
        if names:
            return names
    return {}


def _class_key(c: str):
    try:
        return (0, int(c), "")
    except ValueError:
        return (1, math.inf, c)
