"""What a run folder holds, read once for the report pages.

A *run* is whatever folder the user points at: a ``medadapt fit`` run (``fit_config.json``,
``split.json``, ``result.json``, ``metrics.csv``, ``adapter/adapter.json``), possibly with evaluations
inside (``RUN/eval``: ``per_case.csv`` + ``summary.json`` + optional ``pred/``), or an evaluation folder
on its own (a zero-shot ``medadapt evaluate --out DIR``). Every piece is optional: a missing file is
recorded as absent and the page says so, while a file that exists but cannot be read is a
:class:`MedadaptError` (it names the file), because a report that silently drops data misleads.

An evaluation folder made with ``--adapter RUN`` but stored elsewhere gets its training details from
that run (``summary.json["settings"]["adapter"]``).
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medadapt.errors import MedadaptError
from medadapt.evaluate.summary import summarize
from medadapt.run import FIT_FILES, FIT_SUBFOLDERS, SUMMARY, RunFolder, read_json

EVAL_FILES = (SUMMARY, "per_case.csv")
METRICS = ("dsc", "nsd", "hd95")
_NOT_EVALUATIONS = {*FIT_SUBFOLDERS, "pred"}
# Dataset options recorded by `fit` (fit_config.json) and, when present, by `evaluate` (settings).
_DATA_OPTIONS = ("image_suffix", "label_suffix", "label_dir", "modality", "window", "binary")


@dataclass(frozen=True)
class MetricRow:
    """One line of ``metrics.csv`` (long format: ``step,epoch,split,name,value``)."""

    step: int
    epoch: int
    split: str
    name: str
    value: float


@dataclass
class Evaluation:
    """One evaluation folder: per-case rows and their summary."""

    name: str  # "." for the run folder itself, else the sub-folder name
    path: Path
    summary: dict  # medadapt.evaluate.summary.summarize() output (+ "settings")
    rows: list[dict]  # {"case": str, "class": str, "dsc": float, "nsd": float, "hd95": float}

    @property
    def settings(self) -> dict:
        return self.summary.get("settings") or {}

    @property
    def label(self) -> str:
        return "evaluation" if self.name == "." else self.name

    @property
    def pred_dir(self) -> Path | None:
        pred = self.path / "pred"
        return pred if pred.is_dir() and any(pred.iterdir()) else None

    @property
    def classes(self) -> list[str]:
        found = {r["class"] for r in self.rows} | set(self.summary.get("per_class") or {})
        return sorted(found, key=_class_order)

    @property
    def metrics(self) -> list[str]:
        names = self.summary.get("metrics") or [m for m in METRICS if self.rows and m in self.rows[0]]
        return [m for m in names if m in METRICS]

    def case_table(self) -> list[dict]:
        """One record per case, worst mean DSC first (NaN last): ``{"case", "mean": {metric: v},
        "per_class": {class: {metric: v}}}``. A case's mean follows :func:`summarize`: NaN classes are
        skipped and an ``inf`` class makes the mean ``inf``."""
        cases: dict[str, dict] = {}
        for r in self.rows:
            rec = cases.setdefault(r["case"], {"case": r["case"], "per_class": {}})
            rec["per_class"][r["class"]] = {m: r.get(m, math.nan) for m in METRICS}
        for rec in cases.values():
            rec["mean"] = {m: _case_mean(v[m] for v in rec["per_class"].values()) for m in METRICS}
        return sorted(cases.values(), key=lambda rec: _worst_first(rec["mean"]["dsc"]))


@dataclass
class Run:
    """Everything the report shows about one folder; ``None`` / empty where the piece is missing."""

    path: Path
    fit_config: dict | None = None
    split: dict | None = None
    result: dict | None = None
    metrics: list[MetricRow] = field(default_factory=list)
    adapter: dict | None = None
    selection: dict | None = None  # selection.json of `fit --method best`: the candidates' CV scores
    evaluations: list[Evaluation] = field(default_factory=list)
    fit_source: Path | None = None  # where the fit files came from, when not ``path`` itself
    notes: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.path.name or str(self.path)

    @property
    def has_fit(self) -> bool:
        return any(x is not None for x in (self.fit_config, self.result, self.split)) or bool(self.metrics)

    @property
    def primary(self) -> Evaluation | None:
        """The evaluation comparisons use: the folder itself, else ``eval``, else the first one."""
        for name in (".", "eval"):
            for ev in self.evaluations:
                if ev.name == name:
                    return ev
        return self.evaluations[0] if self.evaluations else None

    def facts(self) -> dict[str, Any]:
        """Method, prompt, shots, seed, model: from the fit, else the evaluation settings (zero-shot)."""
        cfg, res = self.fit_config or {}, self.result or {}
        settings = self.primary.settings if self.primary else {}
        method = res.get("method", cfg.get("method"))
        if method is None and (settings.get("model") or settings.get("prompt")) and not settings.get("adapter"):
            method = "zero-shot"
        shots = res.get("shots", cfg.get("shots")) if method != "zero-shot" else 0
        fraction = res.get("fraction", cfg.get("fraction"))
        if fraction:
            shots = None
        return {
            "model": res.get("model", cfg.get("model", settings.get("model"))),
            "method": method,
            "prompt": res.get("prompt", cfg.get("prompt", settings.get("prompt"))),
            "shots": shots,
            "fraction": fraction,
            "seed": res.get("seed", cfg.get("seed")),
        }

    def description(self) -> str:
        """``decoder · box · k=5 · seed 0`` (the parts that are known)."""
        f = self.facts()
        parts = [str(f["method"])] if f["method"] else []
        if f["method"] == "zero-shot" and f["model"]:
            parts.append(str(f["model"]))
        if f["prompt"]:
            parts.append(str(f["prompt"]))
        if f["fraction"]:
            parts.append(f"{100 * float(f['fraction']):g} % of the data")
        elif f["shots"] not in (None, 0):
            parts.append(f"k={f['shots']}")
        if f["seed"] is not None and f["method"] != "zero-shot":
            parts.append(f"seed {f['seed']}")
        return " · ".join(parts)

    def data_source(self, evaluation: Evaluation | None = None) -> tuple[str, dict] | None:
        """(dataset spec, load_segmentation_dataset options) of an evaluation, else of the fit; None if unknown."""
        settings = evaluation.settings if evaluation else {}
        cfg = self.fit_config or {}
        spec = settings.get("data") or cfg.get("data")
        if not spec:
            return None
        same = spec == cfg.get("data")
        options = {}
        for k in _DATA_OPTIONS:
            v = settings.get(k, cfg.get(k) if same else None)
            if v is not None:
                options[k] = v
        return self._resolve(str(spec), evaluation), options

    def _resolve(self, spec: str, evaluation: Evaluation | None) -> str:
        """A relative spec is relative to where the command ran; try that, then the run's folders."""
        path = Path(spec)
        if path.is_absolute() or path.exists():
            return spec
        bases = [self.path, self.path.parent]
        if evaluation is not None:
            bases.insert(0, evaluation.path)
        if self.fit_source is not None:
            bases += [self.fit_source, self.fit_source.parent]
        for base in bases:
            if (base / path).exists():
                return str(base / path)
        return spec


def read_run(path: str | Path) -> Run:
    """Read a run or evaluation folder (see the module docstring)."""
    path = Path(path)
    if not path.is_dir():
        raise MedadaptError(
            "is not a folder." if path.exists() else "the run folder does not exist.", path=path,
            fix="give a folder written by `medadapt fit --out` or `medadapt evaluate --out`.",
        )
    run = Run(path=path)
    for folder in [path, *sorted(p for p in path.iterdir() if p.is_dir() and p.name not in _NOT_EVALUATIONS)]:
        if any((folder / f).is_file() for f in EVAL_FILES):
            run.evaluations.append(_read_evaluation(folder, "." if folder == path else folder.name, run.notes))
    source = path if any((path / f).is_file() for f in FIT_FILES) else _linked_fit(run)
    if source is not None:
        _read_fit(run, source)
        if source != path:
            run.fit_source = source
    if not run.has_fit and not run.evaluations:
        raise MedadaptError(
            f"holds no run files (none of {', '.join(FIT_FILES + EVAL_FILES)}).", path=path,
            fix="give a folder written by `medadapt fit --out` or `medadapt evaluate --out`.",
        )
    if not run.has_fit:
        run.notes.append("No training files here (fit_config.json, result.json, metrics.csv): an evaluation only.")
    if not run.evaluations:
        run.notes.append("Not evaluated yet: run `medadapt evaluate --data SPEC --adapter RUN --out RUN/eval`.")
    return run


def _linked_fit(run: Run) -> Path | None:
    """The run an adapter evaluation names in its settings, if it exists."""
    for ev in run.evaluations:
        adapter = ev.settings.get("adapter")
        if not adapter:
            continue
        for base in (Path(adapter), ev.path / adapter, run.path / adapter):
            for cand in (base, base.parent):
                if cand.is_dir() and any((cand / f).is_file() for f in FIT_FILES[:3]):
                    return cand
    return None


def _read_fit(run: Run, folder: Path) -> None:
    files = RunFolder(folder)
    run.fit_config = read_json(files.fit_config_path)
    run.split = read_json(files.split_path)
    run.result = read_json(files.result_path)
    run.adapter = read_json(files.adapter_json)
    run.metrics = read_metrics_csv(files.metrics_path)
    run.selection = read_json(files.selection_path)
    note = ((run.result or {}).get("protocol") or {}).get("note")
    if note:  # e.g. no held-out test set (fit --test 0), cross-validated estimate
        run.notes.append(note)
    chosen = ((run.result or {}).get("selection") or {}).get("note")
    if chosen:  # fit --method best
        run.notes.append(chosen)


def _read_evaluation(folder: Path, name: str, notes: list[str]) -> Evaluation:

    rows = read_per_case_csv(folder / "per_case.csv") if (folder / "per_case.csv").is_file() else []
    summary = read_json(folder / SUMMARY)
    if summary is None:
        summary = summarize(rows, [m for m in METRICS if rows and m in rows[0]])
        notes.append(f"{folder.name}/{SUMMARY} is missing: its statistics were recomputed from per_case.csv.")
    elif not rows:
        notes.append(f"{folder.name}/per_case.csv is missing: only the summary is shown.")
    return Evaluation(name=name, path=folder, summary=summary, rows=rows)


def read_metrics_csv(path: Path) -> list[MetricRow]:
    """Rows of ``metrics.csv``; a torn or malformed line (a run killed mid-write) is skipped."""
    if not path.is_file():
        return []
    rows = []
    with path.open(newline="") as f:
        for rec in csv.DictReader(f):
            try:
                rows.append(MetricRow(int(rec["step"]), int(rec["epoch"]), str(rec["split"]), str(rec["name"]),
                                      float(rec["value"])))
            except (KeyError, TypeError, ValueError):
                continue
    return rows


def read_per_case_csv(path: Path) -> list[dict]:
    """Rows of ``per_case.csv`` with float metrics (empty cell → NaN; ``inf`` kept)."""
    try:
        with path.open(newline="") as f:
            records = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise MedadaptError(f"cannot be read as CSV ({err}).", path=path) from None
    rows = []
    for i, rec in enumerate(records):
        if not rec.get("case") or rec.get("class") in (None, ""):
            raise MedadaptError(f"row {i + 1} has no case or class.", path=path,
                                fix="the file must have the columns case,class,dsc,nsd,hd95.")
        row: dict[str, Any] = {"case": rec["case"], "class": str(rec["class"])}
        for m in METRICS:
            if m in rec:
                try:
                    row[m] = float(rec[m]) if rec[m] not in (None, "") else math.nan
                except ValueError:
                    raise MedadaptError(f"row {i + 1}: {m} = {rec[m]!r} is not a number.", path=path) from None
        rows.append(row)
    return rows


def _case_mean(values) -> float:
    v = np.asarray(list(values), dtype=np.float64)
    v = v[~np.isnan(v)]
    return float(v.mean()) if v.size else math.nan


def _worst_first(v: float) -> tuple[int, float]:
    return (1, 0.0) if math.isnan(v) else (0, v)


def _class_order(c: str) -> tuple[int, Any]:
    try:
        return (0, int(c))
    except ValueError:
        return (1, c)
