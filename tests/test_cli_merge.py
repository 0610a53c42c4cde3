"""`medadapt merge`: adapter folding and student + teacher checkpoints that `predict` loads."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from medadapt.adapt.artifact import load_adapter, save_adapter
from medadapt.adapt.recipes import RecipeConfig, apply_recipe
from medadapt.cli.main import app
from medadapt.deploy.distill import save_student
from medadapt.models.registry import build_model

runner = CliRunner()


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def _cli(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def make_adapter(run: Path, recipe: str, seed: int = 0) -> torch.nn.Module:
    """A fit-run-like folder whose adapter has non-trivial (random) trained tensors."""
    torch.manual_seed(seed)
    model = build_model("litemedsam")
    cfg = RecipeConfig(name=recipe)
    apply_recipe(model, cfg)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)
    save_adapter(model, run / "adapter", recipe=cfg, base={"model": "litemedsam", "image_size": 256})
    return model.eval()


def _decode(model, emb):
    boxes = torch.tensor([[10.0, 15.0, 40.0, 45.0]])
    return model.decode(emb, boxes=boxes)[0]


def test_merge_adapter_round_trip_and_predict_loads_it(tmp_path: Path):
    make_adapter(tmp_path / "run", "lora")
    out = tmp_path / "merged.safetensors"
    res = _cli("merge", "--adapter", tmp_path / "run", "--out", out)
    assert res.exit_code == 0, res.output
    info = json.loads(out.with_suffix(".json").read_text())
    assert info["model"] == "litemedsam" and info["recipe"]["name"] == "lora"

    # Weights do not depend on the input side: compare at 64 px to keep the test fast.
    merged = build_model("litemedsam", checkpoint=out, image_size=64)  # safetensors via read_checkpoint
    assert set(merged.state_dict()) == set(build_model("litemedsam", pretrained=False).state_dict())
    adapted = load_adapter(build_model("litemedsam", image_size=64), tmp_path / "run" / "adapter").eval()
    torch.manual_seed(1)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        ea, em = adapted.encode(x), merged.encode(x)
        assert (ea - em).abs().max() <= 1e-4 * ea.abs().max()
        la, lm = _decode(adapted, ea), _decode(merged, ea)
    assert (la - lm).abs().max() <= 1e-4 * la.abs().max()
    # The adapter changed the model: the merged file is not the base checkpoint.
    base = build_model("litemedsam", image_size=64)
    with torch.no_grad():
        assert (_decode(base, ea) - la).abs().max() > 1e-2

    # `medadapt predict --checkpoint` reads it.
    from PIL import Image

    img = np.zeros((64, 64), np.uint8)
    img[20:40, 16:44] = 200
    for sub, arr in (("img", img), ("lab", (img > 0).astype(np.uint8))):
        (tmp_path / sub).mkdir()
        Image.fromarray(arr).save(tmp_path / sub / "im.png")
    res = _cli("predict", "-i", tmp_path / "img" / "im.png", "-l", tmp_path / "lab", "-o", tmp_path / "pred",
               "--model", "litemedsam", "--checkpoint", out, "--engine", "torch")
    assert res.exit_code == 0, res.output
    assert (tmp_path / "pred" / "im.png").is_file()


def test_unmergeable_adapter_and_bad_options_exit_2_without_output(tmp_path: Path):
    make_adapter(tmp_path / "run", "decoder-adapter")
    out = tmp_path / "m.safetensors"
    res = _cli("merge", "--adapter", tmp_path / "run", "--out", out)
    assert res.exit_code == 2 and "cannot be folded" in res.output
    for args in (
        ("--adapter", tmp_path / "run", "--out", tmp_path / "m.pth"),  # not .safetensors
        ("--out", out),  # neither --adapter nor --student
        ("--adapter", tmp_path / "run", "--student", tmp_path / "run", "--out", out),
        ("--adapter", tmp_path / "nope", "--out", out),
        ("--student", tmp_path / "run", "--out", out),  # not a distill run
    ):
        res = _cli("merge", *args)
        assert res.exit_code == 2, (args, res.output)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_merge_student_joins_teacher_decoder(tmp_path: Path):
    torch.manual_seed(0)
    student = build_model("litemedsam_student_xs", pretrained=False).image_encoder
    with torch.no_grad():
        student.neck[0].weight.mul_(3.0)  # something the registry's init does not produce
    save_student(student, tmp_path / "dist" / "student",
                 {"student": "litemedsam_student_xs", "teacher": "litemedsam", "image_size": 256})
    out = tmp_path / "student.safetensors"
    res = _cli("merge", "--student", tmp_path / "dist", "--teacher", "medsam", "--out", out)
    assert res.exit_code == 2 and "distilled from 'litemedsam'" in res.output and not out.exists()
    res = _cli("merge", "--student", tmp_path / "dist", "--teacher", "litemedsam", "--out", out)
    assert res.exit_code == 0, res.output

    merged = build_model("litemedsam_student_xs", checkpoint=out)
    teacher = build_model("litemedsam")
    for k, v in student.state_dict().items():
        assert torch.equal(merged.image_encoder.state_dict()[k], v), k
    for part in ("prompt_encoder", "mask_decoder"):
        ref = getattr(teacher, part).state_dict()
        for k, v in getattr(merged, part).state_dict().items():
            assert torch.equal(v, ref[k]), k
    assert json.loads(out.with_suffix(".json").read_text())["kind"] == "student-merged"


def test_load_adapter_matches_merge_helper(tmp_path: Path):
    """The merged state dict of a bias-tuned model equals base + adapter, key for key."""
    from medadapt.deploy.merge import merge_adapter_run

    adapted = make_adapter(tmp_path / "run", "bias", seed=3)
    merge_adapter_run(tmp_path / "run", tmp_path / "b.safetensors")
    fresh = load_adapter(build_model("litemedsam"), tmp_path / "run" / "adapter")
    merged = build_model("litemedsam", checkpoint=tmp_path / "b.safetensors")
    sd = merged.state_dict()
    for k, v in fresh.state_dict().items():
        assert torch.equal(sd[k], v), k
    assert torch.equal(sd["mask_decoder.iou_prediction_head.layers.0.bias"],
                       adapted.state_dict()["mask_decoder.iou_prediction_head.layers.0.bias"])
