"""End-to-end: `medadapt predict` + `medadapt evaluate` on real data, and bad input handling."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from medadapt.cli.main import app

runner = CliRunner()


def invoke(*args: str):
    if args[0] == "predict" and "--engine" not in args:  # the PyTorch path these tests check (default: auto)
        args = (*args, "--engine", "torch")
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def test_models_lists_registry():
    res = invoke("models")
    assert res.exit_code == 0
    for name in ("litemedsam", "medsam", "sam_vit_b", "sam_vit_h", "mobilesam"):
        assert name in res.output


def test_prostate_boxes_from_labels_dsc(data_dir: Path, tmp_path: Path):
    """Mean DSC >= 0.90 with boxes from labels (the official LiteMedSAM pipeline scores 0.909 on these images)."""
    root = data_dir / "prostate_mri_2d"
    pred, ev = tmp_path / "pred", tmp_path / "eval"
    res = invoke("predict", "--input", root / "images", "--labels", root / "masks", "--out", pred)
    assert res.exit_code == 0, res.output
    names = sorted(p.name for p in pred.iterdir())
    assert names == sorted(p.name for p in (root / "masks").iterdir())  # outputs keep the input names
    res = invoke("evaluate", "--pred", pred, "--gt", root / "masks", "--out", ev)
    assert res.exit_code == 0, res.output
    with open(ev / "per_case.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0])[:5] == ["case", "class", "dsc", "nsd", "hd95"]
    assert len(rows) == 10 and {r["class"] for r in rows} == {"1"}
    summary = json.loads((ev / "summary.json").read_text())
    mean_dsc = np.mean([float(r["dsc"]) for r in rows])
    assert mean_dsc >= 0.90, mean_dsc
    assert summary["per_class"]["1"]["dsc"]["mean"] == pytest.approx(mean_dsc)


def test_volume_prediction_keeps_geometry_and_matches_official(data_dir: Path, tmp_path: Path):
    """A hippocampus volume: NIfTI out with the input's affine; equal to the per-object, batch-1 procedure."""
    from medadapt.data.prompts import boxes_from_label
    from medadapt.infer.predictor import SamPredictor
    from medadapt.metrics.segmentation import case_metrics
    from medadapt.models.registry import build_model, get_sam_spec

    case = "hippocampus_001.nii.gz"
    img_dir, lab_dir = tmp_path / "img", tmp_path / "lab"
    img_dir.mkdir()
    lab_dir.mkdir()
    shutil.copy(data_dir / "hippocampus" / "imagesTr" / case, img_dir / case)
    shutil.copy(data_dir / "hippocampus" / "labelsTr" / case, lab_dir / case)
    out = tmp_path / "pred"
    # the official preprocessing by name (a zero-shot model's default enlarges small slices bilinearly)
    res = invoke("predict", "--input", img_dir, "--labels", lab_dir, "--out", out, "--batch-size", "16",
                 "--resize", "official")
    assert res.exit_code == 0, res.output
    src, dst = nib.load(img_dir / case), nib.load(out / case)
    assert dst.shape == src.shape
    np.testing.assert_allclose(dst.affine, src.affine)
    seg = np.asarray(dst.dataobj)

    # Reference: every slice and class encoded on its own, batch 1 (how the official code runs).
    from medadapt.data.intensity import normalise_for_sam
    from medadapt.io.volumes import default_slice_axis, read_volume

    vol = read_volume(img_dir / case)
    label = np.rint(read_volume(lab_dir / case).array).astype(np.int64)
    image = normalise_for_sam(vol.array, "mr")
    axis = default_slice_axis(vol)
    predictor = SamPredictor(build_model("litemedsam"), get_sam_spec("litemedsam"), batch_size=1)
    ref = np.zeros(label.shape, dtype=np.uint16)
    v, lab, r = (np.moveaxis(a, axis, 0) for a in (image, label, ref))
    for z in range(v.shape[0]):
        for p in boxes_from_label(lab[z], per="class"):
            out2d, _ = predictor.segment(v[z], [p])
            r[z][out2d > 0] = p.class_id
    ours = {m["class"]: m["dsc"] for m in case_metrics(label, seg, vol.spacing)}
    theirs = {m["class"]: m["dsc"] for m in case_metrics(label, ref, vol.spacing)}
    for c in (1, 2):
        assert abs(ours[c] - theirs[c]) <= 0.005, (ours, theirs)
        assert ours[c] > 0.5
    assert (seg != ref).mean() < 0.002


def _fails_cleanly(res, *needles: str):
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    for n in needles:
        assert n in res.output, res.output


def test_missing_input(tmp_path: Path):
    res = invoke("predict", "--input", tmp_path / "nope", "--labels", tmp_path, "--out", tmp_path / "o")
    _fails_cleanly(res, "nope", "does not exist")


def test_corrupt_png_gives_no_output(tmp_path: Path, data_dir: Path):
    """A bad input after a good one: no prediction reaches --out, not even the good one or an empty folder."""
    root = data_dir / "prostate_mri_2d"
    good = next((root / "images").rglob("*.png"))
    inp, lab = tmp_path / "in", tmp_path / "lab"
    inp.mkdir()
    lab.mkdir()
    shutil.copy(good, inp / "a_good.png")  # sorted first: predicted before the broken file is read
    shutil.copy(root / "masks" / good.name, lab / "a_good.png")
    (inp / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    shutil.copy(root / "masks" / good.name, lab / "broken.png")
    out = tmp_path / "out"
    res = invoke("predict", "--input", inp, "--labels", lab, "--out", out)
    _fails_cleanly(res, "broken.png")
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "lab"]  # the staging folder is gone too
    out.mkdir()
    (out / "a_good.png").write_bytes(b"earlier result")
    res = invoke("predict", "--input", inp, "--labels", lab, "--out", out)
    _fails_cleanly(res, "broken.png")
    assert (out / "a_good.png").read_bytes() == b"earlier result"  # kept until a complete new set replaces it


def test_label_shape_mismatch(tmp_path: Path, data_dir: Path):
    from PIL import Image

    root = data_dir / "prostate_mri_2d"
    img = next((root / "images").rglob("*.png"))
    inp, lab = tmp_path / "in", tmp_path / "lab"
    inp.mkdir()
    lab.mkdir()
    shutil.copy(img, inp / img.name)
    Image.fromarray(np.zeros((50, 60), np.uint8)).save(lab / img.name)
    res = invoke("predict", "--input", inp, "--labels", lab, "--out", tmp_path / "o")
    _fails_cleanly(res, img.name, "shape")


def test_prompt_file_box_outside_image(tmp_path: Path, data_dir: Path):
    img = next((data_dir / "prostate_mri_2d" / "images").rglob("*.png"))
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps({img.name: [{"box": [10, 10, 5000, 5000], "class": 1}]}))
    out = tmp_path / "o"
    res = invoke("predict", "--input", img, "--prompts", prompts, "--out", out)
    _fails_cleanly(res)
    assert not out.exists() or not any(out.iterdir())


def test_prompt_file_predicts(tmp_path: Path, data_dir: Path):
    img = next((data_dir / "prostate_mri_2d" / "images").rglob("*.png"))
    prompts = tmp_path / "prompts.csv"
    prompts.write_text(f"image,class,x0,y0,x1,y1\n{img.name},1,150,150,250,250\n")
    res = invoke("predict", "--input", img, "--prompts", prompts, "--out", tmp_path / "o")
    assert res.exit_code == 0, res.output
    assert (tmp_path / "o" / img.name).is_file()


def test_labels_required_and_wrong_checkpoint(tmp_path: Path, data_dir: Path):
    import torch

    img = next((data_dir / "prostate_mri_2d" / "images").rglob("*.png"))
    res = invoke("predict", "--input", img, "--out", tmp_path / "o")
    _fails_cleanly(res, "--labels")
    ckpt = tmp_path / "other.pth"
    torch.save({"model": {"backbone.conv.weight": torch.zeros(3, 3)}}, ckpt)
    res = invoke("predict", "--input", img, "--labels", img, "--out", tmp_path / "o", "--checkpoint", ckpt)
    _fails_cleanly(res, "other.pth")


def test_evaluate_shape_mismatch(tmp_path: Path):
    from PIL import Image

    (tmp_path / "p").mkdir()
    (tmp_path / "g").mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "p" / "a.png")
    Image.fromarray(np.ones((9, 8), np.uint8)).save(tmp_path / "g" / "a.png")
    res = invoke("evaluate", "--pred", tmp_path / "p", "--gt", tmp_path / "g", "--out", tmp_path / "e")
    _fails_cleanly(res, "a.png")
    assert not (tmp_path / "e" / "per_case.csv").exists()
