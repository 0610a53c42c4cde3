"""Per-modality adapters (DAFT): modality detection, routing, one shared base model, fit-modalities."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from medadapt.adapt.artifact import load_adapter, save_adapter
from medadapt.adapt.recipes import RecipeConfig, apply_recipe
from medadapt.cli.main import app
from medadapt.data.datasets import CaseRef
from medadapt.errors import MedadaptError
from medadapt.infer.modality_bank import (
    BANK_FILE,
    ModalityBankPredictor,
    canonical_modality,
    case_modality,
    load_bank_predictor,
    modality_from_filename,
)
from medadapt.models.registry import build_model
from medadapt.run import RunFolder

runner = CliRunner()


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def _cli(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def test_modality_names():
    assert canonical_modality("MRI") == "mr" and canonical_modality("X-ray") == "xray"
    assert canonical_modality("auto") is None and canonical_modality("rgb") is None
    assert modality_from_filename("CT_Abd_FLARE22_Tr_0001.npz") == "ct"
    assert modality_from_filename("3D_MR_totalseg_01.npz") == "mr"
    assert modality_from_filename("2DBox_XRay_demo.npz") == "xray"
    assert modality_from_filename("US_case.png") == "us"
    assert modality_from_filename("hippocampus_001.nii.gz") is None  # not a modality token
    ref = CaseRef("a", Path("CT_a.png"), None, "mr", "a", False)
    assert case_modality(ref) == "mr"  # declared beats the file name
    assert case_modality(CaseRef("a", Path("CT_a.png"), None, "rgb", "a", False)) == "ct"


def _adapter(run: Path, recipe: str, seed: int, **extra) -> None:
    torch.manual_seed(seed)
    model = build_model("litemedsam", image_size=64)
    cfg = RecipeConfig(name=recipe)
    apply_recipe(model, cfg)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)
    save_adapter(model, run / "adapter", recipe=cfg, base={"model": "litemedsam"}, extra=extra)


def _bank(root: Path, ct_axis: int | None = None, mr_axis: int | None = None) -> None:
    _adapter(root / "ct", "bias", 0, slice_axis=ct_axis)  # tunes base tensors in place
    _adapter(root / "mr", "decoder-lora", 1, slice_axis=mr_axis)  # adds modules
    (root / BANK_FILE).write_text(json.dumps({
        "format": "medadapt.modality_bank", "format_version": 1, "model": "litemedsam", "default": None,
        "modalities": {"ct": {"run": "ct"}, "mr": {"run": "mr"}},
    }))


def test_routing_selects_adapter_and_shares_base(tmp_path: Path):
    _bank(tmp_path / "bank")
    pred = load_bank_predictor(tmp_path / "bank")
    assert isinstance(pred, ModalityBankPredictor) and set(pred.models) == {"ct", "mr"}
    emb = torch.randn(1, 256, 64, 64)
    box = torch.tensor([[40.0, 50.0, 160.0, 170.0]])
    fresh = build_model("litemedsam")
    with torch.no_grad():
        base_logits = fresh.decode(emb, boxes=box)[0]
        for mod in ("ct", "mr"):
            assert pred.select(mod) == mod
            want = load_adapter(build_model("litemedsam"), tmp_path / "bank" / mod / "adapter").eval()
            got = pred.model.decode(emb, boxes=box)[0]
            assert torch.allclose(got, want.decode(emb, boxes=box)[0], atol=1e-5), mod
            assert (got - base_logits).abs().max() > 1e-3  # the adapter is in effect
    # One base: frozen encoder weights are the same tensors in both models, and were not changed.
    w_ct = pred.models["ct"].image_encoder.neck[0].weight
    assert w_ct.data_ptr() == pred.models["mr"].image_encoder.neck[0].weight.data_ptr()
    assert torch.equal(w_ct, fresh.image_encoder.neck[0].weight)
    # The in-place tuned decoder biases of "ct" are private to it.
    name = "mask_decoder.iou_prediction_head.layers.0.bias"
    b_ct, b_mr = pred.models["ct"].state_dict()[name], pred.models["mr"].state_dict()[name]
    assert not torch.equal(b_ct, b_mr) and torch.equal(b_mr, fresh.state_dict()[name])
    # File-name routing and unknown modalities.
    assert pred.select_for_file(Path("MR_brain.png")) == "mr"
    assert pred.select_for_file(Path("anything.png"), "ct") == "ct"
    with pytest.raises(MedadaptError, match="no adapter for modality 'us'"):
        pred.select_for_file(Path("US_x.png"))
    with pytest.raises(MedadaptError, match="unknown"):
        pred.select_for_file(Path("scan.png"))
    assert pred.slice_axis is None  # both adapters cut volumes by spacing


def test_bank_cuts_volumes_along_its_adapters_axis(tmp_path: Path):
    _bank(tmp_path / "same", ct_axis=0, mr_axis=0)
    assert load_bank_predictor(tmp_path / "same").slice_axis == 0
    _bank(tmp_path / "mixed", ct_axis=0, mr_axis=None)
    with pytest.raises(MedadaptError, match=r"different axes \(ct: 0, mr: by spacing\)(?s:.*)--set slice_axis=N"):
        load_bank_predictor(tmp_path / "mixed")


def _png_csv(root: Path, rows: list[tuple[str, str | None]]) -> Path:
    rng = np.random.default_rng(0)
    lines = ["image,mask" + (",modality" if any(m for _, m in rows) else "")]
    for name, mod in rows:
        img = (rng.random((32, 32)) * 60).astype(np.uint8)
        lab = np.zeros((32, 32), np.uint8)
        lab[8:22, 10:24] = 1
        img[lab > 0] += 150
        Image.fromarray(img).save(root / f"{name}.png")
        Image.fromarray(lab).save(root / f"{name}_m.png")
        lines.append(f"{name}.png,{name}_m.png" + (f",{mod}" if mod else ""))
    (root / "data.csv").write_text("\n".join(lines) + "\n")
    return root / "data.csv"


def test_fit_modalities_then_predict_routes(tmp_path: Path):
    (tmp_path / "d").mkdir()
    csv = _png_csv(tmp_path / "d", [(f"a{i}", "MRI") for i in range(3)] + [(f"b{i}", "X-ray") for i in range(3)])
    bank = tmp_path / "bank"
    res = _cli("fit-modalities", "--data", csv, "--out", bank, "--shots", 1, "--max-steps", 2, "--batch-size", 1,
               "--method", "decoder-lora", "--no-progress", "--threads", 1)
    assert res.exit_code == 0, res.output
    meta = json.loads((bank / BANK_FILE).read_text())
    assert set(meta["modalities"]) == {"mr", "xray"}
    for mod, entry in meta["modalities"].items():
        assert (bank / mod / "adapter" / "adapter.json").is_file()
        split = json.loads((bank / mod / "split.json").read_text())
        prefix = "a" if mod == "mr" else "b"
        assert all(k.startswith(prefix) for k in split["train"] + split["test"]), (mod, split)
        assert entry["test_cases"] == split["test"]

    from medadapt.infer.cases import PredictOptions, load_case, predict_case
    from medadapt.infer.factory import build_predictor
    from medadapt.io.discovery import Pair

    pred = build_predictor(None, adapter=bank)
    assert isinstance(pred, ModalityBankPredictor)
    case = load_case(Pair("b0", tmp_path / "d" / "b0.png", tmp_path / "d" / "b0_m.png"), PredictOptions())
    with pytest.raises(MedadaptError):  # a plain file name says nothing about its modality
        predict_case(pred, case, PredictOptions())
    seg = predict_case(pred, case, PredictOptions(modality="xray"))
    assert pred.modality == "xray" and seg.shape == (32, 32)


def test_fit_modalities_bad_inputs_exit_2_without_output(tmp_path: Path):
    (tmp_path / "d").mkdir()
    csv = _png_csv(tmp_path / "d", [(f"a{i}", None) for i in range(3)])  # no modality anywhere
    out = tmp_path / "bank"
    res = _cli("fit-modalities", "--data", csv, "--out", out, "--no-progress")
    assert res.exit_code == 2 and "modality" in res.output and not out.exists()
    res = _cli("fit-modalities", "--data", tmp_path / "missing", "--out", out)
    assert res.exit_code == 2 and not out.exists()
    res = _cli("fit-modalities", "--data", csv, "--out", out, "--shots", 0)
    assert res.exit_code == 2 and not out.exists()


def test_auto_mode_bank_chooses_and_applies_post_processing_per_modality(tmp_path: Path):
    """fit-modalities --prompt auto chooses keep-largest-component on each modality's validation
    cases (as `medadapt fit` does); the bank predictor applies each modality's own choice."""
    (tmp_path / "d").mkdir()
    csv = _png_csv(tmp_path / "d", [(f"a{i}", "MRI") for i in range(3)] + [(f"b{i}", "X-ray") for i in range(3)])
    bank = tmp_path / "bank"
    res = _cli("fit-modalities", "--data", csv, "--out", bank, "--shots", 1, "--max-steps", 2, "--batch-size", 1,
               "--method", "decoder-lora", "--prompt", "auto", "--set", "n_val=1", "--no-progress", "--threads", 1)
    assert res.exit_code == 0, res.output
    entries = json.loads((bank / BANK_FILE).read_text())["modalities"]
    for mod in ("mr", "xray"):
        post = RunFolder(bank / mod).read_postprocess()
        assert post is not None, mod  # the choice was made and stored beside the adapter, not in it
        assert entries[mod]["keep_largest"] == post["keep_largest"]
        assert "keep_largest" not in RunFolder(bank / mod).read_adapter_meta()["extra"]
    RunFolder(bank / "mr").write_postprocess([1], {})
    xray_keep = entries["xray"]["keep_largest"]
    from medadapt.infer.factory import build_predictor

    pred = build_predictor(None, adapter=bank)
    pred.select("mr")
    assert pred.keep_largest == [1]
    two = np.zeros((1, 8, 8), np.int64)
    two[0, 0:2, 0:2] = 1
    two[0, 5:8, 5:8] = 1
    assert int((pred.postprocess_auto(two) == 1).sum()) == 9  # the smaller blob is dropped
    pred.select("xray")
    assert pred.keep_largest == xray_keep



def test_fit_modalities_uses_the_frozen_encoder_engine(tmp_path: Path, monkeypatch):
    """`fit-modalities --set encoder_engine=openvino` fills each modality's embedding cache with the
    exported encoder, as `fit` does (the engine comes from deploy, wired in by the pipeline layer)."""
    import medadapt.pipeline.fit as pipeline_fit

    calls = []

    def fake_frozen_encoder(opts):  # stands in for the OpenVINO export: torch encoder, own cache tag
        calls.append(opts.encoder_engine)
        net = build_model(opts.model).eval()
        return "fake-engine", lambda x: net.encode(x)

    monkeypatch.setattr(pipeline_fit, "frozen_encoder", fake_frozen_encoder)
    (tmp_path / "d").mkdir()
    csv = _png_csv(tmp_path / "d", [(f"a{i}", "MRI") for i in range(2)])
    bank = tmp_path / "bank"
    res = _cli("fit-modalities", "--data", csv, "--out", bank, "--shots", 1, "--max-steps", 1, "--batch-size", 1,
               "--method", "decoder", "--set", "n_val=0", "--set", "encoder_engine=openvino", "--no-progress",
               "--threads", 1)
    assert res.exit_code == 0, res.output
    assert calls == ["openvino"]
    assert RunFolder(bank / "mr").read_result()["encoder_engine"] == "fake-engine"
