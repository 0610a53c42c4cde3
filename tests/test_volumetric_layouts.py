"""Published 3D checkpoint layouts load into MONAI Swin UNETR / DynUNet (round trip from the architecture)."""

from __future__ import annotations

import functools

import pytest
import torch

from medadapt.errors import MedadaptError
from medadapt.models.volumetric import build_volumetric

TINY = {"feature_size": 12, "depths": (1, 1, 1, 1), "num_heads": (1, 1, 1, 1)}


def _source(out_channels: int = 3) -> dict[str, torch.Tensor]:
    """MONAI-named weights with distinct random values (so a wrong mapping shows)."""
    return {k: v.clone() for k, v in _cached_source(out_channels).items()}


@functools.cache
def _cached_source(out_channels: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(out_channels)
    model = build_volumetric("swinunetr", out_channels, **TINY)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_()
    sd = {k.removeprefix("backbone."): v.clone() for k, v in model.state_dict().items()}
    sd = {("out." + k.removeprefix("head.") if k.startswith("head.") else k): v for k, v in sd.items()}
    return sd


def _monai_ssl(sd):
    """model_swinvit.pt: encoder only, 'module.' prefix, mlp.fc1/fc2, SSL heads beside."""
    out = {}
    for k, v in sd.items():
        if k.startswith("swinViT."):
            k = "module." + k.removeprefix("swinViT.")
            out[k.replace("mlp.linear1", "mlp.fc1").replace("mlp.linear2", "mlp.fc2")] = v
    out["module.rotation_head.weight"] = torch.randn(4, 192)
    out["module.contrastive_head.weight"] = torch.randn(512, 192)
    out["module.convTrans3d.weight"] = torch.randn(192, 1, 1, 1, 1)
    return {"state_dict": out}


def _universal(sd, *, swin_vit: bool, word: bool):
    """CLIP-driven / FSEFT / SuPreM: {'net': {'module.backbone.<...>', 'module.controller...'}}."""
    net = {}
    for k, v in sd.items():
        if k.startswith("out."):
            continue  # the universal backbone returns features; no 1x1x1 out block
        if swin_vit:
            k = k.replace("swinViT.", "swin_vit.")
        net["module.backbone." + k] = v
    net["module.precls_conv.0.weight"] = torch.randn(12)
    net["module.precls_conv.2.weight"] = torch.randn(8, 12, 1, 1, 1)
    net["module.GAP.3.weight"] = torch.randn(256, 192, 1, 1, 1)
    net["module.controller.weight"] = torch.randn(153, 512, 1, 1, 1)
    if word:
        net["module.organ_embedding"] = torch.randn(32, 512)
        net["module.text_to_vision.weight"] = torch.randn(256, 512)
    else:
        net["module.organ_embedding.weight"] = torch.randn(25, 256)
    return {"net": net, "epoch": 2100, "optimizer": {}}


def _check_loaded(model, sd, prefix_filter=lambda k: True):
    own = {k.removeprefix("backbone."): v for k, v in model.state_dict().items() if k.startswith("backbone.")}
    compared = 0
    for k, v in own.items():
        if prefix_filter(k) and k in sd:
            assert torch.equal(v, sd[k]), k
            compared += 1
    return compared


def test_monai_ssl_layout_matches_monai_load_from(tmp_path):
    sd = _source()
    ckpt = _monai_ssl(sd)
    torch.save(ckpt, tmp_path / "model_swinvit.pt")
    model = build_volumetric("swinunetr", 2, checkpoint=tmp_path / "model_swinvit.pt", **TINY)
    rep = model.load_report
    assert rep.layout == "monai-ssl"
    assert _check_loaded(model, sd, lambda k: k.startswith("swinViT.")) == sum(
        k.startswith("swinViT.") for k in sd
    )
    assert {"rotation_head.weight", "contrastive_head.weight", "convTrans3d.weight"} <= set(rep.unexpected)
    assert any(k.startswith("decoder1.") for k in rep.missing)  # the SSL file has no decoder
    # Independent oracle: MONAI's own loader for this file format.
    from monai.networks.nets import SwinUNETR

    ref = SwinUNETR(in_channels=1, out_channels=2, **TINY)
    ref.load_from(ckpt)
    for k, v in ref.swinViT.state_dict().items():
        assert torch.equal(model.backbone.swinViT.state_dict()[k], v), k


def test_full_swinunetr_layout_round_trip(tmp_path):
    sd = _source(out_channels=3)
    torch.save({"epoch": 5000, "best_acc": 0.8, "state_dict": sd}, tmp_path / "btcv.pt")
    model = build_volumetric("swinunetr", 3, checkpoint=tmp_path / "btcv.pt", **TINY)
    rep = model.load_report
    assert rep.layout == "swinunetr"
    assert rep.missing == [] and rep.unexpected == [] and rep.dropped == []
    assert _check_loaded(model, sd) == len(sd) - 2
    assert torch.equal(model.head.conv.conv.weight, sd["out.conv.conv.weight"])


def test_other_class_count_keeps_pretrained_head(tmp_path):
    sd = _source(out_channels=3)
    torch.save({"state_dict": sd}, tmp_path / "btcv.pt")
    model = build_volumetric("swinunetr", 2, checkpoint=tmp_path / "btcv.pt", **TINY)
    rep = model.load_report
    assert len(rep.dropped) == 2 and all(m.startswith("out.conv.conv") for m in rep.dropped)
    assert torch.equal(rep.pretrained_head["weight"], sd["out.conv.conv.weight"])
    assert torch.equal(rep.pretrained_head["bias"], sd["out.conv.conv.bias"])


@pytest.mark.parametrize("swin_vit,word", [(True, True), (False, False)], ids=["clip-driven-fseft", "suprem"])
def test_universal_layouts(tmp_path, swin_vit, word):
    sd = _source()
    torch.save(_universal(sd, swin_vit=swin_vit, word=word), tmp_path / "universal.pth")
    model = build_volumetric("swinunetr", 2, checkpoint=tmp_path / "universal.pth", **TINY)
    rep = model.load_report
    assert rep.layout == "universal"
    assert rep.unexpected == []
    assert rep.missing == ["out.conv.conv.bias", "out.conv.conv.weight"]
    assert _check_loaded(model, sd) == len(sd) - 2
    assert "controller.weight" in rep.extras and "GAP.3.weight" in rep.extras
    assert ("organ_embedding" if word else "organ_embedding.weight") in rep.extras


def test_fseft_classifier_name_maps_to_out(tmp_path):
    sd = _source(out_channels=3)
    net = {"module.backbone." + k.replace("out.conv.conv.", "classifier."): v for k, v in sd.items()}
    torch.save({"net": net}, tmp_path / "fseft.pth")
    model = build_volumetric("swinunetr", 3, checkpoint=tmp_path / "fseft.pth", **TINY)
    assert model.load_report.missing == []
    assert torch.equal(model.head.conv.conv.weight, sd["out.conv.conv.weight"])


def test_dynunet_dataparallel_state_dict(tmp_path):
    torch.manual_seed(1)
    src = build_volumetric("unet3d", 2, strides=[1, 2, 2], filters=[4, 8, 8])
    with torch.no_grad():
        for p in src.parameters():
            p.normal_()
    sd = {k.removeprefix("backbone."): v for k, v in src.state_dict().items() if k.startswith("backbone.")}
    sd.update(
        {
            "output_block." + k.removeprefix("head."): v
            for k, v in src.state_dict().items()
            if k.startswith("head.")
        }
    )
    torch.save({"module." + k: v for k, v in sd.items()}, tmp_path / "dynunet.pt")
    model = build_volumetric(
        "unet3d", 2, strides=[1, 2, 2], filters=[4, 8, 8], checkpoint=tmp_path / "dynunet.pt"
    )
    assert model.load_report.missing == [] and model.load_report.unexpected == []
    x = torch.randn(1, 1, 16, 16, 16)
    src.eval(), model.eval()
    assert torch.allclose(model(x), src(x))


def test_nothing_matching_is_a_user_error(tmp_path):
    # A SuPreM U-Net (Models Genesis UNet3D) file: none of its names exist in MONAI's networks.
    torch.save(
        {"net": {"module.backbone.down_tr64.ops.0.conv1.weight": torch.randn(32, 1, 3, 3, 3)}},
        tmp_path / "u.pth",
    )
    with pytest.raises(MedadaptError, match="no tensor of the checkpoint matches"):
        build_volumetric("swinunetr", 2, checkpoint=tmp_path / "u.pth", **TINY)
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(MedadaptError, match="not a readable PyTorch checkpoint"):
        build_volumetric("swinunetr", 2, checkpoint=tmp_path / "bad.pt", **TINY)
    with pytest.raises(MedadaptError, match="not found"):
        build_volumetric("swinunetr", 2, checkpoint=tmp_path / "missing.pt", **TINY)
    with pytest.raises(MedadaptError, match="unknown volumetric model"):
        build_volumetric("vnet", 2)


@pytest.mark.slow
def test_real_size_swinunetr_builds_and_runs():
    model = build_volumetric("swinunetr", 14)
    assert model.feature_channels == 48 and model.bottleneck_channels == 768
    assert 62_000_000 < sum(p.numel() for p in model.parameters()) < 63_000_000
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(1, 1, 96, 96, 96))
    assert out.shape == (1, 14, 96, 96, 96)
