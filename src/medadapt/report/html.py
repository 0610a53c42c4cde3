"""The report page of one run: ``RUN/report/index.html`` plus its plots as PNG files beside it.

The page is one self-contained file (inline CSS, images as base64 ``data:`` URIs, no script), so it
opens offline, can be mailed or archived, and stays valid when the run folder moves. It is assembled
from small escaped HTML builders rather than a template engine: the layout is fixed and Jinja would be
a dependency for a dozen string joins.

Sections: key numbers, metrics per class (mean ± sd, 95 % bootstrap CI), learning curves, per-case
scores worst first, overlays of the worst and best cases, the data split and the full configuration.
Every piece a run lacks (no evaluation yet, no saved predictions, a zero-shot evaluation with no fit)
is skipped with a note saying how to get it.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html as _html
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import medadapt
from medadapt.data.datasets import load_segmentation_dataset
from medadapt.errors import MedadaptError
from medadapt.io.atomic import write_bytes, write_json, write_text
from medadapt.report.run import METRICS, Evaluation, Run, read_run

REPORT_DIR = "report"
PAGE = "index.html"
MANIFEST = ".medadapt-report.json"  # the PNGs the last report wrote, so a new one removes only its own

CSS = """
:root { --fg:#1d2733; --muted:#5b6775; --line:#dde3ea; --bg:#f6f8fa; --accent:#1f6feb; }
* { box-sizing: border-box; }
body { margin:0; font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;
       color:var(--fg); background:#fff; }
header { background:#14202e; color:#fff; padding:18px 32px 14px; }
header h1 { margin:0 0 4px; font-size:22px; }
header .sub { color:#c4d0dd; font-size:13px; }
nav { position:sticky; top:0; z-index:1; background:#fff; border-bottom:1px solid var(--line);
      padding:8px 32px; font-size:13px; }
nav a { margin-right:16px; color:var(--accent); text-decoration:none; }
main { max-width:1280px; margin:0 auto; padding:8px 32px 48px; }
section { margin-top:28px; }
h2 { font-size:18px; border-bottom:2px solid var(--line); padding-bottom:4px; margin:0 0 12px; }
h3 { font-size:15px; margin:18px 0 8px; }
.muted { color:var(--muted); }
.notes { background:#fff8e6; border:1px solid #f0d58a; border-radius:6px; padding:8px 14px; margin-top:16px; }
.notes li { margin:2px 0; }
tr.chosen td { font-weight:600; }
.cards { display:flex; flex-wrap:wrap; gap:10px; }
.card { border:1px solid var(--line); border-radius:8px; padding:10px 14px; min-width:150px; background:var(--bg); }
.card .v { font-size:19px; font-weight:600; }
.card .k { font-size:12px; color:var(--muted); }
.scroll { overflow-x:auto; }
table { border-collapse:collapse; font-size:13px; margin:4px 0 10px; }
th, td { border:1px solid var(--line); padding:4px 8px; text-align:left; vertical-align:top; }
th { background:var(--bg); font-weight:600; }
td.num { text-align:right; font-variant-numeric:tabular-nums; white-space:nowrap; }
tr.overall td { font-weight:600; background:#f0f4f8; }
table.kv td:first-child { color:var(--muted); white-space:nowrap; }
table.kv td { max-width:900px; overflow-wrap:anywhere; }
figure { margin:8px 0 18px; }
figure img { max-width:100%; height:auto; border:1px solid var(--line); border-radius:4px; }
figcaption { font-size:12px; color:var(--muted); margin-top:2px; }
details { margin:6px 0; }
summary { cursor:pointer; color:var(--accent); }
code, .keys { font-family:ui-monospace,"DejaVu Sans Mono",monospace; font-size:12px; }
.keys { color:var(--muted); overflow-wrap:anywhere; }
a.case { color:inherit; }
"""


# --------------------------------------------------------------------------- HTML builders


class Raw(str):
    """Already-escaped HTML (cells and fragments built by these helpers)."""


def esc(x: Any) -> str:
    return x if isinstance(x, Raw) else _html.escape(str(x), quote=True)


def fmt(v: Any, digits: int = 3) -> str:
    """A number for a table: NaN / None → ``–``, inf → ``∞``."""
    if v is None:
        return "–"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        if math.isnan(v):
            return "–"
        if math.isinf(v):
            return "∞" if v > 0 else "-∞"
        return f"{v:.{digits}f}"
    return str(v)


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def figure(png: bytes, alt: str, caption: str = "", anchor: str | None = None) -> Raw:
    ident = f' id="{esc(anchor)}"' if anchor else ""
    cap = f"<figcaption>{esc(caption)}</figcaption>" if caption else ""
    return Raw(f'<figure{ident}><img src="{data_uri(png)}" alt="{esc(alt)}">{cap}</figure>')


def table(headers: Sequence[Any], rows: Iterable[Sequence[Any]], *, cls: str = "",
          row_classes: Sequence[str] | None = None) -> Raw:
    """A table; a cell is text (escaped), :class:`Raw` HTML, or ``(content, attrs)`` for a styled cell."""
    out = [f'<div class="scroll"><table class="{esc(cls)}"><thead><tr>']
    out += [f"<th>{esc(h)}</th>" for h in headers]
    out.append("</tr></thead><tbody>")
    for i, row in enumerate(rows):
        rc = row_classes[i] if row_classes and i < len(row_classes) and row_classes[i] else ""
        out.append(f'<tr class="{rc}">' if rc else "<tr>")
        for cell in row:
            attrs = ""
            if isinstance(cell, tuple):
                cell, attrs = cell
            out.append(f"<td{' ' + attrs if attrs else ''}>{esc(cell)}</td>")
        out.append("</tr>")
    out.append("</tbody></table></div>")
    return Raw("".join(out))


def kv_table(mapping: Mapping[str, Any]) -> Raw:
    return table(["key", "value"], [[k, _value_text(v)] for k, v in mapping.items()], cls="kv")


def _value_text(v: Any) -> str:
    if isinstance(v, float):
        return fmt(v, 6).rstrip("0").rstrip(".") if math.isfinite(v) else fmt(v)
    if isinstance(v, list | tuple) and len(v) > 12:
        return ", ".join(map(str, v[:12])) + f", … ({len(v)} in all)"
    if isinstance(v, list | tuple):
        return ", ".join(map(str, v))
    if isinstance(v, dict):
        return "; ".join(f"{k}: {_value_text(x)}" for k, x in v.items())
    return fmt(v)


def num(v: Any, digits: int = 3, *, shade: bool = False) -> tuple[str, str]:
    """A right-aligned number cell; ``shade`` colours 0..1 scores from red to green."""
    style = ""
    if shade and isinstance(v, float) and math.isfinite(v):
        style = f' style="background:hsl({120 * min(max(v, 0.0), 1.0):.0f},65%,86%)"'
    return fmt(v, digits), f'class="num"{style}'


def stat_text(s: Mapping | None, digits: int = 3) -> str:
    """``mean ± sd`` of a summary statistic."""
    if not s:
        return "–"
    text = fmt(s.get("mean"), digits)
    if isinstance(s.get("std"), float) and math.isfinite(s["std"]):
        text += f" ± {fmt(s['std'], digits)}"
    return text


def ci_text(s: Mapping | None, digits: int = 3) -> str:
    ci = (s or {}).get("ci95") or []
    if len(ci) < 2 or not all(isinstance(c, int | float) and math.isfinite(c) for c in ci[:2]):
        return "–"
    return f"[{fmt(float(ci[0]), digits)}, {fmt(float(ci[1]), digits)}]"


def cards(items: Sequence[tuple[str, str]]) -> Raw:
    body = "".join(f'<div class="card"><div class="v">{esc(v)}</div><div class="k">{esc(k)}</div></div>'
                   for k, v in items)
    return Raw(f'<div class="cards">{body}</div>')


def notes_box(notes: Sequence[str]) -> Raw:
    if not notes:
        return Raw("")
    items = "".join(f"<li>{esc(n)}</li>" for n in dict.fromkeys(notes))
    return Raw(f'<div class="notes"><strong>Notes</strong><ul>{items}</ul></div>')


def page(title: str, subtitle: str, sections: Sequence[tuple[str, str, str]], notes: Sequence[str] = ()) -> str:
    """The whole document; ``sections`` are ``(anchor, heading, html)``."""

    stamp = _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    nav = "".join(f'<a href="#{esc(a)}">{esc(h)}</a>' for a, h, _ in sections)
    body = "".join(f'<section id="{esc(a)}"><h2>{esc(h)}</h2>{html}</section>' for a, h, html in sections)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{CSS}</style></head><body>"
        f'<header><h1>{esc(title)}</h1><div class="sub">{esc(subtitle)}</div>'
        f'<div class="sub">medadapt {esc(medadapt.__version__)} · generated {esc(stamp)}</div></header>'
        f"<nav>{nav}</nav><main>{notes_box(notes)}{body}</main></body></html>\n"
    )


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "x"


def human_bytes(n: Any) -> str:
    if not isinstance(n, int | float):
        return "–"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return "–"  # pragma: no cover


def human_seconds(s: Any) -> str:
    if not isinstance(s, int | float) or not math.isfinite(s):
        return "–"
    if s < 60:
        return f"{s:.1f} s"
    m, sec = divmod(int(round(s)), 60)
    return f"{m} min {sec:02d} s" if m < 60 else f"{m // 60} h {m % 60:02d} min"


def write_files(out_dir: Path, pngs: Mapping[str, bytes], html: str, page_name: str = PAGE) -> Path:
    """PNGs first, then the page (each atomic). PNGs an earlier report wrote here and this one does not
    are removed; only those (listed in :data:`MANIFEST`), never other files of the folder."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, png in pngs.items():
        write_bytes(out_dir / name, png)
    manifest = out_dir / MANIFEST
    try:
        previous = json.loads(manifest.read_text()).get("png", []) if manifest.is_file() else []
    except (OSError, ValueError, AttributeError):
        previous = []
    for name in previous:
        if isinstance(name, str) and name not in pngs and Path(name).name == name and name.endswith(".png"):
            (out_dir / name).unlink(missing_ok=True)
    write_json(manifest, {"page": page_name, "png": sorted(pngs)})
    write_text(out_dir / page_name, html)
    return out_dir / page_name


# --------------------------------------------------------------------------- the run page


def write_report(run_dir: str | Path, out_dir: str | Path | None = None, *, n_cases: int = 3,
                 n_slices: int = 4) -> Path:
    """Write ``RUN/report/index.html`` and its PNGs (``out_dir`` overrides the folder); returns the page.

    ``n_cases`` worst and ``n_cases`` best test cases get overlays of ``n_slices`` slices each.
    """
    run = read_run(run_dir)
    out = Path(out_dir) if out_dir is not None else run.path / REPORT_DIR
    html, pngs = build_run_report(run, n_cases=n_cases, n_slices=n_slices)
    return write_files(out, pngs, html)


def build_run_report(run: Run, *, n_cases: int = 3, n_slices: int = 4) -> tuple[str, dict[str, bytes]]:
    """The page's HTML and the PNGs it embeds (file name → bytes)."""
    from medadapt.report import figures

    notes = list(run.notes)
    pngs: dict[str, bytes] = {}
    datasets = DatasetCache()
    sections: list[tuple[str, str, str]] = [("summary", "Summary", _summary_section(run))]

    if run.evaluations:
        parts = []
        for ev in run.evaluations:
            names = datasets.class_names(run, ev)
            parts.append(_metrics_block(ev, names, pngs))
        sections.append(("metrics", "Metrics per class", "".join(parts)))

    if run.metrics:
        best = (run.result or {}).get("best_step")
        png = figures.learning_curves(run.metrics, best if isinstance(best, int) else None)
        if png:
            pngs["learning_curves.png"] = png
            sections.append(("curves", "Learning curves", figure(
                png, "learning curves", "Training loss (per step, smoothed), validation metrics and learning "
                "rate; the dotted line marks the best validation step.")))
    elif run.has_fit:
        notes.append("metrics.csv is missing or empty: no learning curves.")

    per_case, overlays = [], []
    for ev in run.evaluations:
        if not ev.rows:
            continue
        shown = _overlay_block(run, ev, datasets, pngs, notes, n_cases=n_cases, n_slices=n_slices)
        overlays.append(shown.html)
        per_case.append(_per_case_block(ev, datasets.class_names(run, ev), shown.anchors))
    if per_case:
        sections.append(("cases", "Per-case scores", "".join(per_case)))
    if any(overlays):
        sections.append(("overlays", "Overlays", "".join(overlays)))

    if run.selection:
        sections.append(("candidates", "Candidates (fit --method best)", _selection_section(run.selection)))
    split = _split_section(run)
    if split:
        sections.append(("split", "Data split", split))
    sections.append(("config", "Configuration", _config_section(run)))
    title = f"medadapt report: {run.name}"
    subtitle = " · ".join(x for x in (run.description(), str(run.path.resolve())) if x)
    return page(title, subtitle, sections, notes), pngs


class DatasetCache:
    """Datasets opened for overlays and class names, once per spec; failures are remembered as notes."""

    def __init__(self) -> None:
        self._cache: dict[tuple, Any] = {}

    def get(self, run: Run, ev: Evaluation | None):
        src = run.data_source(ev)
        if src is None:
            return None, "the dataset is not recorded in the run (no fit_config.json 'data' or settings 'data')."
        spec, options = src
        key = (spec, tuple(sorted(options.items())))
        if key not in self._cache:
            try:
                self._cache[key] = (load_segmentation_dataset(spec, **options), None)
            except MedadaptError as err:
                self._cache[key] = (None, f"the dataset could not be opened ({err}).")
        return self._cache[key]

    def class_names(self, run: Run, ev: Evaluation | None) -> dict[str, str]:
        ds, _ = self.get(run, ev)
        names = getattr(ds, "class_names", None) or {}  # never triggers a scan of every label
        return {str(k): v for k, v in names.items()}


def _summary_section(run: Run) -> str:
    res, items = run.result or {}, []
    ev = run.primary
    if ev is not None:
        overall = (ev.summary.get("overall") or {})
        for m in ("dsc", "nsd"):
            if m in overall:
                items.append((f"{ev.label} {m.upper()} (mean, 95 % CI {ci_text(overall[m])})",
                              fmt(overall[m].get("mean"))))
        items.append((f"{ev.label} cases", fmt(ev.summary.get("n_cases"))))
    if res.get("best_metric") is not None:
        items.append((f"best validation {res.get('monitor') or ''} (step {fmt(res.get('best_step'))})".strip(),
                      fmt(res.get("best_metric"))))
    if res.get("trainable_params") is not None:
        share = ""
        if isinstance(res.get("total_params"), int) and res["total_params"]:
            share = f" ({100 * res['trainable_params'] / res['total_params']:.2f} % of {res['total_params']:,})"
        items.append((f"trainable parameters{share}", fmt(res["trainable_params"])))
    if res.get("adapter_bytes") is not None:
        items.append(("adapter size", human_bytes(res["adapter_bytes"])))
    if res.get("fit_seconds") is not None:
        items.append((f"fit time ({fmt(res.get('steps'))} steps)", human_seconds(res["fit_seconds"])))
    if res.get("peak_rss_mb") is not None:
        items.append(("peak RAM", human_bytes(float(res["peak_rss_mb"]) * 2**20)))
    if res.get("peak_gpu_mb") is not None:
        items.append(("peak GPU memory", human_bytes(float(res["peak_gpu_mb"]) * 2**20)))
    facts = run.facts()
    lines = [f"<p>{esc(run.description() or (_eval_caption(ev) if ev else '') or 'no method recorded')}"]
    if facts.get("model"):
        lines.append(f" · model <code>{esc(facts['model'])}</code>")
    lines.append("</p>")
    if run.fit_source is not None:
        lines.append(f'<p class="muted">Training details from {esc(run.fit_source)}.</p>')
    return "".join(lines) + (cards(items) if items else '<p class="muted">No results yet.</p>')


def _eval_caption(ev: Evaluation) -> str:
    s = ev.settings
    parts = [f"{k} {s[k]}" for k in ("model", "prompt", "data", "pred", "gt") if s.get(k)]
    if s.get("adapter"):
        parts.append(f"adapter {s['adapter']}")
    if s.get("ensemble"):
        parts.append(f"ensemble of {', '.join(s['ensemble'])}")
    if s.get("tolerance_mm") is not None:
        parts.append(f"NSD tolerance {s['tolerance_mm']} mm")
    if ev.summary.get("n_boot"):
        parts.append(f"{ev.summary['n_boot']} bootstrap resamples")
    return " · ".join(str(p) for p in parts)


def _metrics_block(ev: Evaluation, names: Mapping[str, str], pngs: dict[str, bytes]) -> str:
    from medadapt.report import figures

    metrics = ev.metrics or list(METRICS)
    headers = ["class", "n"]
    for m in metrics:
        headers += [f"{m.upper()} mean ± sd", f"{m.upper()} 95 % CI"]
    rows, classes = [], []
    per_class = ev.summary.get("per_class") or {}
    for c, stats in per_class.items():
        rows.append(_stats_row(f"{c} · {names[c]}" if c in names else c, stats, metrics))
        classes.append("")
    if ev.summary.get("overall"):
        rows.append(_stats_row("overall (mean over classes per case)", ev.summary["overall"], metrics))
        classes.append("overall")
    out = [f"<h3>{esc(ev.label)}</h3>", f'<p class="muted">{esc(_eval_caption(ev))}</p>',
           table(headers, rows, row_classes=classes)]
    inf = [f"{c}: {s['hd95']['n_inf']}" for c, s in per_class.items() if (s.get("hd95") or {}).get("n_inf")]
    if inf:
        out.append(f'<p class="muted">HD95 is infinite (a structure missed or hallucinated) for some cases, '
                   f'left out of its mean and counted here: {esc(", ".join(inf))}.</p>')
    if ev.rows:
        values = {m: {c: [r.get(m, math.nan) for r in ev.rows if r["class"] == c] for c in ev.classes}
                  for m in metrics}
        png = figures.score_distribution(values, {c: names.get(c, f"class {c}") for c in ev.classes})
        if png:
            name = f"{safe_name(ev.label)}_scores.png"
            pngs[name] = png
            out.append(figure(png, f"{ev.label} score distribution", "Every case is one dot; boxes show the "
                              "quartiles."))
    return "".join(out)


def _stats_row(name: str, stats: Mapping, metrics: Sequence[str]) -> list:
    n = (stats.get("dsc") or next(iter(stats.values()), {}) or {}).get("n")
    row: list = [name, (fmt(n), 'class="num"')]
    for m in metrics:
        s = stats.get(m)
        text = stat_text(s, 2 if m == "hd95" else 3)
        if s and s.get("n_inf"):
            text += f" (+{s['n_inf']} ∞)"
        row += [(text, 'class="num"'), (ci_text(s, 2 if m == "hd95" else 3), 'class="num"')]
    return row


def _per_case_block(ev: Evaluation, names: Mapping[str, str], anchors: Mapping[str, str]) -> str:
    recs = ev.case_table()
    metrics = [m for m in METRICS if any(m in r for r in ev.rows)]
    classes = ev.classes if len(ev.classes) > 1 else []
    headers = ["#", "case", *[f"{m.upper()} (mean)" for m in metrics]]
    for c in classes:
        headers += [f"{m.upper()} {names.get(c, c)}" for m in metrics]
    rows = []
    for i, rec in enumerate(recs, 1):
        case = rec["case"]
        cell = Raw(f'<a class="case" href="#{esc(anchors[case])}">{esc(case)}</a>') if case in anchors else case
        row: list = [(str(i), 'class="num"'), cell]
        row += [num(rec["mean"][m], 2 if m == "hd95" else 3, shade=m != "hd95") for m in metrics]
        for c in classes:
            vals = rec["per_class"].get(c, {})
            row += [num(vals.get(m), 2 if m == "hd95" else 3, shade=m != "hd95") for m in metrics]
        rows.append(row)
    return (f"<h3>{esc(ev.label)}: {len(recs)} cases, worst DSC first</h3>"
            + ('<p class="muted">Underlined cases link to their overlays.</p>' if anchors else "")
            + table(headers, rows))


class _Overlays:
    def __init__(self) -> None:
        self.html = ""
        self.anchors: dict[str, str] = {}


def _overlay_cases(ev: Evaluation, n: int) -> list[tuple[str, str]]:
    """(case, "worst k" / "best k") pairs: the ``n`` worst then ``n`` best by mean DSC, no repeats."""
    recs = [r for r in ev.case_table() if not math.isnan(r["mean"]["dsc"])] or ev.case_table()
    if len(recs) <= 2 * n:
        return [(r["case"], f"rank {i} of {len(recs)}") for i, r in enumerate(recs, 1)]
    worst = [(r["case"], f"worst {i}") for i, r in enumerate(recs[:n], 1)]
    best = [(r["case"], f"best {i}") for i, r in enumerate(reversed(recs[-n:]), 1)]
    return worst + best


def _overlay_block(run: Run, ev: Evaluation, datasets: DatasetCache, pngs: dict[str, bytes], notes: list[str],
                   *, n_cases: int, n_slices: int) -> _Overlays:
    from medadapt.report.overlays import case_figure, find_prediction, read_prediction

    shown = _Overlays()
    if n_cases <= 0:
        return shown
    where = f"{ev.label}: no overlays"
    if ev.pred_dir is None and ev.settings.get("pred") and not ev.settings.get("data"):
        notes.append(f"{where}, this evaluation scored prediction files (--pred/--gt) without a dataset to find "
                     "the images in (evaluate with --data SPEC --save-predictions for overlays).")
        return shown
    if ev.pred_dir is None:
        notes.append(f"{where}, the predictions were not saved (evaluate with --save-predictions).")
        return shown
    ds, problem = datasets.get(run, ev)
    if ds is None:
        notes.append(f"{where}, {problem}")
        return shown
    names = {int(k): v for k, v in (ds.class_names or {}).items()}
    scores = {r["case"]: r["mean"] for r in ev.case_table()}
    parts = []
    for i, (case, why) in enumerate(_overlay_cases(ev, n_cases)):
        try:
            ref = ds.case(case)
            pred_path = find_prediction(ev.pred_dir, ref.image, case)
            if pred_path is None:
                notes.append(f"{ev.label}: no prediction file for case {case} in {ev.pred_dir}.")
                continue
            image, label, spacing, axis = ds.load(ref)
            pred = read_prediction(pred_path)
            s = scores[case]
            title = f"{case} ({why}) · DSC {fmt(s['dsc'])} · NSD {fmt(s.get('nsd'))} · HD95 {fmt(s.get('hd95'), 2)}"
            rotate = axis is not None and ref.image.name.lower().endswith((".nii", ".nii.gz"))
            png = case_figure(image, label, pred, slice_axis=axis, spacing=spacing, title=title,
                              n_slices=n_slices, rotate=rotate, class_names=names)
        except MedadaptError as err:
            notes.append(f"{ev.label}: no overlay for case {case} ({err}).")
            continue
        anchor = f"ov-{safe_name(ev.label)}-{safe_name(case)}"
        pngs[f"{safe_name(ev.label)}_overlay_{i + 1:02d}_{safe_name(case)}.png"] = png
        shown.anchors[case] = anchor
        parts.append(figure(png, f"overlay {case}", f"{case}: {why} by mean DSC", anchor=anchor))
    if parts:
        shown.html = (f"<h3>{esc(ev.label)}: worst and best cases</h3>"
                      '<p class="muted">Rows: ground truth, prediction, errors (missed in cyan, extra or wrong '
                      "class in magenta); columns: slices spread over the structures.</p>" + "".join(parts))
    return shown


def _selection_section(sel: Mapping) -> str:
    """Every candidate of ``fit --method best`` side by side: status, CV DSC (mean and per fold), time."""
    rows, classes = [], []
    for rec in sel.get("candidates") or []:
        status = str(rec.get("status", "")) + (f": {rec['reason']}" if rec.get("reason") else "")
        folds = " ".join(fmt(d) for d in rec.get("fold_dsc") or []) or "–"
        rows.append([rec.get("name", ""), rec.get("family", ""), status, num(rec.get("cv_dsc")), folds,
                     (human_seconds(rec.get("seconds")), 'class="num"')])
        classes.append("chosen" if rec.get("name") == sel.get("chosen") else "")
    folds, n_train = sel.get("folds"), len(sel.get("train_cases") or [])
    how = f"{folds}-fold cross-validation over the {n_train} training cases only" if folds else "no cross-validation"
    head = (f"<p>Chosen: <strong>{esc(sel.get('chosen'))}</strong>. Rule: {esc(sel.get('rule'))}; {esc(how)}. "
            f"The {len(sel.get('test_cases_never_used') or [])} test case(s) were never fitted on or scored during "
            f"the selection. Budget {esc(human_seconds(sel.get('budget_seconds')))}, selection "
            f"{esc(human_seconds(sel.get('cv_seconds')))}, final fit {esc(human_seconds(sel.get('final_fit_seconds')))}.</p>")
    return head + table(["candidate", "family", "status", "CV DSC", "DSC per fold", "time"], rows,
                        row_classes=classes)


def _split_section(run: Run) -> str:
    split = run.split
    if not split:
        evaluated = sorted({r["case"] for ev in run.evaluations for r in ev.rows})
        if not evaluated:
            return ""
        return (f'<p class="muted">No split.json: showing the {len(evaluated)} evaluated cases.</p>'
                f'<p class="keys">{esc(", ".join(evaluated))}</p>')
    rows = []
    for part in ("train", "val", "test"):
        keys = [str(k) for k in split.get(part) or []]
        listing = Raw(f'<span class="keys">{esc(", ".join(keys))}</span>') if keys else "–"
        rows.append([part, (str(len(keys)), 'class="num"'), listing])
    info = split.get("info") or {}
    out = [table(["part", "cases", "case keys"], rows)]
    if info:
        out.append("<details><summary>how the split was made</summary>" + kv_table(info) + "</details>")
    return "".join(out)


def _config_section(run: Run) -> str:
    out = []
    if run.fit_config:
        out.append("<h3>fit options (fit_config.json)</h3>" + kv_table(run.fit_config))
    if run.result:
        result = {k: v for k, v in run.result.items() if k not in ("train_cases", "val_cases")}
        out.append("<details><summary>result.json</summary>" + kv_table(result) + "</details>")
    if run.adapter:
        a = run.adapter
        brief = {"format": f"{a.get('format')} {a.get('format_version', '')}".strip(),
                 "recipe": a.get("recipe"), "base": a.get("base"), "params": a.get("params"),
                 "files": a.get("files")}
        out.append("<details><summary>adapter/adapter.json</summary>"
                   + kv_table({k: v for k, v in brief.items() if v is not None}) + "</details>")
    for ev in run.evaluations:
        if ev.settings:
            out.append(f"<details><summary>{esc(ev.label)} settings (summary.json)</summary>"
                       + kv_table(ev.settings) + "</details>")
    return "".join(out) or '<p class="muted">No configuration recorded.</p>'
