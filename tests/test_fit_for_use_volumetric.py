"""3D runs for use: train on every labelled volume, predict new volumes, score on another dataset.

Tiny synthetic MR volumes, a 3-level U-Net with 4..16 filters, 16^3 crops, one thread.
"""

from __future__ import annotations

import csv
import json
import shutil

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from medadapt.cli.main import app
from medadapt.data.synthetic import make_synthetic_dataset
from test_cli_volumetric import TINY, one_thread  # noqa: F401  (one thread for the whole module)

runner = CliRunner()


@pytest.fixture(scope="module")
def mine(tmp_path_factory):
    return make_synthetic_dataset(tmp_path_factory.mktemp("mine") / "ds", n_cases=5)


@pytest.fixture(scope="module")
def other(tmp_path_factory):
    """Another labelled dataset, with its own case names."""
    root = make_synthetic_dataset(tmp_path_factory.mktemp("other") / "ds", n_cases=3, seed=1)
    meta = json.loads((root / "dataset.json").read_text())
    for sub in ("imagesTr", "labelsTr"):
        for f in sorted((root / sub).iterdir()):
            f.rename(f.with_name(f.name.replace("synth_", "site2_")))
    meta["training"] = [{k: v.replace("synth_", "site2_") for k, v in e.items()} for e in meta["training"]]
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def _fit(data, out, *extra):
    return runner.invoke(app, ["fit", "--task", "volumetric", "--data", str(data), "--out", str(out), "--test", "0",
                               "--max-steps", "2", "--no-progress", *TINY, "--set", "fixed_crops=2", *extra])


def test_all_volumes_train_then_new_volumes_and_another_dataset(mine, other, tmp_path):
    run = tmp_path / "run"
    res = _fit(mine, run, "--shots", "5")  # all 5 labelled volumes: no test third, no validation fifth
    assert res.exit_code == 0, res.output
    split = json.loads((run / "split.json").read_text())
    assert len(split["train"]) == 5 and split["val"] == [] and split["test"] == []
    assert json.loads((run / "result.json").read_text())["protocol"]["held_out_test"] is False

    # new, unlabelled volumes: outputs keep each input's name, shape and header
    new = tmp_path / "imagesTs"
    new.mkdir()
    for f in sorted((other / "imagesTr").iterdir()):
        shutil.copy(f, new / f.name)
    res = runner.invoke(app, ["predict", "--adapter", str(run), "--input", str(new), "--out", str(tmp_path / "pred")])
    assert res.exit_code == 0, res.output
    for src in sorted(new.iterdir()):
        a, b = nib.load(src), nib.load(tmp_path / "pred" / src.name)
        assert b.shape == a.shape and np.allclose(b.affine, a.affine)
        assert set(np.unique(np.asarray(b.dataobj))) <= {0, 1, 2}

    # the dataset it trained on has nothing held out; another labelled dataset is scored on all its cases
    res = runner.invoke(app, ["evaluate", "--task", "volumetric", "--data", str(mine), "--adapter", str(run),
                              "--out", str(tmp_path / "ev0")])
    assert res.exit_code == 2 and "none is held out" in res.output and not (tmp_path / "ev0").exists()
    res = runner.invoke(app, ["evaluate", "--task", "volumetric", "--data", str(other), "--adapter", str(run),
                              "--out", str(tmp_path / "ev"), "--bootstrap", "10"])
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader((tmp_path / "ev" / "per_case.csv").open()))
    assert {r["case"] for r in rows} == {f"site2_{i:03d}" for i in range(3)}


def test_folds_choose_the_step_count_and_the_final_run_uses_all(mine, tmp_path):
    run = tmp_path / "run"
    res = _fit(mine, run, "--folds", "2", "--max-steps", "2", "--val-every", "1")
    assert res.exit_code == 0, res.output
    result = json.loads((run / "result.json").read_text())
    protocol = result["protocol"]
    assert protocol["folds"] == 2 and protocol["chosen_step"] in (1, 2) and result["steps"] == protocol["chosen_step"]
    assert 0 <= protocol["cv_estimate"] <= 1 and "cross-validated DSC" in res.output
    folds = [json.loads((run / "folds" / f"fold{i}" / "split.json").read_text()) for i in range(2)]
    assert sorted(folds[0]["val"] + folds[1]["val"]) == sorted(json.loads((run / "split.json").read_text())["train"])
    assert all((run / "folds" / f"fold{i}" / "adapter" / "adapter.safetensors").is_file() for i in range(2))


def test_predict_refuses_prompts_for_a_volumetric_run(mine, tmp_path):
    run = tmp_path / "run"
    assert _fit(mine, run).exit_code == 0
    res = runner.invoke(app, ["predict", "--adapter", str(run), "--input", str(mine / "imagesTr"),
                              "--prompts", "boxes-from-labels", "--labels", str(mine / "labelsTr"),
                              "--out", str(tmp_path / "p")])
    assert res.exit_code == 2 and "--prompts and --labels apply to SAM-family runs" in res.output
    assert not (tmp_path / "p").exists()
