"""Aggregate per-case metrics: per class and overall, with seeded bootstrap confidence intervals.

Input rows are ``{"case", "class", "dsc", "nsd", "hd95", ...}`` dicts (``case_metrics`` rows plus a
``case`` key). Non-finite values are never silently averaged:

- NaN means undefined (the class is empty in both masks). It is left out and counted in ``n_nan``.
- ``inf`` (HD95 when exactly one mask is empty: a missed or hallucinated structure) is left out of mean,
  std, median and CI, and counted in ``n_inf``; report it next to the mean.

``per_class[c]`` summarises the cases' values of class ``c``. ``overall`` summarises one value per case,
the mean over its classes as in the CVPR24 challenge: NaN classes are skipped, an ``inf`` class makes the
case ``inf`` (so a case with a missed structure counts in ``n_inf`` rather than averaging it away).

Statistics: ``n`` finite values, ``mean``, ``std`` (sample, ddof=1; NaN when n < 2), ``median`` and
``ci95``: percentile bootstrap of the mean over cases (``n_boot`` resamples with replacement, 2.5 and 97.5
percentiles; ``numpy.random.default_rng(seed)`` for every statistic, so results do not depend on the order
in which classes or metrics are summarised).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medadapt.errors import MedadaptError
from medadapt.io.atomic import atomic_path, write_json

CSV_COLUMNS = ("case", "class", "dsc", "nsd", "hd95")


def _value(row: dict, key: str, index: int) -> float:
    if key not in row:
        raise MedadaptError(
            f"per-case row {index} has no '{key}' value (keys: {sorted(row)})",
            fix=f"give every row the keys 'case', 'class' and {key!r}",
        )
    v = row[key]
    return math.nan if v is None or v == "" else float(v)


def _stats(values: Sequence[float], n_boot: int, seed: int) -> dict[str, Any]:
    """Statistics of one list of values (NaN / inf counted apart, see the module docstring)."""
    v = np.asarray(values, dtype=np.float64)  # [n_values]
    finite = v[np.isfinite(v)]
    n = finite.size
    out: dict[str, Any] = {
        "n": int(n),
        "n_nan": int(np.isnan(v).sum()),
        "n_inf": int(np.isinf(v).sum()),
        "mean": math.nan,
        "std": math.nan,
        "median": math.nan,
        "ci95": [math.nan, math.nan],
    }
    if n == 0:
        return out
    out["mean"] = float(finite.mean())
    out["std"] = float(finite.std(ddof=1)) if n > 1 else math.nan
    out["median"] = float(np.median(finite))
    if n_boot > 0:
        rng = np.random.default_rng(seed)
        means = finite[rng.integers(0, n, size=(n_boot, n))].mean(axis=1)  # [n_boot]
        lo, hi = np.percentile(means, [2.5, 97.5])
        out["ci95"] = [float(lo), float(hi)]
    return out


def _case_value(values: Iterable[float]) -> float:
    """Mean over one case's classes: NaN skipped, ``inf`` propagates, all-NaN gives NaN."""
    v = np.asarray(list(values), dtype=np.float64)
    v = v[~np.isnan(v)]
    return float(v.mean()) if v.size else math.nan


def _class_key(c: Any) -> tuple[int, Any]:
    try:
        return (0, int(c))
    except (TypeError, ValueError):
        return (1, str(c))


def summarize(
    rows: list[dict],
    metrics: Sequence[str] = ("dsc", "nsd", "hd95"),
    *,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict:
    """Summary of per-case rows: ``{"n_cases", "metrics", "n_boot", "seed", "per_class", "overall"}``.

    ``per_class`` maps the class (as a string, for JSON) to ``{metric: stats}``; ``overall`` maps each
    metric to stats over cases. ``stats`` = ``{n, n_nan, n_inf, mean, std, median, ci95: [lo, hi]}``.
    """
    if n_boot < 0:
        raise MedadaptError(f"n_boot must be >= 0, got {n_boot}")
    metrics = tuple(metrics)
    by_class: dict[Any, dict[str, list[float]]] = {}
    by_case: dict[str, dict[str, list[float]]] = {}
    for i, row in enumerate(rows):
        for key in ("case", "class"):
            if key not in row:
                raise MedadaptError(
                    f"per-case row {i} has no '{key}' value (keys: {sorted(row)})",
                    fix="give every row the keys 'case' and 'class' besides the metrics",
                )
        cls, case = row["class"], str(row["case"])
        for m in metrics:
            v = _value(row, m, i)
            by_class.setdefault(cls, {k: [] for k in metrics})[m].append(v)
            by_case.setdefault(case, {k: [] for k in metrics})[m].append(v)

    per_class = {
        str(c): {m: _stats(by_class[c][m], n_boot, seed) for m in metrics}
        for c in sorted(by_class, key=_class_key)
    }
    overall = {m: _stats([_case_value(v[m]) for v in by_case.values()], n_boot, seed) for m in metrics}
    return {
        "n_cases": len(by_case),
        "metrics": list(metrics),
        "n_boot": n_boot,
        "seed": seed,
        "per_class": per_class,
        "overall": overall,
    }


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float | np.floating):
        return repr(float(v))  # full precision; 'nan' and 'inf' spelled out
    return str(v)


def write_per_case_csv(path: str | Path, rows: list[dict]) -> None:
    """Write ``rows`` as CSV, atomically: columns ``case,class,dsc,nsd,hd95`` then any extra keys."""
    extra: list[str] = []
    for i, row in enumerate(rows):
        missing = [k for k in CSV_COLUMNS if k not in row]
        if missing:
            raise MedadaptError(
                f"per-case row {i} lacks {missing} (keys: {sorted(row)})",
                path=path,
                fix="add a 'case' key to each case_metrics row before writing",
            )
        extra += [k for k in row if k not in CSV_COLUMNS and k not in extra]
    columns = [*CSV_COLUMNS, *extra]
    with atomic_path(path) as tmp, tmp.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for row in rows:
            writer.writerow([_cell(row.get(k)) for k in columns])


def adapter_settings(adapters: Sequence[str | Path]) -> dict[str, Any]:
    """How summary.json records the model's adapters: ``adapter`` (one run's path, else None) and, for
    several runs, ``ensemble`` (their paths); ``evaluate`` and ``simulate`` alike."""
    return {"adapter": str(adapters[0]) if len(adapters) == 1 else None,
            **({"ensemble": [str(a) for a in adapters]} if len(adapters) > 1 else {})}


def write_summary_json(path: str | Path, summary: dict) -> None:
    """Write a :func:`summarize` result as JSON, atomically (NaN / Infinity spelled as in Python's json)."""
    write_json(path, summary)
