"""``medadapt pretrain`` → ``fit --task volumetric`` → ``evaluate --task volumetric`` through the CLI.

Tiny synthetic MR volumes, a 3-level U-Net with 4..16 filters, 16^3 crops, one thread.
"""

from __future__ import annotations

import csv
import json

import nibabel as nib
import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from medadapt.cli.main import app
from medadapt.data.synthetic import make_synthetic_dataset
from medadapt.engine.trainer import Trainer

TINY = ["--set", "roi=16", "--set", "filters=4,8,16", "--set", "strides=1,2,2", "--set", "spacing=native"]
runner = CliRunner()


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_synthetic_dataset(tmp_path_factory.mktemp("vol") / "ds", n_cases=8)


@pytest.fixture(scope="module")
def pretrained(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("pre") / "pre"
    res = runner.invoke(app, ["pretrain", "--data", str(data), "--labels", "1=bright_structure", "--out", str(out),
                              "--max-steps", "3", "--no-progress", *TINY])
    assert res.exit_code == 0, res.output
    return out


def _fit(data, out, *extra):
    return runner.invoke(app, ["fit", "--task", "volumetric", "--data", str(data), "--out", str(out), "--shots", "2",
                               "--no-progress", *extra])


def test_pretrain_fit_evaluate(data, pretrained, tmp_path):
    meta = json.loads((pretrained / "model.json").read_text())
    assert meta["classes"] == ["bright_structure"] and meta["arch"]["filters"] == [4, 8, 16]
    # pretraining never saw the fixed held-out volumes that fit evaluates on
    held_out = json.loads((pretrained / "splits" / "SyntheticMR.json").read_text())

    run = tmp_path / "run"
    res = _fit(data, run, "--checkpoint", str(pretrained / "model.pt"), "--classes", "2", "--max-steps", "4",
               "--val-every", "2", "--set", "head=spatial", "--set", "transductive=true",
               "--set", "warmup_epochs=1", "--set", "fixed_crops=2")
    assert res.exit_code == 0, res.output
    assert "trainable parameters" in res.output and "adapter" in res.output
    result = json.loads((run / "result.json").read_text())
    # frozen backbone: a 3x3x3 residual adapter on the 4 decoder channels (2 x 4*4*27) + a 1x1x1 probe (4 + 1)
    assert result["trainable_params"] == 2 * 4 * 4 * 27 + 5 and result["cached_features"]
    assert result["load_report"].startswith("layout monai") and result["steps"] == 4
    split = json.loads((run / "split.json").read_text())
    assert split["test"] == held_out["test"] and not set(split["train"]) & set(split["test"])
    assert (run / "adapter" / "adapter.safetensors").is_file() and (run / "fit_config.json").is_file()
    assert "proportion_penalty" in (run / "metrics.csv").read_text()

    ev = tmp_path / "eval"
    res = runner.invoke(app, ["evaluate", "--task", "volumetric", "--data", str(data), "--adapter", str(run),
                              "--out", str(ev), "--save-predictions", "--bootstrap", "10"])
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader((ev / "per_case.csv").open()))
    assert [r["case"] for r in rows] == split["test"] and {r["class"] for r in rows} == {"2"}
    summary = json.loads((ev / "summary.json").read_text())
    assert summary["n_cases"] == len(split["test"]) and 0 <= summary["overall"]["dsc"]["mean"] <= 1
    # predictions on the original grid, with the input's affine, holding only the trained label value
    for key in split["test"]:
        pred = nib.load(ev / "pred" / f"{key}.nii.gz")
        img = nib.load(data / "imagesTr" / f"{key}.nii.gz")
        assert pred.shape == img.shape and np.allclose(pred.affine, img.affine)
        assert set(np.unique(np.asarray(pred.dataobj))) <= {0, 2}


def test_linear_probe_starts_from_the_pretrained_row(data, pretrained, tmp_path):
    """A class the checkpoint knows by name gets its pretrained classifier row (the zero-shot solution)."""
    from medadapt.engine.fitted import build_head_model

    resolved = {"model": "unet3d", "arch": {"filters": [4, 8, 16], "strides": [1, 2, 2]}, "out_channels": 2,
                "head": "linear", "class_names": ["Dark", "Bright Structure"], "sigmoid": True,
                "pretrained_classes": ["bright_structure"], "adapter_kernel": 3}
    model = build_head_model(resolved, str(pretrained / "model.pt"))
    ckpt = torch.load(pretrained / "model.pt", weights_only=True)["state_dict"]
    w = model.head.linear.weight.detach().flatten(1)
    assert torch.equal(w[1], ckpt["output_block.conv.conv.weight"].flatten(1)[0])
    assert not torch.equal(w[0], w[1])


def test_bad_input_exits_2_without_output(data, pretrained, tmp_path):
    out = tmp_path / "bad"
    res = _fit(data, out, "--set", "bogus=1")
    assert res.exit_code == 2 and "bogus" in res.output and "valid options" in res.output
    res = _fit(data, out, "--classes", "7")
    assert res.exit_code == 2 and "not in the dataset" in res.output
    res = _fit(data, out, "--method", "full", "--set", "transductive=true", "--max-steps", "2", *TINY)
    assert res.exit_code == 2 and "frozen backbone" in res.output
    res = runner.invoke(app, ["pretrain", "--data", str(data), "--labels", "9=x", "--out", str(out)])
    assert res.exit_code == 2 and "no label value" in res.output
    assert not out.exists()


def test_resume_after_kill_matches_uninterrupted_run(data, pretrained, monkeypatch, tmp_path):
    # LoRA on the encoder convolutions: fresh random crops each epoch, replayed on resume
    args = ["--checkpoint", str(pretrained / "model.pt"), "--classes", "2", "--max-steps", "4", "--val-every", "1",
            "--method", "lora"]
    assert _fit(data, tmp_path / "full", *args).exit_code == 0

    original = Trainer._save_last

    def killed_at_step_2(self):
        original(self)
        if self._run.step == 2:
            raise KeyboardInterrupt  # as a kill right after the checkpoint of step 2

    monkeypatch.setattr(Trainer, "_save_last", killed_at_step_2)
    assert _fit(data, tmp_path / "cut", *args).exit_code == 130
    monkeypatch.setattr(Trainer, "_save_last", original)
    again = _fit(data, tmp_path / "cut", *args)
    assert again.exit_code == 2 and "--resume" in again.output  # an existing run is never overwritten
    assert _fit(data, tmp_path / "cut", *args, "--resume").exit_code == 0
    result = json.loads((tmp_path / "cut" / "result.json").read_text())
    assert result["steps"] == 4 and result["recipe"] == "peft-lora" and result["encoder_trainable"]
    a = load_file(tmp_path / "full" / "adapter" / "adapter.safetensors")
    b = load_file(tmp_path / "cut" / "adapter" / "adapter.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
