"""Label budgets of a classification split: label fractions, k shots per class, validation hold-outs.

:func:`sample_fraction` draws the 1 % / 10 % label subsets of "Less could be better": stratified per
class, every class kept, deterministic for a seed. Iterative stratification (Sechidis et al., 2011) is
written out for the multi-label case because scikit-learn has no multi-label stratifier and
scikit-multilearn is not a dependency. :func:`sample_shots` draws k images per class instead,
:func:`holdout_split` a validation part for sources that have none.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from medadapt.errors import MedadaptError


def sample_fraction(labels: np.ndarray, fraction: float, seed: int = 0, *, mask: np.ndarray | None = None) -> np.ndarray:
    """Sorted indices of a deterministic, class-stratified ``fraction`` of the items.

    Single-label (``[N]``): each class keeps ``round(fraction * n_c)`` items, at least one. Multi-label
    (``[N,K]``): iterative stratification towards ``fraction`` of each class's positives, then one
    positive added for any class left without one. ``fraction=1`` returns every index.
    """
    labels = np.asarray(labels)
    if not (0 < fraction <= 1):
        raise MedadaptError(f"label fraction must be in (0, 1], got {fraction}", fix="use e.g. 0.01 for 1 % of labels")
    n = len(labels)
    if n == 0:
        raise MedadaptError("cannot sample from an empty split")
    if fraction == 1:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim == 1:
        keep = []
        for c in np.unique(labels):
            idx = np.flatnonzero(labels == c)
            k = min(len(idx), max(1, round(fraction * len(idx))))
            keep.append(rng.choice(idx, size=k, replace=False))
        return np.sort(np.concatenate(keep))
    pos = labels > 0.5
    if mask is not None:
        pos &= mask.astype(bool)
    chosen = _iterative_stratification(pos, fraction, rng)
    for j in np.flatnonzero(pos.any(axis=0) & ~pos[chosen].any(axis=0)):
        chosen[rng.choice(np.flatnonzero(pos[:, j]))] = True
    return np.flatnonzero(chosen)


def sample_shots(labels: np.ndarray, shots: int, seed: int = 0, *, mask: np.ndarray | None = None) -> np.ndarray:
    """Sorted indices of ``shots`` images per class (all of a class when it has fewer), seeded.

    Multi-label: classes from the rarest up, random positives are added until each class has ``shots``
    (an image counts for every class it is positive for, so common classes may get more).
    """
    labels = np.asarray(labels)
    if shots < 1:
        raise MedadaptError(f"shots must be >= 1, got {shots}", fix="use e.g. --shots 10 (images per class)")
    rng = np.random.default_rng(seed)
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim == 1:
        keep = [rng.permutation(np.flatnonzero(labels == c))[:shots] for c in np.unique(labels)]
        return np.sort(np.concatenate(keep))
    pos = labels > 0.5
    if mask is not None:
        pos &= mask.astype(bool)
    chosen = np.zeros(len(labels), bool)
    for j in np.argsort(pos.sum(axis=0), kind="stable"):
        need = shots - int(pos[chosen, j].sum())
        if need > 0:
            chosen[rng.permutation(np.flatnonzero(pos[:, j] & ~chosen))[:need]] = True
    return np.flatnonzero(chosen)


def holdout_split(labels: np.ndarray, fraction: float, seed: int = 0) -> np.ndarray:
    """Bool ``[N]``: a seeded ``fraction`` held out for validation, stratified by class (multi-label:
    by the iterative stratification of :func:`sample_fraction`). For sources without a validation split."""
    labels = np.asarray(labels)
    if not 0 < fraction < 1:
        raise MedadaptError(f"validation fraction must be in (0, 1), got {fraction}")
    held = np.zeros(len(labels), bool)
    held[sample_fraction(labels, fraction, seed)] = True
    if held.all() or not held.any():
        raise MedadaptError(f"{len(labels)} labelled images are too few to hold {fraction:.0%} out for validation",
                            fix="pass a separate validation file (val_data)")
    return held


def _iterative_stratification(pos: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Sechidis et al. (2011) with two folds (kept, rest); returns a bool ``[N]`` of kept items.

    Rarest label first, each of its unassigned items goes to the fold that still wants most of that label
    (ties: the fold that wants most items, then random); label-free items fill the folds' remaining sizes.
    """
    n, k = pos.shape
    ratios = np.array([fraction, 1.0 - fraction])
    want_items = ratios * n
    want_label = np.outer(ratios, pos.sum(axis=0))  # [2,K]
    fold = np.full(n, -1)
    remaining = pos.copy()
    while remaining.any():
        counts = remaining.sum(axis=0)
        live = np.flatnonzero(counts)
        rarest = live[counts[live] == counts[live].min()]
        label = int(rng.choice(rarest))
        for i in rng.permutation(np.flatnonzero(remaining[:, label])):
            best = np.flatnonzero(want_label[:, label] == want_label[:, label].max())
            if len(best) > 1:
                best = best[want_items[best] == want_items[best].max()]
            f = int(rng.choice(best))
            fold[i] = f
            want_items[f] -= 1
            want_label[f] -= pos[i]
            remaining[i] = False
    free = rng.permutation(np.flatnonzero(fold < 0))
    n_keep = int(max(0, min(len(free), round(want_items[0]))))
    fold[free[:n_keep]] = 0
    return fold == 0


def stratified_parts(labels: np.ndarray, fractions: Sequence[float], seed: int) -> np.ndarray:
    """Part index per item, each class shuffled (seeded) and cut by ``fractions``."""
    rng = np.random.default_rng(seed)
    part = np.zeros(len(labels), np.int64)
    bounds = np.cumsum(fractions)[:-1]
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        cuts = np.round(bounds * len(idx)).astype(int)
        for k, chunk in enumerate(np.split(idx, cuts)):
            part[chunk] = k
    return part
