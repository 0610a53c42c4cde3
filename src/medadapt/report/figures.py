"""Report plots as PNG bytes: learning curves, per-case score distributions, run comparisons.

Figures are built with :class:`matplotlib.figure.Figure` directly (the Agg canvas, never pyplot), so
making a report neither needs a display nor touches pyplot's global figure state of a host program.
Each function returns the PNG bytes (or None when there is nothing to draw); the caller both embeds
them in the page and writes them to ``report/``.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence

import numpy as np

from medadapt.optional import require
from medadapt.report.run import MetricRow

Figure = require("matplotlib.figure", extra="report", purpose="report figures").Figure

DPI = 110
METRIC_LABELS = {"dsc": "DSC", "nsd": "NSD", "hd95": "HD95 (mm)"}
_COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf"]


def to_png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return buf.getvalue()


def _style(ax) -> None:
    ax.grid(True, color="#e5e5e5", linewidth=0.8)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


def learning_curves(rows: Sequence[MetricRow], best_step: int | None = None) -> bytes | None:
    """Training losses, validation metrics and the learning rate against the optimiser step."""
    series: dict[tuple[str, str], tuple[list[int], list[float]]] = {}
    for r in rows:
        if math.isfinite(r.value):
            xs, ys = series.setdefault((r.split, r.name), ([], []))
            xs.append(r.step)
            ys.append(r.value)
    losses = {k: v for k, v in series.items() if k[0] == "train" and "loss" in k[1]}
    val = {k: v for k, v in series.items() if k[0] != "train"}
    lr = series.get(("train", "lr"))
    panels = [p for p in (("training loss", losses), ("validation", val), ("learning rate", {"lr": lr} if lr else {}))
              if p[1]]
    if not panels:
        return None
    fig = Figure(figsize=(4.2 * len(panels), 3.2), layout="constrained")
    for ax, (title, group) in zip(fig.subplots(1, len(panels), squeeze=False)[0], panels, strict=True):
        for i, (key, (xs, ys)) in enumerate(sorted(group.items())):
            name = key if isinstance(key, str) else key[1]
            color = _COLORS[i % len(_COLORS)]
            if title == "training loss" and len(ys) > 20:  # raw steps are noisy: faint raw + moving average
                ax.plot(xs, ys, color=color, alpha=0.25, linewidth=0.8)
                ax.plot(xs, _moving_average(ys, max(5, len(ys) // 25)), color=color, label=f"{name} (smoothed)")
            else:
                ax.plot(xs, ys, color=color, marker="o" if len(xs) <= 30 else None, markersize=3, label=name)
        if title == "validation" and best_step is not None:
            ax.axvline(best_step, color="#555", linestyle=":", linewidth=1)
            ax.annotate("best", (best_step, 1), xycoords=("data", "axes fraction"), ha="left", va="top",
                        fontsize=8, color="#555", xytext=(3, -2), textcoords="offset points")
        if title == "learning rate":
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        ax.legend(fontsize=8, frameon=False)
        _style(ax)
    return to_png(fig)


def _moving_average(y: Sequence[float], window: int) -> np.ndarray:
    """Trailing mean over ``window`` points (shorter at the start), same length as ``y``."""
    y = np.asarray(y, dtype=np.float64)
    c = np.cumsum(np.insert(y, 0, 0.0))
    idx = np.arange(1, y.size + 1)
    lo = np.maximum(0, idx - window)
    return (c[idx] - c[lo]) / (idx - lo)


def score_distribution(values: Mapping[str, Mapping[str, Sequence[float]]], names: Mapping[str, str]) -> bytes | None:
    """Box plots with every case as a dot: ``values[metric][group] -> per-case values``.

    Only finite values are drawn (an infinite HD95 — a missed structure — is counted in the title).
    """
    metrics = [m for m in values if any(np.isfinite(np.asarray(v, float)).any() for v in values[m].values())]
    if not metrics:
        return None
    groups = list(next(iter(values.values())))
    fig = Figure(figsize=(max(3.2, 0.9 * len(groups) + 1.6) * len(metrics), 3.4), layout="constrained")
    rng = np.random.default_rng(0)  # fixed jitter: the same data give the same picture
    for ax, m in zip(fig.subplots(1, len(metrics), squeeze=False)[0], metrics, strict=True):
        data, n_inf = [], 0
        for g in groups:
            v = np.asarray(values[m][g], dtype=np.float64)
            n_inf += int(np.isinf(v).sum())
            data.append(v[np.isfinite(v)])
        ax.boxplot(data, widths=0.5, showfliers=False, medianprops={"color": "#333"},
                   boxprops={"color": "#888"}, whiskerprops={"color": "#888"}, capprops={"color": "#888"})
        for i, v in enumerate(data):
            ax.scatter(i + 1 + rng.uniform(-0.12, 0.12, v.size), v, s=14, alpha=0.75,
                       color=_COLORS[i % len(_COLORS)], edgecolor="none", zorder=3)
        ax.set_xticks(range(1, len(groups) + 1), [names.get(g, g) for g in groups], fontsize=8, rotation=20)
        title = METRIC_LABELS.get(m, m) + (f"  ({n_inf} infinite not shown)" if n_inf else "")
        ax.set_title(title, fontsize=10)
        if m in ("dsc", "nsd"):
            ax.set_ylim(-0.03, 1.03)
        _style(ax)
    return to_png(fig)


def comparison_bars(
    runs: Sequence[str], groups: Sequence[str], stats: Mapping[str, Sequence[Mapping | None]], metric: str = "dsc",
    hue: Sequence[str] | None = None,
) -> bytes | None:
    """One panel per group (overall, then each class), one horizontal bar per run: mean with its 95 % CI.

    ``stats[group][i]`` is run ``i``'s summary statistics (``mean``, ``ci95``) for that group, or None.
    Runs with the same ``hue`` (e.g. the method) share a colour. Horizontal bars keep run names readable
    when a method matrix has dozens of runs.
    """
    if not runs or not any(s and _finite(s.get("mean")) for g in groups for s in stats[g]):
        return None
    n = len(runs)
    fig = Figure(figsize=(min(16.0, 1.6 + 3.4 * len(groups)), 0.9 + 0.32 * n + 0.5), layout="constrained")
    axes = fig.subplots(1, len(groups), squeeze=False, sharey=True)[0]
    y = np.arange(n)[::-1]  # first run at the top
    for ax, g in zip(axes, groups, strict=True):
        means = np.array([s.get("mean", math.nan) if s else math.nan for s in stats[g]], dtype=np.float64)
        ci = np.array([(s.get("ci95") or [math.nan, math.nan])[:2] if s else [math.nan, math.nan]
                       for s in stats[g]], dtype=np.float64).reshape(n, 2)
        err = np.vstack([means - ci[:, 0], ci[:, 1] - means])
        err = np.where(np.isfinite(err), np.maximum(err, 0), 0)
        keys = list(hue) if hue is not None else list(runs)
        order = list(dict.fromkeys(keys))
        colors = [_COLORS[order.index(k) % len(_COLORS)] for k in keys]
        ax.barh(y, np.nan_to_num(means), xerr=err, color=colors, alpha=0.85, height=0.65,
                error_kw={"ecolor": "#333", "capsize": 3, "linewidth": 1})
        scale = 1.0 if metric in ("dsc", "nsd") else float(np.nanmax(ci[:, 1], initial=1.0))
        for yi, m, hi in zip(y, means, ci[:, 1], strict=True):
            if not np.isfinite(m):
                ax.text(0.01 * scale, yi, "n/a", va="center", ha="left", fontsize=7, color="#777")
            elif m > 0.2 * scale:  # the value inside its bar
                ax.text(0.01 * scale, yi, f"{m:.3f}", va="center", ha="left", fontsize=7, color="white",
                        fontweight="bold")
            else:
                ax.text(np.nanmax([m, hi]) + 0.02 * scale, yi, f"{m:.3f}", va="center", ha="left", fontsize=7, color="#333")
        ax.set_title(g, fontsize=10)
        ax.set_xlabel(METRIC_LABELS.get(metric, metric))
        if metric in ("dsc", "nsd"):
            ax.set_xlim(0, 1)
        _style(ax)
    axes[0].set_yticks(y, list(runs), fontsize=8)
    return to_png(fig)


def shots_curve(curves: Mapping[str, Mapping[int, Sequence[float]]], metric: str = "dsc") -> bytes | None:
    """Mean score against the number of training cases, one line per method; bars: sd over seeds.

    Lines take colours in the order of ``curves`` (give methods in the order :func:`comparison_bars` sees them).
    """
    curves = {k: v for k, v in curves.items() if v}
    if not curves or len({s for v in curves.values() for s in v}) < 2:
        return None
    fig = Figure(figsize=(6.0, 3.6), layout="constrained")
    ax = fig.subplots()
    for i, (name, by_shots) in enumerate(curves.items()):  # insertion order: the colours of comparison_bars
        shots = sorted(by_shots)
        vals = [np.asarray(by_shots[s], dtype=np.float64) for s in shots]
        mean = [float(np.nanmean(v)) if np.isfinite(v).any() else math.nan for v in vals]
        sd = [float(np.nanstd(v, ddof=1)) if np.isfinite(v).sum() > 1 else 0.0 for v in vals]
        ax.errorbar(shots, mean, yerr=sd, marker="o", capsize=3, color=_COLORS[i % len(_COLORS)], label=name)
    ax.set_xscale("symlog", linthresh=1)
    xs = sorted({s for v in curves.values() for s in v})
    ax.set_xticks(xs, [str(s) for s in xs])
    ax.set_xlabel("training cases (k)")
    ax.set_ylabel(f"mean {METRIC_LABELS.get(metric, metric)}")
    ax.legend(fontsize=8, frameon=False)
    _style(ax)
    return to_png(fig)


def _finite(v) -> bool:
    return v is not None and isinstance(v, int | float) and math.isfinite(v)
