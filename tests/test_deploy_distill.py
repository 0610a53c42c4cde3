"""Encoder distillation: the student is smaller, learns the teacher's embeddings, and bad inputs fail cleanly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from medadapt.cli.main import app
from medadapt.deploy.distill import flip_views, load_student
from medadapt.models.registry import build_model
from medadapt.models.sam.student import count_macs, init_from_teacher

runner = CliRunner()


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def _cli(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


@pytest.mark.parametrize("name", ["litemedsam_student_s", "litemedsam_student_xs"])
def test_student_is_smaller_and_cheaper(name: str):
    teacher = build_model("litemedsam", pretrained=False, image_size=128).image_encoder
    student = build_model(name, pretrained=False, image_size=128).image_encoder
    n_t = sum(p.numel() for p in teacher.parameters())
    n_s = sum(p.numel() for p in student.parameters())
    assert n_s < 0.6 * n_t
    assert count_macs(student, 128) < 0.45 * count_macs(teacher, 128)  # a load-independent latency proxy
    assert student.embedding_size == teacher.embedding_size == 32  # S/4, as the teacher


def test_student_shape_and_teacher_seed():
    teacher = build_model("litemedsam", image_size=64).image_encoder
    student = build_model("litemedsam_student_s", pretrained=False, image_size=64).image_encoder
    copied = init_from_teacher(student, teacher)
    # Stage 2 block 1 of the student is seeded from teacher block 5; the neck is the teacher's.
    assert torch.equal(student.layers[2].blocks[1].mlp.fc1.weight, teacher.layers[2].blocks[5].mlp.fc1.weight)
    assert torch.equal(student.neck[2].weight, teacher.neck[2].weight)
    assert not any(n.startswith("patch_embed") for n in copied)  # 3x3 stride-2 stem: nothing to copy
    with torch.no_grad():
        assert student.eval()(torch.rand(2, 3, 64, 64)).shape == (2, 256, 16, 16)


def test_flip_views_flips_each_sample_its_own_way():
    x = torch.arange(2 * 1 * 2 * 3, dtype=torch.float32).view(2, 1, 2, 3)
    out = flip_views(x, torch.tensor([[True, False], [False, True]]))
    assert torch.equal(out[0], x[0].flip(-1)) and torch.equal(out[1], x[1].flip(-2))


def test_distill_lowers_embedding_mse(data_dir: Path, tmp_path: Path):
    out = tmp_path / "run"
    res = _cli("distill", "--data", data_dir / "hippocampus", "--out", out, "--student", "litemedsam_student_xs",
               "--image-size", 64, "--shots", 1, "--max-train-slices", 8, "--max-steps", 12, "--batch-size", 4,
               "--lr", 3e-3, "--max-val-slices", 4, "--no-progress", "--threads", 1)
    assert res.exit_code == 0, res.output
    result = json.loads((out / "result.json").read_text())
    # Seeded from the teacher but with a new stem, the student starts far from the teacher.
    assert result["best_metric"] < 0.6 * result["initial_val_mse"], result
    assert result["init_tensors_from_teacher"] > 0
    assert result["teacher_cache"]["misses"] <= 8 + result["val_slices"]  # one teacher pass per slice
    split = json.loads((out / "split.json").read_text())
    assert not set(split["test"]) & set(split["train"])
    state, meta = load_student(out)
    assert meta["student"] == "litemedsam_student_xs" and meta["teacher"] == "litemedsam"
    assert set(state) == set(build_model("litemedsam_student_xs", pretrained=False).image_encoder.state_dict())
    for f in ("metrics.csv", "checkpoint/last.pt", "config.json"):
        assert (out / f).is_file(), f
    # A finished run resumes to the same result without training again.
    res = _cli("distill", "--data", data_dir / "hippocampus", "--out", out, "--student", "litemedsam_student_xs",
               "--image-size", 64, "--shots", 1, "--max-train-slices", 8, "--max-steps", 12, "--batch-size", 4,
               "--lr", 3e-3, "--max-val-slices", 4, "--no-progress", "--resume")
    assert res.exit_code == 0, res.output
    assert json.loads((out / "result.json").read_text())["steps"] == 12


def test_distill_bad_inputs_exit_2_without_output(data_dir: Path, tmp_path: Path):
    out = tmp_path / "run"
    hippo = data_dir / "hippocampus"
    for args in (
        ("--data", hippo, "--student", "litemedsam"),  # not a student
        ("--data", hippo, "--student", "nope"),
        ("--data", tmp_path / "missing"),
        ("--data", hippo, "--teacher-input", "sideways"),
        ("--data", hippo, "--teacher-checkpoint", tmp_path / "none.pth"),
    ):
        res = _cli("distill", *args, "--out", out, "--no-progress")
        assert res.exit_code == 2, (args, res.output)
        assert not out.exists(), args
