"""Fitting for use: every labelled case trains, with a fixed budget or K-fold cross-validation.

The benchmark protocol (:mod:`medadapt.data.fewshot`) holds a fixed third of a dataset out for
testing; someone adapting a model to their own k labelled cases wants all k in the adapter.
``fit --test 0`` trains on every labelled case and says so in ``result.json`` (``protocol``) and in
the run's report. Model selection then follows one of two documented rules:

- **fixed budget** (default): the task's default step count, no validation, the last weights;
- **K-fold cross-validation** (``--folds K``): the cases (whole groups: a patient or a volume) are
  dealt into K folds with the run's seed (classification: per class, so each fold sees every
  class); fit i trains on the other folds and validates on fold i every ``val_every`` steps. The step
  with the best validation metric averaged over the folds (DSC for segment / volumetric, AUROC for
  classify) is the chosen step count and that mean is the cross-validated estimate; the final adapter
  then trains on all cases for the chosen number of steps, without validation. The fold runs are
  ordinary run folders under ``RUN/folds/``; ``RUN`` itself is an ordinary run.

The fits themselves are the tasks' own (``runner`` is the command's fit function), so this module
only decides which cases each fit sees (split files in the shared schema) and summarises.
"""

from __future__ import annotations

import csv
import shutil
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from medadapt.data.fewshot import NO_TEST_PROTOCOL, Split, load_split, make_fit_split, save_split
from medadapt.data.volume_dataset import load_volume_dataset
from medadapt.engine.classify_fit import VAL_FROM_TRAIN, ClassifyFitOptions, classify_config
from medadapt.engine.classify_task import load_classify_splits
from medadapt.engine.sam_fit import FitOptions, load_fit_dataset
from medadapt.engine.volumetric_fit import VolumetricFitOptions
from medadapt.errors import MedadaptError
from medadapt.pipeline.fit import FitOutcome, fit_run
from medadapt.report import write_report
from medadapt.run import RunFolder

FOLDS_DIR = "folds"
FINAL_SPLIT = "final_split.json"  # in FOLDS_DIR: every case, for the final fit
# The validation metric each task's trainer monitors (written to metrics.csv as split "val").
MONITOR = {"segment": "val_dsc", "volumetric": "dice", "classify": "auroc"}
MIN_FOLDS = 2

Runner = Callable[[dict, bool], dict]  # (option values, resume) -> result dict of one fit


def fixed_budget_note(steps: int | None) -> str:
    return (f"{NO_TEST_PROTOCOL}; fixed budget of {steps if steps else 'the default'} steps without "
            "validation, the last weights are the adapter")


def annotate_result(out: Path, protocol: dict[str, Any]) -> dict[str, Any]:
    """Add the ``protocol`` block to the run's ``result.json`` and return it."""
    run = RunFolder(out)
    result = run.read_result() or {}
    result["protocol"] = protocol
    run.write_result(result)
    return protocol


def no_test_protocol(result: dict[str, Any]) -> dict[str, Any]:
    """The ``protocol`` block of a ``--test 0`` fit without cross-validation."""
    steps = result.get("steps")
    return {"held_out_test": False, "model_selection": "fixed budget", "steps": steps,
            "note": fixed_budget_note(steps)}


# ----------------------------------------------------------------------------- folds


def deal_folds(groups: list[str], k: int, seed: int, strata: dict[str, int] | None = None) -> list[list[str]]:
    """``groups`` dealt into ``k`` folds after a seeded permutation (per stratum when given)."""
    rng = np.random.default_rng(seed)
    folds: list[list[str]] = [[] for _ in range(k)]
    by_stratum: dict[int, list[str]] = {}
    for g in sorted(groups):
        by_stratum.setdefault(strata[g] if strata else 0, []).append(g)
    start = 0
    for _, members in sorted(by_stratum.items()):
        for i, j in enumerate(rng.permutation(len(members))):
            folds[(start + i) % k].append(members[j])
        start += len(members)
    return folds


def check_folds(k: int, n: int, *, what: str, path=None) -> None:
    """``k`` folds need ``k`` >= 2 and at least one case (per class for classification) in each fold."""
    if k < MIN_FOLDS:
        raise MedadaptError(f"--folds {k}: cross-validation needs at least {MIN_FOLDS} folds.",
                            fix="use --folds 2 or more, or leave --folds out for a fixed training budget.")
    if n < k:
        raise MedadaptError(
            f"--folds {k} needs at least {k} {what} (one per fold); there are {n}.", path=path,
            fix=f"use --folds {n} or fewer" + (" (at least 2)" if n >= MIN_FOLDS else "")
            + ", or leave --folds out: every case then trains for a fixed budget.",
        )


def validation_curve(run: RunFolder, monitor: str) -> dict[int, float]:
    """``{step: value}`` of the monitored validation metric in the run's metrics.csv."""
    curve: dict[int, float] = {}
    path = run.metrics_path
    if path.is_file():
        with path.open(newline="") as f:
            for rec in csv.DictReader(f):
                if rec.get("split") == "val" and rec.get("name") == monitor:
                    try:
                        curve[int(rec["step"])] = float(rec["value"])
                    except (TypeError, ValueError):
                        continue
    return curve


def choose_step(curves: list[dict[int, float]]) -> tuple[int, float, dict[int, float]]:
    """(step, mean metric, mean curve): the validation step with the best metric averaged over folds
    (steps every fold validated at; the earliest of equals)."""
    steps = sorted(set.intersection(*(set(c) for c in curves))) if curves else []
    mean = {s: float(np.nanmean([c[s] for c in curves])) for s in steps}
    finite = {s: v for s, v in mean.items() if np.isfinite(v)}
    if not finite:
        raise MedadaptError("the fold runs recorded no common validation step with a finite metric.",
                            fix="give --val-every a value that divides --max-steps.")
    best = max(finite.values())
    step = min(s for s, v in finite.items() if v == best)
    return step, best, mean


def cross_validate(
    task: str,
    values: dict[str, Any],
    *,
    pool: list[str],
    keys_of: Callable[[list[str]], list[str]],
    k: int,
    seed: int,
    runner: Runner,
    resume: bool,
    test: list[str] | None = None,
    strata: dict[str, int] | None = None,
    info: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """K fold fits, then the final fit on every case of ``pool`` for the chosen step count.

    ``pool``: the groups to cross-validate over; ``keys_of(groups)``: their case keys. ``values``: the
    fit's options (``out`` is the final run folder). Returns the final result with its ``protocol``.
    """
    out = Path(values["out"])
    created = not out.exists()
    folds = deal_folds(pool, k, seed, strata)
    base_info = {**(info or {}), "folds": k, "seed": seed}
    classify = task == "classify"
    fold_results = []
    curves = []
    try:
        for i, held in enumerate(folds):
            fold = RunFolder(out / FOLDS_DIR / f"fold{i}")
            train = keys_of([g for g in pool if g not in set(held)])
            split = Split(train, keys_of(held), [] if classify else list(test or []),
                          {**base_info, "fold": i, "protocol": f"fold {i} of {k}-fold cross-validation",
                           **({"val_source": VAL_FROM_TRAIN} if classify else {})})
            if not fold.result_path.is_file():
                again = resume and fold.has_run()
                if not again:
                    fold.root.mkdir(parents=True, exist_ok=True)
                    fold.write_split(split)
                runner({**values, "out": str(fold.root), "split": str(fold.split_path)}, again)
            fold_results.append(fold.read_result() or {})
            curves.append(validation_curve(fold, MONITOR[task]))
    except MedadaptError:
        if created and not fold_results:  # a bad option or input in the first fit: leave nothing behind
            shutil.rmtree(out, ignore_errors=True)
        raise
    step, estimate, mean_curve = choose_step(curves)
    final_split = Split(keys_of(pool), [], [] if classify else list(test or []),
                        {**base_info, "protocol": (NO_TEST_PROTOCOL if not test else "all training cases")
                         + f"; step count chosen by {k}-fold cross-validation",
                         **({"val_source": VAL_FROM_TRAIN} if classify else {})})
    final = RunFolder(out)
    final_split_path = out / FOLDS_DIR / FINAL_SPLIT
    if not (resume and final.has_run()):
        save_split(final_split_path, final_split)
    final_values = {**values, "split": str(final_split_path), "max_steps": step, "epochs": None}
    if resume and final.result_path.is_file():
        result = final.read_result() or {}
    else:
        result = runner(final_values, resume and final.has_run())
    metric = "AUROC" if classify else "DSC"
    protocol = {
        "held_out_test": bool(test),
        "model_selection": f"{k}-fold cross-validation",
        "folds": k,
        "monitor": MONITOR[task],
        "chosen_step": step,
        "cv_estimate": estimate,
        "cv_metric": metric,
        "fold_metric_at_chosen_step": [c.get(step) for c in curves],
        "fold_best": [{"best_step": r.get("best_step"), "best_metric": r.get("best_metric")} for r in fold_results],
        "mean_validation_curve": {str(s): v for s, v in mean_curve.items()},
        "fold_runs": [str(out / FOLDS_DIR / f"fold{i}") for i in range(k)],
        "note": (f"{'' if test else NO_TEST_PROTOCOL + '; '}cross-validated {metric} {estimate:.4f} "
                 f"({k} folds, at step {step}); the adapter trained on all {len(keys_of(pool))} case(s) "
                 f"for {step} steps"),
    }
    return {**result, "protocol": annotate_result(out, protocol)}


# ----------------------------------------------------------------------------- entry point


def fit_for_use(task: str, values: dict[str, Any], config: Path | None, resume: bool, *, folds: int | None = None,
                notify: Callable[[str], None] | None = None) -> FitOutcome:
    """One fit (``--test 0``: with the fixed-budget ``protocol`` note) or a cross-validated one (``--folds``)."""
    def runner(v: dict, again: bool) -> dict:
        runner.last = fit_run(task, v, config, resume=again, notify=notify)
        return runner.last.result

    runner.last = None
    if folds is None:
        outcome = fit_run(task, values, config, resume=resume, notify=notify)
        if values.get("test") != 0:
            return outcome
        outcome.result = {**outcome.result, "protocol": annotate_result(outcome.out, no_test_protocol(outcome.result))}
    else:
        plan = _segment_pool if task == "segment" else _volumetric_pool if task == "volumetric" else _classify_pool
        pool, keys_of, test, strata, info, seed, what = plan(values, config, resume)
        n = min(Counter(strata.values()).values()) if strata else len(pool)
        check_folds(folds, n, what=what, path=values.get("data"))
        result = cross_validate(task, values, pool=pool, keys_of=keys_of, k=folds, seed=seed, runner=runner,
                                resume=resume, test=test, strata=strata, info=info)
        outcome = runner.last or FitOutcome(result, Path(values["out"]))
        outcome.result = result
    if outcome.report is not None:  # the report says what was (not) held out
        outcome.report = write_report(outcome.out)
    return outcome


def _grouped(dataset, split: Split, info: dict) -> tuple:
    chosen = set(split.train) | set(split.val)
    group_of = {c.key: c.group for c in dataset.cases}
    pool = sorted({group_of[k] for k in chosen})

    def keys_of(groups: list[str]) -> list[str]:
        wanted = set(groups)
        return [c.key for c in dataset.cases if c.group in wanted and c.key in chosen]

    return pool, keys_of, list(split.test), None, {**split.info, **info}


def _segment_pool(values: dict, config: Path | None, resume: bool) -> tuple:
    opts = FitOptions.build(values, config)
    return _split_pool(opts, load_fit_dataset(opts), "training cases (groups)")


def _volumetric_pool(values: dict, config: Path | None, resume: bool) -> tuple:
    opts = VolumetricFitOptions.build(values, config)
    return _split_pool(opts, load_volume_dataset(opts.data, modality=opts.modality), "training volumes")


def _split_pool(opts, dataset, what: str) -> tuple:
    """The cases a segmentation fit would train on (its split without validation), as groups."""
    split = (load_split(opts.split, dataset) if opts.split else
             make_fit_split(dataset, shots=opts.shots, fraction=opts.fraction, seed=opts.seed, n_val=0, test=opts.test))
    return (*_grouped(dataset, split, {"dataset": dataset.name}), opts.seed, what)


def _classify_pool(values: dict, config: Path | None, resume: bool) -> tuple:
    opts = ClassifyFitOptions.build(values, config)
    train, _ = load_classify_splits(classify_config(opts, None, []))
    strata = None
    if train.task != "multilabel":
        strata = {k: int(v) for k, v in zip(train.ids, train.labels.reshape(-1), strict=True)}
    info = {"dataset": opts.data, "shots": opts.shots, "fraction": opts.fraction}
    return list(train.ids), list, None, strata, info, opts.seed, "training images of each class"
