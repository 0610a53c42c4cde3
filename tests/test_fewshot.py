"""Few-shot splits: exact k, groups kept whole, val from the pool, a test set fixed across k and seeds."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medadapt.data.datasets import load_segmentation_dataset
from medadapt.data.fewshot import Split, load_split, make_split, save_split
from medadapt.errors import MedadaptError


@pytest.fixture(scope="module")
def hippo(data_dir: Path):
    return load_segmentation_dataset(data_dir / "hippocampus")


@pytest.fixture()
def grouped(tmp_path: Path):
    """12 patients with 1-3 images each (CSV with patient folders)."""
    rng = np.random.default_rng(0)
    rows = []
    for p in range(12):
        for s in range(1 + p % 3):
            img = rng.integers(0, 255, (8, 8), dtype=np.uint8)
            for sub, arr in (("img", img), ("msk", (img > 128).astype(np.uint8) * 255)):
                path = tmp_path / sub / f"p{p:02d}" / f"s{s}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(arr).save(path)
            rows.append(f"img/p{p:02d}/s{s}.png,msk/p{p:02d}/s{s}.png")
    (tmp_path / "cases.csv").write_text("\n".join(rows) + "\n")
    return load_segmentation_dataset(tmp_path / "cases.csv")


def _groups(ds, keys):
    return {ds.case(k).group for k in keys}


@pytest.mark.parametrize("k", [1, 5, 10])
def test_k_volumes_exactly(hippo, k):
    split = make_split(hippo, shots=k, seed=0)
    assert len(split.train) == k
    assert len(split.test) == 20 and len(split.val) == 5
    assert (
        not set(split.train) & set(split.val)
        | set(split.train) & set(split.test)
        | set(split.val) & set(split.test)
    )
    assert len(split.train) + len(split.val) + len(split.test) <= 60


def test_test_set_is_fixed_across_k_and_seeds(hippo):
    tests = {make_split(hippo, shots=k, seed=s).test for k in (1, 5, 10) for s in (0, 1, 2)}
    assert len(tests) == 1
    trains = {make_split(hippo, shots=5, seed=s).train for s in (0, 1, 2)}
    assert len(trains) == 3  # the seed does pick different training volumes


def test_train_sets_are_nested_and_val_fixed_for_a_seed(hippo):
    s1, s5, s10 = (make_split(hippo, shots=k, seed=3) for k in (1, 5, 10))
    assert set(s1.train) <= set(s5.train) <= set(s10.train)
    assert s1.val == s5.val == s10.val


def test_val_comes_from_the_pool_not_the_test_set(hippo):
    for seed in range(5):
        split = make_split(hippo, shots=5, seed=seed, n_val=8)
        assert len(split.val) == 8
        assert not set(split.val) & set(split.test)
        pool = set(hippo.keys()) - set(split.test)
        assert set(split.val) <= pool and set(split.train) <= pool


def test_groups_never_straddle(grouped):
    assert len(grouped.groups()) == 12
    for seed in range(4):
        split = make_split(grouped, shots=3, seed=seed, n_val=2, test=4)
        parts = [_groups(grouped, split.train), _groups(grouped, split.val), _groups(grouped, split.test)]
        assert [len(p) for p in parts] == [3, 2, 4]
        assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
        for part, keys in zip(parts, (split.train, split.val, split.test), strict=True):
            whole = [k for g in part for k in grouped.groups()[g]]
            assert sorted(whole) == sorted(keys)  # every case of a chosen group comes along


def test_explicit_test_keys_take_their_whole_group(grouped):
    key = grouped.groups()["p02"][0]
    split = make_split(grouped, shots=2, test=[key])
    assert set(split.test) == set(grouped.groups()["p02"]) and len(split.test) == 3


@pytest.mark.parametrize("fraction", [0.01, 0.1, 1.0])
def test_fractions_keep_at_least_one(hippo, fraction):
    split = make_split(hippo, fraction=fraction, seed=0)
    available = 60 - 20 - 5
    assert len(split.train) == max(1, round(fraction * available))
    assert len(split.train) >= 1


def test_bad_requests(hippo):
    with pytest.raises(MedadaptError, match="only 35 group"):
        make_split(hippo, shots=36)
    with pytest.raises(MedadaptError, match="not both"):
        make_split(hippo, shots=1, fraction=0.1)
    with pytest.raises(MedadaptError, match="fraction"):
        make_split(hippo, fraction=0)
    with pytest.raises(MedadaptError, match="does not have"):
        make_split(hippo, shots=1, test=["nope"])


def test_given_split_is_used(data_dir: Path):
    ds = load_segmentation_dataset(data_dir / "prostate_mri_2d")
    with pytest.warns(UserWarning, match="patient77"):  # the published split shares one patient
        split = make_split(ds, seed=0)
    assert set(split.train) == set(ds.given_split["train"])
    assert set(split.test) == set(ds.given_split["val"]) and split.val == ()
    with warnings.catch_warnings():  # warns only when patient77's training image is among the two
        warnings.simplefilter("ignore")
        two = make_split(ds, shots=2, seed=1)
    assert len(two.train) == 2 and set(two.train) <= set(ds.given_split["train"])
    assert two.test == split.test


def test_round_trip(tmp_path: Path, hippo):
    split = make_split(hippo, shots=5, seed=7)
    path = tmp_path / "run" / "split.json"
    save_split(path, split)
    back = load_split(path, hippo)
    assert back == split and back.info["seed"] == 7 and back.info["shots"] == 5
    assert list(tmp_path.joinpath("run").iterdir()) == [path]  # no temporary left behind


def test_load_split_errors(tmp_path: Path, hippo):
    with pytest.raises(MedadaptError, match="does not exist"):
        load_split(tmp_path / "none.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(MedadaptError, match="bad.json"):
        load_split(bad)
    other = tmp_path / "other.json"
    save_split(other, Split(["a"], [], ["b"]))
    with pytest.raises(MedadaptError, match="does not have: a, b"):
        load_split(other, hippo)
    overlap = tmp_path / "overlap.json"
    overlap.write_text(json.dumps({"format": "medadapt.split/1", "train": ["a"], "val": [], "test": ["a"]}))
    with pytest.raises(MedadaptError, match="more than one part"):
        load_split(overlap)
