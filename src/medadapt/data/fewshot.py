"""Few-shot and data-fraction splits, written to a file so that a run can be repeated exactly.

Protocol (:func:`make_split`), in units of *groups* (a patient or a volume: all cases of a group land
in the same part, so no slice of an evaluation volume is ever trained on):

1. **Test** — a held-out set fixed by the dataset alone: the groups are sorted, permuted with the
   constant :data:`TEST_SEED` and the last ``test`` of them (a count, a share, or explicit keys) are
   held out. It does not depend on ``shots``, ``fraction`` or ``seed``, so k = 1, 5, 10 and every seed
   are evaluated on the same volumes (hippocampus: 20 of 60 volumes).
2. **Pool** — the other groups, permuted with ``seed``.
3. **Validation** — the last ``n_val`` groups of the permuted pool (default: a fifth of the pool, at most
   :data:`DEFAULT_MAX_VAL`). It comes from the labelled pool, never from the test set, and does not
   depend on k.
4. **Train** — the first ``shots`` groups of what is left, or the first ``fraction`` of it (at least one
   group). Training sets are nested: for one seed, the 1-shot case is in the 5-shot set, and so on.

A dataset that defines its own split (train/val CSVs) keeps it: train is the given train list (``shots``
/ ``fraction`` subsample it by group), test is the given test list, or the given validation list when
there is none, in which case validation is empty unless ``n_val`` carves it from the train list.

The result is written with :func:`save_split` (JSON) and read back with :func:`load_split`.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medadapt.data.datasets import Dataset
from medadapt.errors import MedadaptError
from medadapt.io.atomic import write_json

TEST_SEED = 20240425  # fixes the held-out set once per dataset, whatever the training seed
DEFAULT_TEST = 1 / 3
DEFAULT_MAX_VAL = 5
SPLIT_FORMAT = "medadapt.split/1"
NO_TEST_PROTOCOL = "every labelled case trains: no held-out test set"


@dataclass(frozen=True)
class Split:
    """Case keys of each part. ``info`` records how the split was made (it is saved alongside)."""

    train: tuple[str, ...]
    val: tuple[str, ...]
    test: tuple[str, ...]
    info: dict = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        for name in ("train", "val", "test"):
            object.__setattr__(self, name, tuple(str(k) for k in getattr(self, name)))
        parts = (set(self.train), set(self.val), set(self.test))
        if parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2]:
            raise ValueError("a case is in more than one part of the split")


def make_split(
    dataset: Dataset,
    *,
    shots: int | None = None,
    fraction: float | None = None,
    seed: int = 0,
    n_val: int | None = None,
    test: int | float | Sequence[str] | None = DEFAULT_TEST,
) -> Split:
    """Split ``dataset`` into train / val / test case keys following the module's protocol.

    ``shots``: number of training groups (patients / volumes / images); ``fraction``: share of the
    pool instead (0 < f ≤ 1); neither: the whole pool. ``test``: number of held-out groups (int),
    share of the groups (float < 1), explicit case keys (their whole groups are held out), or None / 0
    for no test set. ``n_val``: validation groups (default: pool // 5, at most 5).
    """
    if shots is not None and fraction is not None:
        raise MedadaptError("give shots or fraction, not both.")
    if shots is not None and shots < 1:
        raise MedadaptError(f"shots must be at least 1, got {shots}.")
    if fraction is not None and not 0 < fraction <= 1:
        raise MedadaptError(f"fraction must be in (0, 1], got {fraction}.", fix="e.g. 0.01, 0.1 or 1.0.")
    if n_val is not None and n_val < 0:
        raise MedadaptError(f"n_val must be 0 or more, got {n_val}.")
    if not dataset.cases:
        raise MedadaptError("the dataset has no cases.", path=dataset.root)
    if dataset.given_split:
        return _from_given(dataset, shots=shots, fraction=fraction, seed=seed, n_val=n_val)

    groups = dataset.groups()
    names = sorted(groups)
    test_groups = _test_groups(dataset, groups, test)
    pool = [g for g in names if g not in test_groups]
    pool = [pool[i] for i in np.random.default_rng(seed).permutation(len(pool))]
    n_val = min(DEFAULT_MAX_VAL, len(pool) // 5) if n_val is None else n_val
    if n_val >= len(pool):
        raise MedadaptError(
            f"n_val={n_val} leaves no training cases: the pool (cases not held out for test) has {len(pool)} group(s).",
            path=dataset.root,
            fix="use a smaller n_val or a smaller test set.",
        )
    val_groups = pool[len(pool) - n_val :]
    rest = pool[: len(pool) - n_val]
    train_groups = rest[: _n_train(shots, fraction, len(rest), dataset)]
    info = {
        "dataset": dataset.name,
        "root": str(dataset.root),
        "protocol": "fixed test (TEST_SEED), val and train from the seeded pool, nested train sets",
        "seed": seed,
        "shots": shots,
        "fraction": fraction,
        "n_val": n_val,
        "test": test if test is None or isinstance(test, int | float) else "explicit",
        "test_seed": TEST_SEED,
        "groups": {"train": len(train_groups), "val": len(val_groups), "test": len(test_groups)},
    }
    return Split(
        _keys(dataset, groups, train_groups),
        _keys(dataset, groups, val_groups),
        _keys(dataset, groups, test_groups),
        info,
    )


def _test_groups(dataset: Dataset, groups: dict[str, list[str]], test) -> set[str]:
    names = sorted(groups)
    if test is None:
        return set()
    if isinstance(test, int | float) and not isinstance(test, bool):
        if isinstance(test, float) and 0 < test < 1:
            n_test = max(1, int(round(test * len(names))))
        elif float(test).is_integer() and test >= 0:
            n_test = int(test)
        else:
            raise MedadaptError(f"test must be a count, a share in (0, 1) or case keys, got {test!r}.")
        if n_test >= len(names):
            raise MedadaptError(
                f"test={test} holds out {n_test} of {len(names)} group(s), leaving none to train on.",
                path=dataset.root,
                fix="hold out fewer cases.",
            )
        perm = np.random.default_rng(TEST_SEED).permutation(len(names))
        return {names[i] for i in perm[len(names) - n_test :]}
    if isinstance(test, str):
        raise MedadaptError(
            "test must be a sequence of case keys, not one string.", fix="pass a list of keys."
        )
    group_of = {c.key: c.group for c in dataset.cases}
    unknown = [k for k in test if k not in group_of]
    if unknown:
        raise MedadaptError(
            f"test lists {len(unknown)} case(s) the dataset does not have: {', '.join(unknown[:5])}.",
            path=dataset.root,
        )
    return {group_of[k] for k in test}


def _n_train(shots: int | None, fraction: float | None, available: int, dataset: Dataset) -> int:
    if shots is not None:
        if shots > available:
            raise MedadaptError(
                f"{shots} training case(s) asked for, but only {available} group(s) are left after the test and "
                "validation sets.",
                path=dataset.root,
                fix="ask for fewer shots, or a smaller n_val / test.",
            )
        return shots
    if fraction is not None:
        return max(1, int(round(fraction * available)))
    return available


def _keys(dataset: Dataset, groups: dict[str, list[str]], chosen) -> tuple[str, ...]:
    """Case keys of the chosen groups, in dataset order."""
    chosen = set(chosen)
    return tuple(c.key for c in dataset.cases if c.group in chosen)


def _from_given(dataset: Dataset, *, shots, fraction, seed: int, n_val: int | None) -> Split:
    given = dataset.given_split or {}
    train_keys = list(given.get("train", []))
    if "test" in given:
        test_keys, val_keys = list(given["test"]), list(given.get("val", []))
        carve = n_val or 0
    else:
        test_keys, val_keys, carve = list(given.get("val", [])), [], n_val or 0
    group_of = {c.key: c.group for c in dataset.cases}
    train_groups = list(dict.fromkeys(group_of[k] for k in train_keys))
    train_groups = [train_groups[i] for i in np.random.default_rng(seed).permutation(len(train_groups))]
    if carve >= len(train_groups):
        raise MedadaptError(
            f"n_val={carve} leaves no training cases: the given train list has {len(train_groups)} group(s).",
            path=dataset.root,
        )
    if carve:
        carved = set(train_groups[len(train_groups) - carve :])
        val_keys += [k for k in train_keys if group_of[k] in carved]
        train_groups = train_groups[: len(train_groups) - carve]
    chosen = set(train_groups[: _n_train(shots, fraction, len(train_groups), dataset)])
    train = [k for k in train_keys if group_of[k] in chosen]
    shared = sorted({group_of[k] for k in train} & {group_of[k] for k in test_keys + val_keys})
    if shared:
        warnings.warn(
            f"{dataset.name}: the dataset's own split puts group(s) {', '.join(shared)} in both train and "
            "evaluation; it is kept as given.",
            stacklevel=3,
        )
    info = {
        "dataset": dataset.name,
        "root": str(dataset.root),
        "protocol": "given by the dataset"
        + ("" if "test" in given else " (its validation list is the test set)"),
        "seed": seed,
        "shots": shots,
        "fraction": fraction,
        "n_val": carve,
        "shared_groups": shared,
    }
    return Split(train, val_keys, test_keys, info)


# --------------------------------------------------------------------------- files


def save_split(path: str | Path, split: Split) -> None:
    """Write the split as JSON (atomically)."""
    write_json(
        path,
        {
            "format": SPLIT_FORMAT,
            "train": list(split.train),
            "val": list(split.val),
            "test": list(split.test),
            "info": split.info,
        },
    )


def load_split(path: str | Path, dataset: Dataset | None = None) -> Split:
    """Read a split written by :func:`save_split`; with ``dataset``, check that every key is one of its cases."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise MedadaptError(
            "the split file does not exist.", path=path, fix="check the path, or make one with make_split."
        ) from None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise MedadaptError(f"cannot be read as a JSON split file ({err}).", path=path) from err
    if not isinstance(data, dict) or data.get("format") != SPLIT_FORMAT:
        raise MedadaptError(f'is not a medadapt split file (no "format": "{SPLIT_FORMAT}").', path=path)
    parts = {}
    for name in ("train", "val", "test"):
        keys = data.get(name)
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            raise MedadaptError(f"'{name}' must be a list of case keys.", path=path)
        parts[name] = keys
    try:
        split = Split(parts["train"], parts["val"], parts["test"], data.get("info") or {})
    except ValueError as err:
        raise MedadaptError(f"{err}.", path=path, fix="each case may appear in one part only.") from None
    if dataset is not None:
        known = set(dataset.keys())
        unknown = [k for k in (*split.train, *split.val, *split.test) if k not in known]
        if unknown:
            raise MedadaptError(
                f"names {len(unknown)} case(s) that dataset '{dataset.name}' does not have: {', '.join(unknown[:5])}.",
                path=path,
                fix="use the split with the dataset it was made for.",
            )
    return split


def make_fit_split(
    dataset: Dataset,
    *,
    shots: int | None = None,
    fraction: float | None = None,
    seed: int = 0,
    n_val: int | None = None,
    test: int | float | None = None,
) -> Split:
    """A new fit's split. ``test=None`` keeps the benchmark protocol (a fixed third held out, or the
    dataset's own split); ``test=0`` trains on every labelled case: no test set, and no validation
    unless ``n_val`` asks for it (a dataset's own train/val lists are pooled)."""
    shots = None if fraction else shots
    if test == 0:
        pooled = dataclasses.replace(dataset, given_split=None) if dataset.given_split else dataset
        made = make_split(pooled, shots=shots, fraction=fraction, seed=seed, n_val=n_val or 0, test=None)
        return Split(made.train, made.val, made.test, {**made.info, "protocol": NO_TEST_PROTOCOL})
    extra = {} if test is None else {"test": test}
    return make_split(dataset, shots=shots, fraction=fraction, seed=seed, n_val=n_val, **extra)


def cases_to_score(split: Split, dataset: Dataset, *, path: str | Path | None = None) -> tuple[list[str], str]:
    """(case keys, description) a run with ``split`` is scored on in ``dataset``.

    The dataset the split was made for (it has every case the split names, wherever its folder now is):
    the split's test cases. Another dataset: every case the run neither trained nor validated on (by
    case key), i.e. all of them when the names differ.
    """
    known = set(dataset.keys())
    named = [*split.train, *split.val, *split.test]
    if all(k in known for k in named):
        if not split.test:
            raise MedadaptError(
                "the run trained on every labelled case of this dataset (fit --test 0): none is held out to score.",
                path=path, fix="evaluate on another labelled dataset (--data OTHER), or fit with a held-out test set.",
            )
        return list(split.test), "the run's held-out test cases"
    seen = set(split.train) | set(split.val)
    keys = [k for k in dataset.keys() if k not in seen]
    if not keys:
        raise MedadaptError(f"every case of dataset '{dataset.name}' was trained or validated on.", path=path)
    return keys, f"every case of {dataset.name} the run did not train on"
