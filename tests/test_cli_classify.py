"""`medadapt fit --task classify` and `medadapt evaluate --task classify` end to end, through the CLI."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

from medadapt.cli.main import app
from medadapt.engine.classify_task import ClassificationTask

runner = CliRunner()


@pytest.fixture()
def npz(tiny_mnist):
    return tiny_mnist


def fit_args(npz, out, *extra):
    return ["fit", "--task", "classify", "--data", str(npz), "--out", str(out), "--model", "cnn_small",
            "--method", "full", "--max-steps", "6", "--batch-size", "8", "--val-every", "2", "--lr", "3e-3",
            "--threads", "1", "--no-progress", "--set", "img_size=16", *extra]


def test_fit_then_evaluate(npz, tmp_path):
    run = tmp_path / "run"
    res = runner.invoke(app, fit_args(npz, run, "--fraction", "0.5", "--seed", "1"))
    assert res.exit_code == 0, res.output
    assert "fit done: full on cnn_small, 50% of labels (24 images)" in res.output and "best val AUROC" in res.output
    for name in ("fit_config.json", "split.json", "adapter/adapter.safetensors", "adapter/adapter.json",
                 "checkpoint/last.pt", "metrics.csv", "result.json"):
        assert (run / name).is_file(), name
    assert any((run / "tb").iterdir())
    result = json.loads((run / "result.json").read_text())
    split = json.loads((run / "split.json").read_text())
    assert result["steps"] == 6 and result["train_images"] == 24 and result["train_class_counts"] == {"0": 12, "1": 12}
    assert len(split["train"]) == 24 and len(split["val"]) == 20
    with open(run / "metrics.csv") as f:  # validation every --val-every steps, not every (tiny) epoch
        assert [int(r["step"]) for r in csv.DictReader(f) if r["name"] == "auroc"] == [2, 4, 6]
    assert 0.5 < result["best_metric"] <= 1.0

    ev = tmp_path / "eval"
    res = runner.invoke(app, ["evaluate", "--task", "classify", "--data", str(npz), "--adapter", str(run),
                              "--split", "test", "--out", str(ev), "--bootstrap", "200", "--threads", "1"])
    assert res.exit_code == 0, res.output
    summary = json.loads((ev / "summary.json").read_text())
    with open(ev / "per_image.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 24 and set(rows[0]) == {"id", "true_1", "score_1"}
    y = np.array([int(r["true_1"]) for r in rows])
    s = np.array([float(r["score_1"]) for r in rows])
    assert y.tolist() == (np.arange(24) % 2).tolist()
    assert summary["auroc"] == pytest.approx(roc_auc_score(y, s), abs=1e-5)
    lo, hi = summary["per_class"]["1"]["auroc_ci"]
    assert lo <= summary["auroc"] <= hi and summary["settings"]["split"] == "test"
    assert summary["settings"]["input_size"] == 16  # rebuilt at the trained size, not cnn_small's default 64
    assert {"ap", "accuracy", "balanced_accuracy"} <= set(summary)


def test_linear_probe_caches_litemedsam_features(npz, tmp_path):
    run = tmp_path / "probe"
    res = runner.invoke(app, ["fit", "--task", "classify", "--data", str(npz), "--out", str(run), "--method",
                              "linear-probe", "--max-steps", "4", "--batch-size", "8", "--val-every", "2",
                              "--threads", "1", "--no-progress", "--set", "img_size=32", "--set", "augment=false"])
    assert res.exit_code == 0, res.output
    result = json.loads((run / "result.json").read_text())
    # every train and val image encoded once, then only the head trains (LayerNorm 2x256 + Linear 257)
    assert result["feature_cache"]["misses"] == 48 + 20 and result["trainable_params"] == 2 * 256 + 257
    meta = json.loads((run / "adapter" / "adapter.json").read_text())
    assert set(load_file(run / "adapter" / "adapter.safetensors")) == {"fc_norm.weight", "fc_norm.bias",
                                                                        "head.weight", "head.bias"}
    assert meta["extra"]["classify"]["input_spec"]["size"] == 32


@pytest.mark.parametrize("argv, expect", [
    (["--set", "lora_alfa=8"], "unknown classification option 'lora_alfa' (did you mean 'lora_alpha'?)"),
    (["--set", "pool=max"], "'pool'"),
    (["--fraction", "0.5", "--shots", "3"], "fraction or shots"),
])
def test_bad_fit_options_exit_2_without_output(npz, tmp_path, argv, expect):
    run = tmp_path / "bad"
    res = runner.invoke(app, fit_args(npz, run, *argv))
    assert res.exit_code == 2, res.output
    assert expect in " ".join(res.output.split())
    assert not run.exists()


def test_bad_evaluate_split_exit_2_without_output(npz, tmp_path):
    out = tmp_path / "ev"
    res = runner.invoke(app, ["evaluate", "--task", "classify", "--data", str(npz), "--adapter", str(tmp_path),
                              "--split", "test", "--out", str(out)])
    assert res.exit_code == 2 and "adapter" in res.output and not out.exists()
    run = tmp_path / "run"
    assert runner.invoke(app, fit_args(npz, run, "--max-steps", "2")).exit_code == 0
    res = runner.invoke(app, ["evaluate", "--task", "classify", "--data", str(npz), "--adapter", str(run),
                              "--split", "holdout", "--out", str(out)])
    assert res.exit_code == 2 and "it has: train, val, test" in " ".join(res.output.split())
    assert not out.exists()


def test_resume_after_kill_matches_uninterrupted_run(npz, tmp_path, monkeypatch):
    full = tmp_path / "full"
    assert runner.invoke(app, fit_args(npz, full)).exit_code == 0

    killed = tmp_path / "killed"
    original = ClassificationTask.training_step
    calls = {"n": 0}

    def dies_at_step_5(self, batch):
        calls["n"] += 1
        if calls["n"] == 5:  # after the step-4 checkpoint
            raise KeyboardInterrupt
        return original(self, batch)

    monkeypatch.setattr(ClassificationTask, "training_step", dies_at_step_5)
    res = runner.invoke(app, fit_args(npz, killed))
    assert res.exit_code == 130 and not (killed / "result.json").exists()
    monkeypatch.setattr(ClassificationTask, "training_step", original)
    res = runner.invoke(app, ["fit", "--task", "classify", "--out", str(killed), "--resume", "--threads", "1"])
    assert res.exit_code == 0, res.output
    assert json.loads((killed / "result.json").read_text())["steps"] == 6
    a = torch.load(full / "checkpoint" / "last.pt", weights_only=True)["model"]
    b = torch.load(killed / "checkpoint" / "last.pt", weights_only=True)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # a second run into the same folder without --resume is refused
    res = runner.invoke(app, fit_args(npz, killed))
    assert res.exit_code == 2 and "already holds a run" in res.output
