"""``medadapt fit --method best``: choose the prompt-free recipe by cross-validation on the training cases.

In the spirit of nnU-Net's "find best configuration", a small documented portfolio of prompt-free
candidates (:data:`PORTFOLIO`) is scored by K-fold cross-validation over the k TRAINING cases only
(the split's fixed test cases are never fitted on, predicted or scored), within a wall-time budget;
the winner is then fitted on all k cases into one normal run folder.

- **Portfolio** (cheapest first): ``unet3d-scratch`` (the benchmark's 3D U-Net recipe, every weight
  from scratch), ``unet3d-pretrained`` (the same network from ``--checkpoint``, every weight trained;
  only with a checkpoint), ``sam-decoder-auto`` (LiteMedSAM, mask decoder + learned class tokens, no
  prompt), ``sam-adapter-auto`` (LiteMedSAM encoder adapters on the frozen first two stages, bf16,
  the README's automatic-mode recipe on the through-plane slice axis),
  and ``ensemble-2d3d``: the best scored SAM-family (2D) candidate and the best scored 3D one, their
  class probabilities averaged in the volume frame (:class:`medadapt.infer.ensemble.EnsemblePredictor`).
  The ensemble costs no extra training in the selection: its CV score averages the two members'
  stored probabilities on the same held-out fold cases.
- **Cross-validation**: the training cases (whole groups) are dealt into K folds with the run's seed
  (:func:`medadapt.pipeline.protocol.deal_folds`); fit i trains on the other folds for the candidate's
  fixed step count (no validation) and predicts the held-out fold; the score is the mean DSC over the
  held-out cases and classes, averaged over folds. ``--folds`` defaults to min(k, 5).
- **Budget** (``--budget 30m``): a planning limit on the whole command. Before a candidate starts, a
  nominal cost (steps x seconds per step, :attr:`Candidate.seconds_per_step`) must fit in what is
  left; after its first fold, its measured fold time x the folds left + one more fit (its final fit)
  must fit, else it stops and is recorded as skipped with the reason. A fold in progress is never
  cut, so the command can overrun by part of one fit; the record says by how much. A budget below
  the cheapest candidate's nominal cost is refused up front (exit 2, nothing written).
- **Choice**: the highest mean CV DSC among finished candidates; on a tie the earlier (cheaper) one.
- **k = 1**: no cross-validation is possible (a fold needs one case to train on and another to
  score). The documented fixed choice (:data:`K1_CHOICE`) is fitted: ``unet3d-pretrained`` when a
  ``--checkpoint`` is given, else ``unet3d-scratch`` (the benchmarks' best prompt-free single recipe
  on hippocampus, ``bench/results/side_by_side.json``); for 2D images :data:`K1_CHOICE_2D`, the
  cheapest SAM-family candidate; the run says so.
- **Voxel grid of the 3D candidates** (:func:`plan_spacing`, from the training volumes' spacing): the
  native spacing, as the recipe was chosen with, unless the volumes' spacing is anisotropic by more
  than :data:`ANISOTROPY` (median over volumes of largest / smallest; e.g. 8 mm cardiac slices at
  1.25 mm in-plane): then an isotropic grid at the median of the volumes' geometric-mean spacing, so
  that the 32^3 crops cover a cube of tissue and volumes acquired along different axes (their thick
  axis lands on different RAS axes) share one grid. Recorded in ``selection.json`` (``plan``);
  ``--set volumetric.spacing=...`` overrides it.
- **2D images** (PNG slices, DRIVE, ...): only the SAM-family candidates segment them; the 3D ones and
  the ensemble are recorded as skipped with the reason, and cases are scored as 2D images.

Outputs: the run folder is the winner's normal run (``fit --task volumetric`` or ``--task segment``
layout), or for the ensemble an ensemble run (``ensemble.json`` + ``members/NAME`` runs, see
:mod:`medadapt.run`); both carry ``selection.json`` (every candidate's fold scores, mean, time and
status) and a ``selection`` block in ``result.json``, and ``medadapt report`` shows the candidates
side by side. Fold runs are deleted once scored; SAM-family folds share one embedding cache.
A killed selection starts again from the beginning (the fold runs are not resumed).
"""

from __future__ import annotations

import math
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medadapt.data.datasets import load_segmentation_dataset
from medadapt.data.fewshot import Split, make_fit_split, save_split
from medadapt.data.intensity import normalise_for_sam
from medadapt.engine.sam_fit import FitOptions
from medadapt.engine.volumetric_fit import run_volumetric_fit
from medadapt.errors import MedadaptError
from medadapt.infer.ensemble import VolumetricMember, ensemble_labels, sam_probabilities, shared_keep_largest
from medadapt.infer.factory import PredictorSpec, load_predictor
from medadapt.io.atomic import write_json
from medadapt.io.volumes import Volume, default_slice_axis, read_volume
from medadapt.metrics.segmentation import dice
from medadapt.pipeline.fit import fit_segment
from medadapt.pipeline.protocol import MIN_FOLDS, deal_folds
from medadapt.report import write_report
from medadapt.run import ENSEMBLE, RunFolder

__all__ = ["ENSEMBLE_CANDIDATE", "K1_CHOICE", "K1_CHOICE_2D", "PORTFOLIO", "Candidate", "fit_best", "parse_budget"]

DEFAULT_BUDGET = "30m"
MAX_DEFAULT_FOLDS = 5
FIT_OVERHEAD_S = 2.0  # nominal seconds per fit beyond its steps (loading, writing, predicting the fold)

#: Spacing anisotropy (largest / smallest, median over volumes) above which 3D candidates resample isotropically.
ANISOTROPY = 3.0

_UNET = {"model": "unet3d", "method": "full", "roi": "32,32,32", "spacing": "native", "filters": "16,32,64,128",
         "strides": "1,2,2,2", "batch_size": 1, "num_samples": 2, "fixed_crops": 4, "overlap": 0.25}


@dataclass(frozen=True)
class Candidate:
    """One recipe of the portfolio: a fit's task and option values, and a nominal cost for planning."""

    name: str
    task: str  # "volumetric" (3D) | "segment" (SAM-family, slice-wise 2D)
    values: dict[str, Any]
    steps: int
    seconds_per_step: float  # nominal, 2 CPU threads (bench/results: volumetric.json, fewshot_hippocampus.json)
    description: str
    needs_checkpoint: bool = False

    @property
    def family(self) -> str:
        return "3d" if self.task == "volumetric" else "2d"

    def nominal_fit_seconds(self, steps: int | None = None) -> float:
        return FIT_OVERHEAD_S + (steps or self.steps) * self.seconds_per_step


PORTFOLIO: tuple[Candidate, ...] = (
    Candidate("unet3d-scratch", "volumetric", {**_UNET, "lr": 3e-3}, 300, 0.13,
              "3D U-Net (16-32-64-128 filters, 32^3 crops, native spacing), every weight from scratch, lr 3e-3"),
    Candidate("unet3d-pretrained", "volumetric", {**_UNET, "lr": 1e-3}, 300, 0.13,
              "the same 3D U-Net from --checkpoint, every weight trained, lr 1e-3", needs_checkpoint=True),
    Candidate("sam-decoder-auto", "segment", {"method": "decoder", "prompt": "auto", "lr": 3e-4}, 400, 1.3,
              "LiteMedSAM mask decoder + learned class tokens, no prompt, lr 3e-4"),
    Candidate("sam-adapter-auto", "segment",
              {"method": "adapter", "prompt": "auto", "lr": 1e-3, "frozen_stages": 2, "precision": "bf16",
               "augment_stem": True, "augment_flips": False, "augment_translate": 0.15}, 300, 10.0,
              "LiteMedSAM encoder + decoder adapters (first two stages frozen and cached, bf16, images augmented "
              "without flips) + class tokens, lr 1e-3"),
)
ENSEMBLE_CANDIDATE = "ensemble-2d3d"
#: k = 1: (with --checkpoint, without) the candidate fitted without cross-validation.
K1_CHOICE = ("unet3d-pretrained", "unet3d-scratch")
#: k = 1 on 2D images (no 3D candidate applies): the cheapest SAM-family candidate.
K1_CHOICE_2D = "sam-decoder-auto"
NOT_FOR_2D = "segments volumes; this dataset holds 2D images"

CANDIDATE_NAMES = (*(c.name for c in PORTFOLIO), ENSEMBLE_CANDIDATE)


def parse_budget(text: str | float | int) -> float:
    """Seconds of ``--budget``: ``90s``, ``30m``, ``1h30m``, ``2h`` or a number of seconds."""
    if isinstance(text, int | float):
        seconds = float(text)
    else:
        s = str(text).strip().lower()
        parts = re.fullmatch(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s?)?", s) if s else None
        if parts is None or not any(parts.groups()):
            raise MedadaptError(f"--budget '{text}' is not a duration.", fix="write e.g. 90s, 30m, 1h30m or 2h.")
        h, m, sec = (float(g) if g else 0.0 for g in parts.groups())
        seconds = 3600 * h + 60 * m + sec
    if not seconds > 0:
        raise MedadaptError(f"--budget must be positive, got '{text}'.", fix="e.g. --budget 30m")
    return seconds


def _voxel_spacing(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(spacing mm, shape) of a volume file: NIfTI from its header alone, other formats as read."""
    if str(path).lower().endswith((".nii", ".nii.gz")):
        import nibabel as nib

        img = nib.load(str(path))
        return np.asarray(img.header.get_zooms()[:3], float), np.asarray(img.shape[:3], float)
    vol = read_volume(path)
    return np.asarray(vol.spacing, float), np.asarray(vol.array.shape, float)


def plan_spacing(dataset, keys: list[str]) -> dict[str, Any]:
    """The 3D candidates' voxel grid from the training volumes (see the module docstring): ``spacing`` is
    "native" or an isotropic "s,s,s" (mm). Decided per volume (largest / smallest spacing, geometric mean),
    so volumes acquired along different axes agree; the medians over the volumes are recorded."""
    ratios, means, shapes = [], [], []
    for key in keys:
        spacing, shape = _voxel_spacing(dataset.case(key).image)
        ratios.append(float(spacing.max() / spacing.min()))
        means.append(float(np.prod(spacing) ** (1 / 3)))
        shapes.append(sorted(shape))
    anisotropy = float(np.median(ratios))
    plan: dict[str, Any] = {"anisotropy": round(anisotropy, 3), "spacing": "native",
                            "median_voxel_mm": round(float(np.median(means)), 3),
                            "median_shape_sorted": [float(v) for v in np.median(shapes, axis=0)]}
    if anisotropy > ANISOTROPY:
        iso = plan["median_voxel_mm"]
        plan["spacing"] = f"{iso},{iso},{iso}"
    return plan


def _duration(seconds: float) -> str:
    seconds = max(0, math.ceil(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


@dataclass
class _Scored:
    """A candidate's record (``selection.json``) and, while the selection runs, its fold probabilities."""

    candidate: Candidate | None
    record: dict[str, Any]
    probs: dict[str, np.ndarray] = field(default_factory=dict)  # held-out case key -> [C, *shape] float32
    keep_largest: list[int] = field(default_factory=list)
    fit_seconds: list[float] = field(default_factory=list)
    classes: list[int] = field(default_factory=list)  # the label values the candidate segments


# ----------------------------------------------------------------------------- entry point


def fit_best(
    values: dict[str, Any],
    *,
    folds: int | None = None,
    budget: str | float | None = None,
    candidates: list[str] | None = None,
    overrides: dict[str, dict[str, Any]] | None = None,
    notify: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run the selection and the final fit into ``values["out"]``; returns ``result.json``'s content.

    ``values``: the fit's generic options (data, out, shots / fraction, seed, test, classes, checkpoint,
    max_steps, cache_dir, image / label suffixes). ``candidates``: a subset of :data:`CANDIDATE_NAMES`
    (default all). ``overrides``: option values per family (``volumetric`` / ``segment``) or per
    candidate name, merged over the candidate's own (e.g. a smaller ROI).
    """
    say = notify or (lambda line: None)
    out = Path(values.get("out") or "")
    if not values.get("out"):
        raise MedadaptError("--method best needs --out RUN.", fix="add --out RUN")
    if not values.get("data"):
        raise MedadaptError("--method best needs --data SPEC.", fix="add --data (an MSD folder of volumes)")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise MedadaptError("is not an empty folder: --method best writes a new run folder.", path=out,
                            fix="choose a new --out folder.")
    seconds = parse_budget(budget if budget is not None else DEFAULT_BUDGET)
    wanted = _check_candidates(candidates)
    overrides = _check_overrides(overrides or {})
    steps = values.get("max_steps")

    dataset = load_segmentation_dataset(values["data"], image_suffix=values.get("image_suffix"),
                                        label_suffix=values.get("label_suffix"), label_dir=values.get("label_dir"))
    split = make_fit_split(dataset, shots=values.get("shots"), fraction=values.get("fraction"),
                           seed=values.get("seed") or 0, n_val=0, test=values.get("test"))
    pool_keys = list(split.train)
    if dataset.is_3d:
        values = {**values, "plan": plan_spacing(dataset, pool_keys)}
    group_of = {c.key: c.group for c in dataset.cases}
    pool = sorted({group_of[k] for k in pool_keys})
    k = len(pool)
    has_checkpoint = bool(values.get("checkpoint"))
    eligible = [c for c in PORTFOLIO if c.name in wanted and (has_checkpoint or not c.needs_checkpoint)
                and (dataset.is_3d or c.task == "segment")]

    if k == 1:
        if folds is not None:
            raise MedadaptError(
                f"--folds {folds} needs at least {max(folds, MIN_FOLDS)} training cases (one per fold); there is 1.",
                path=values["data"], fix="leave --folds out (with k = 1 the documented fixed choice is fitted), "
                                         f"or use --shots {max(folds, MIN_FOLDS)} or more.")
        n_folds = 0
    else:
        n_folds = folds if folds is not None else min(k, MAX_DEFAULT_FOLDS)
        if n_folds < MIN_FOLDS:
            raise MedadaptError(f"--folds {n_folds}: cross-validation needs at least {MIN_FOLDS} folds.",
                                fix=f"use --folds {MIN_FOLDS} to {k}, or leave --folds out.")
        if n_folds > k:
            raise MedadaptError(
                f"--folds {n_folds} needs at least {n_folds} training cases (one per fold); there are {k}.",
                path=values["data"], fix=f"use --folds {k} or fewer (at least {MIN_FOLDS}), or more --shots.")
    if not eligible:
        raise MedadaptError("no candidate of the portfolio can run with these options" + (
            "" if dataset.is_3d else ": this dataset holds 2D images, which only the SAM-family candidates segment") + ".",
            fix="add --checkpoint for unet3d-pretrained, or name other --candidates." if dataset.is_3d else
                "name sam-decoder-auto or sam-adapter-auto in --candidates (or leave --candidates out).")
    if n_folds == 0:
        name = (K1_CHOICE[0] if has_checkpoint else K1_CHOICE[1]) if dataset.is_3d else K1_CHOICE_2D
        fixed = next((c for c in eligible if c.name == name), eligible[0])
        minimum = fixed.nominal_fit_seconds(steps)
    else:
        minimum = min(c.nominal_fit_seconds(steps) * (n_folds + 1) for c in eligible)
    if seconds < minimum:
        cheapest = min(eligible, key=lambda c: c.nominal_fit_seconds(steps)).name if n_folds else fixed.name
        raise MedadaptError(
            f"--budget {_duration(seconds)} is too small for even one candidate: the cheapest, {cheapest}, needs "
            f"about {_duration(minimum)} ({n_folds} folds + the final fit)." if n_folds else
            f"--budget {_duration(seconds)} is too small for the fit of {cheapest} (about {_duration(minimum)}).",
            fix=f"use --budget {_duration(minimum)} or more" + (", or fewer --folds / --max-steps." if n_folds else "."),
        )

    out.mkdir(parents=True, exist_ok=True)
    try:
        return _select_and_fit(values, out=out, dataset=dataset, split=split, pool=pool, group_of=group_of,
                               n_folds=n_folds, budget=seconds, eligible=eligible, wanted=wanted,
                               overrides=overrides, say=say, fixed=fixed if n_folds == 0 else None)
    except BaseException:
        # an error (or an interrupt) before the final run exists leaves no half-written run folder
        if not (out / "result.json").is_file():
            shutil.rmtree(out, ignore_errors=True)
        raise


def _check_candidates(names: list[str] | None) -> list[str]:
    if not names:
        return list(CANDIDATE_NAMES)
    unknown = [n for n in names if n not in CANDIDATE_NAMES]
    if unknown:
        raise MedadaptError(f"--candidates: unknown candidate(s) {', '.join(unknown)}.",
                            fix=f"choose among {', '.join(CANDIDATE_NAMES)}.")
    return list(names)


def _check_overrides(overrides: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    known = {"volumetric", "segment", *CANDIDATE_NAMES}
    bad = [k for k in overrides if k not in known]
    if bad:
        raise MedadaptError(f"--set {bad[0]}.KEY=VALUE: '{bad[0]}' is not a family or candidate.",
                            fix="prefix --set keys with volumetric., segment. or a candidate name, e.g. "
                                "--set volumetric.roi=16")
    return overrides


def _candidate_values(c: Candidate, values: dict[str, Any], overrides: dict[str, dict[str, Any]], *,
                      out: Path, split_file: Path, cache_dir: Path) -> dict[str, Any]:
    """A fit's option values: the candidate's recipe, the command's generic options, the overrides."""
    v = {**c.values, "max_steps": values.get("max_steps") or c.steps, "data": values["data"], "out": str(out),
         "split": str(split_file), "seed": values.get("seed") or 0, "progress": False}
    for key in ("classes", "image_suffix", "label_suffix", "label_dir"):
        if values.get(key) is not None:
            v[key] = values[key]
    if c.needs_checkpoint:
        v["checkpoint"] = values["checkpoint"]
    if c.task == "volumetric" and values.get("plan"):
        v["spacing"] = values["plan"]["spacing"]
    if c.task == "segment":
        v.update(cache_dir=str(values.get("cache_dir") or cache_dir), val_every=None)
    return {**v, **overrides.get(c.task, {}), **overrides.get(c.name, {})}


def _fit(c: Candidate, v: dict[str, Any]) -> None:
    if c.task == "volumetric":
        run_volumetric_fit(v, None, False)
    else:
        fit_segment(FitOptions.build(v), report=False)


# ----------------------------------------------------------------------------- scoring


def _member(c: Candidate, run: Path, cache_dir: str):
    if c.task == "volumetric":
        return VolumetricMember(run)
    return load_predictor(PredictorSpec(adapters=(run,), cache_dir=Path(cache_dir), use_cache=True))


def member_probabilities(member, volume: Volume | np.ndarray) -> np.ndarray:
    """float32 ``[C, *shape]`` class probabilities of ``volume`` (as read) by a 3D or an automatic SAM member,
    normalised for SAM as ``medadapt predict`` does; a 2D image (an array, as the dataset loads it for
    ``medadapt evaluate``) gives ``[C, H, W]``."""
    if not isinstance(volume, Volume):
        return torch.sigmoid(member.auto_image_logits(volume)[0]).numpy()
    if isinstance(member, VolumetricMember):
        return member.probabilities(volume)
    axis = member.slice_axis if member.slice_axis is not None else default_slice_axis(volume)
    return sam_probabilities(member, normalise_for_sam(volume.array, "auto"), slice_axis=axis)


def case_dsc(label: np.ndarray, seg: np.ndarray, classes: list[int]) -> float:
    """Mean DSC over the classes present in the label or the prediction (NaN when none is)."""
    scores = [dice(label == c, seg == c) for c in classes]
    finite = [s for s in scores if np.isfinite(s)]
    return float(np.mean(finite)) if finite else float("nan")


def _labels(dataset, keys: list[str]) -> dict[str, tuple[Volume | np.ndarray, np.ndarray]]:
    """Per case its input (a volume as read, or a 2D image as ``evaluate`` loads it) and its label array."""
    out = {}
    for key in keys:
        case = dataset.case(key)
        if dataset.is_3d:
            out[key] = (read_volume(case.image), read_volume(case.label, label=True).array)
        else:
            image, label, _, _ = dataset.load(case)
            out[key] = (image, label)
    return out


# ----------------------------------------------------------------------------- the selection


def _select_and_fit(values, *, out, dataset, split, pool, group_of, n_folds, budget, eligible, wanted, overrides,
                    say, fixed) -> dict[str, Any]:
    start = time.perf_counter()
    work = out / "cv"
    cache_dir = work / "embeddings"
    keys_of = {g: [k for k in split.train if group_of[k] == g] for g in pool}
    scored: list[_Scored] = []
    fold_groups = deal_folds(pool, n_folds, values.get("seed") or 0) if n_folds else []
    fold_keys = [[k for g in groups for k in keys_of[g]] for groups in fold_groups]
    cases: dict[str, tuple[Volume, np.ndarray]] = {}

    def left() -> float:
        return budget - (time.perf_counter() - start)

    skipped_for_k1 = f"not scored: k = {len(pool)}, no cross-validation possible"
    for c in PORTFOLIO:
        if c.name not in wanted:
            scored.append(_Scored(c, _record(c, "skipped", "not among --candidates")))
            continue
        if not dataset.is_3d and c.task != "segment":
            scored.append(_Scored(c, _record(c, "skipped", NOT_FOR_2D)))
            continue
        if c not in eligible:
            scored.append(_Scored(c, _record(c, "skipped", "needs --checkpoint (a pretrained 3D U-Net)")))
            continue
        if n_folds == 0:
            scored.append(_Scored(c, _record(c, "chosen without CV" if c is fixed else "skipped", None if c is fixed
                                             else skipped_for_k1)))
            continue
        if not cases:
            cases = _labels(dataset, [k for fk in fold_keys for k in fk])
        scored.append(_cross_validate(c, values, overrides, fold_keys, split, cases, work, cache_dir,
                                      left, scored, say))
    if n_folds:
        scored.append(_ensemble(scored, fold_keys, cases, wanted, say))
    winner = fixed if n_folds == 0 else None
    done = [s for s in scored if s.record["status"] == "done"]
    if n_folds and not done:
        raise MedadaptError(f"no candidate finished its cross-validation within --budget {_duration(budget)}.",
                            fix="give a larger --budget, fewer --folds or fewer --max-steps.")
    if n_folds:
        best = max(done, key=lambda s: s.record["cv_dsc"])  # max keeps the first (cheaper) of equals
        best.record["status"] = "done, chosen"
        chosen_name = best.record["name"]
    else:
        chosen_name = winner.name
    cv_seconds = time.perf_counter() - start
    for s in scored:
        s.probs.clear()
    shutil.rmtree(work / "folds", ignore_errors=True)

    # the final fit: the winner (or the ensemble's members) on all k training cases
    final_split = Split(split.train, (), split.test, {**split.info, "n_val": 0, "protocol": (
        f"fit --method best: {chosen_name} chosen by {n_folds}-fold cross-validation over the training cases, "
        "then fitted on all of them" if n_folds else
        f"fit --method best with k = 1: no cross-validation possible, the fixed choice {chosen_name}")})
    split_file = work / "final_split.json"
    save_split(split_file, final_split)
    say(f"final fit: {chosen_name} on all {len(split.train)} training case(s)")
    t0 = time.perf_counter()
    by_name = {c.name: c for c in PORTFOLIO}
    if chosen_name == ENSEMBLE_CANDIDATE:
        member_names = next(s for s in scored if s.record["name"] == ENSEMBLE_CANDIDATE).record["members"]
        for name in member_names:
            c = by_name[name]
            _fit(c, _candidate_values(c, values, overrides, out=out / "members" / name, split_file=split_file,
                                      cache_dir=cache_dir))
        RunFolder(out).write_split(final_split)
        write_json(out / ENSEMBLE, {"members": [f"members/{n}" for n in member_names],
                                    "rule": "class probabilities averaged in the volume frame"})
        RunFolder(out).write_fit_config({"task": "ensemble", "method": "best", "chosen": chosen_name,
                                         "members": member_names, **_generic(values)})
        base: dict[str, Any] = {"task": "ensemble", "method": "best", "members": [f"members/{n}" for n in member_names],
                                "train_cases": list(split.train), "test_cases": list(split.test)}
    else:
        c = by_name[chosen_name]
        _fit(c, _candidate_values(c, values, overrides, out=out, split_file=split_file, cache_dir=cache_dir))
        base = RunFolder(out).read_result() or {}
    final_seconds = time.perf_counter() - t0
    shutil.rmtree(work, ignore_errors=True)  # fold runs, the split file, the embedding cache (unless --cache-dir)
    total = time.perf_counter() - start
    selection = {
        "method": "best",
        "chosen": chosen_name,
        "rule": ("highest mean cross-validated DSC over the training cases (ties: the cheaper candidate)" if n_folds
                 else f"k = {len(pool)}: no cross-validation possible; fixed choice {chosen_name} "
                      f"({K1_CHOICE[0]} with --checkpoint, else {K1_CHOICE[1]})"),
        "folds": n_folds,
        "plan": values.get("plan"),
        "fold_cases": fold_keys,
        "train_cases": list(split.train),
        "test_cases_never_used": list(split.test),
        "budget_seconds": budget,
        "cv_seconds": cv_seconds,
        "final_fit_seconds": final_seconds,
        "total_seconds": total,
        "over_budget_seconds": max(0.0, total - budget),
        "candidates": [s.record for s in scored],
    }
    best_cv = next((s.record.get("cv_dsc") for s in scored if s.record["name"] == chosen_name), None)
    note = (f"--method best chose {chosen_name}" + (f" (cross-validated DSC {best_cv:.4f}, {n_folds} folds over the "
            f"{len(split.train)} training cases)" if n_folds else f" without cross-validation (k = {len(pool)})")
            + f"; {len([s for s in scored if s.record['status'].startswith('done')])} candidate(s) scored in "
            f"{_duration(cv_seconds)}, budget {_duration(budget)}" + _budget_hint(scored))
    folder = RunFolder(out)
    write_json(folder.selection_path, selection)
    result = {"fit_seconds": final_seconds, **base,
              "selection": {"chosen": chosen_name, "cv_dsc": best_cv, "folds": n_folds, "note": note}}
    folder.write_result(result)
    write_report(out)
    return {**result, "selection_file": str(folder.selection_path), "candidates": selection["candidates"]}


def _budget_hint(scored: list[_Scored]) -> str:
    """The candidates the budget kept out, so the user knows a larger --budget may choose better."""
    out = [s.record for s in scored if s.record.get("over_budget")]
    if not out:
        return ""
    names = ", ".join(f"{r['name']} (about {_duration(r['needs_seconds'])})" for r in out)
    return f"; not tried within the budget: {names}; a larger --budget lets them compete"


def _generic(values: dict[str, Any]) -> dict[str, Any]:
    keys = ("data", "shots", "fraction", "seed", "test", "classes", "checkpoint", "max_steps", "image_suffix",
            "label_suffix", "label_dir")
    return {k: values.get(k) for k in keys if values.get(k) is not None}


def _record(c: Candidate | None, status: str, reason: str | None, **extra) -> dict[str, Any]:
    rec: dict[str, Any] = {"name": c.name if c else ENSEMBLE_CANDIDATE, "family": c.family if c else "2d+3d",
                           "task": c.task if c else "ensemble", "description": c.description if c else
                           "the best scored 2D and 3D candidates, class probabilities averaged in the volume frame",
                           "status": status, "reason": reason, "cv_dsc": None, "fold_dsc": [], "seconds": 0.0}
    rec.update(extra)
    return rec


def _cross_validate(c, values, overrides, fold_keys, split, cases, work, cache_dir, left, scored, say):
    """One candidate's K fold fits and scores, stopped (skipped) when its estimated cost exceeds the budget."""
    n = len(fold_keys)
    steps = values.get("max_steps") or c.steps
    reserve = max([s.record.get("final_fit_estimate", 0.0) for s in scored] + [0.0])
    nominal = c.nominal_fit_seconds(steps)
    if nominal * (n + 1) > left():
        return _Scored(c, _record(c, "skipped", f"its nominal cost, about {_duration(nominal * (n + 1))} for {n} folds "
                                                f"+ the final fit, exceeds the {_duration(left())} of budget left",
                                  over_budget=True, needs_seconds=nominal * (n + 1)))
    entry = _Scored(c, _record(c, "done", None, steps=steps, fold_seconds=[]))
    rec = entry.record
    t_candidate = time.perf_counter()
    for i, held in enumerate(fold_keys):
        t = time.perf_counter()
        run = work / "folds" / c.name / f"fold{i}"
        run.mkdir(parents=True, exist_ok=True)
        fold_split = Split([k for j, f in enumerate(fold_keys) if j != i for k in f], (), held,
                           {**split.info, "fold": i, "protocol": f"fit --method best: fold {i} of {n}"})
        assert not set(fold_split.train + fold_split.test) & set(split.test), "a test case entered the CV"
        save_split(run / "cv_split.json", fold_split)
        v = _candidate_values(c, values, overrides, out=run, split_file=run / "cv_split.json", cache_dir=cache_dir)
        t_fit = time.perf_counter()
        _fit(c, v)
        entry.fit_seconds.append(time.perf_counter() - t_fit)
        member = _member(c, run, v.get("cache_dir", ""))
        entry.keep_largest, entry.classes = list(member.keep_largest), list(member.classes)
        dscs = []
        for key in held:
            volume, label = cases[key]
            prob = member_probabilities(member, volume)
            entry.probs[key] = prob
            seg = ensemble_labels([prob], member.classes, entry.keep_largest)
            dscs.append(case_dsc(label, seg, entry.classes))
        rec["fold_dsc"].append(float(np.nanmean(dscs)))
        rec["fold_seconds"].append(time.perf_counter() - t)
        shutil.rmtree(run, ignore_errors=True)
        say(f"{c.name}: fold {i + 1}/{n} DSC {rec['fold_dsc'][-1]:.4f} ({time.perf_counter() - t:.0f} s)")
        if i == 0:
            per_fold = rec["fold_seconds"][0]
            rec["final_fit_estimate"] = entry.fit_seconds[0]
            need = per_fold * (n - 1) + max(reserve, rec["final_fit_estimate"])
            if n > 1 and need > left():
                rec.update(status="skipped", over_budget=True, needs_seconds=need, reason=(
                    f"estimated from its first fold ({per_fold:.0f} s) it needs about {_duration(need)} more "
                    f"({n - 1} folds + the final fit); {_duration(left())} of budget left"))
                break
    rec["seconds"] = time.perf_counter() - t_candidate
    if rec["status"] == "done":
        rec["cv_dsc"] = float(np.nanmean(rec["fold_dsc"]))
    else:
        entry.probs.clear()
    return entry


def _ensemble(scored, fold_keys, cases, wanted, say) -> _Scored:
    """The best scored 2D and 3D candidates' mean probabilities on the same held-out fold cases."""
    if ENSEMBLE_CANDIDATE not in wanted:
        return _Scored(None, _record(None, "skipped", "not among --candidates"))
    done = [s for s in scored if s.record["status"] == "done"]
    best = {}
    for fam in ("2d", "3d"):
        of = [s for s in done if s.candidate.family == fam]
        if of:
            best[fam] = max(of, key=lambda s: s.record["cv_dsc"])
    if len(best) < 2:
        return _Scored(None, _record(None, "skipped", "needs a scored 2D (SAM-family) and a scored 3D candidate"))
    pair = [best["2d"], best["3d"]]
    classes = pair[0].classes
    if pair[1].classes != classes:
        return _Scored(None, _record(None, "skipped", f"the members segment different classes ({classes} and "
                                                      f"{pair[1].classes})"))
    keep = shared_keep_largest([pair[0].keep_largest, pair[1].keep_largest])
    t = time.perf_counter()
    rec = _record(None, "done", None, members=[p.record["name"] for p in pair])
    for held in fold_keys:
        dscs = []
        for key in held:
            volume, label = cases[key]
            seg = ensemble_labels([pair[0].probs[key], pair[1].probs[key]], classes, keep)
            dscs.append(case_dsc(label, seg, classes))
        rec["fold_dsc"].append(float(np.nanmean(dscs)))
    rec["cv_dsc"] = float(np.nanmean(rec["fold_dsc"]))
    rec["seconds"] = time.perf_counter() - t
    rec["final_fit_estimate"] = sum(p.record.get("final_fit_estimate", 0.0) for p in pair)
    say(f"{ENSEMBLE_CANDIDATE} ({' + '.join(rec['members'])}): CV DSC {rec['cv_dsc']:.4f}")
    return _Scored(None, rec)
