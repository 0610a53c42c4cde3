"""Adapter artifacts: adapter-only files, reload onto a fresh base, merge to official keys."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from torch import nn

from medadapt.adapt import (
    RecipeConfig,
    apply_recipe,
    load_adapter,
    merge_adapter,
    merged_state_dict,
    read_adapter_meta,
    save_adapter,
)
from medadapt.adapt.adapter import SerialAdapter
from medadapt.errors import MedadaptError
from test_adapt_models import litemedsam, sam_forward, sam_inputs, small_vit_sam

BASE = {"model": "test-sam", "checkpoint_sha256": "0" * 64, "image_size": 64}


def _train_a_bit(model: nn.Module, seed: int = 3) -> None:
    """Stand-in for training: move every trainable tensor, and BatchNorm statistics in train mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn(p.shape, generator=g))
        model.train()
        sam_forward(model, sam_inputs(model, seed=seed))
    model.eval()


def _cfg(name: str) -> RecipeConfig:
    return RecipeConfig(name=name, lora_rank=4, target_modules=["qkv", "lin1"] if name == "peft-lora" else None)


@pytest.mark.parametrize("name,build", [
    ("lora", small_vit_sam), ("adapter", small_vit_sam), ("peft-lora", small_vit_sam), ("decoder", small_vit_sam),
    ("bias", small_vit_sam), ("norm", lambda: litemedsam(32)), ("encoder-lora", lambda: litemedsam(32)),
])
def test_save_then_load_onto_a_fresh_base_reproduces_outputs(tmp_path, name, build):
    model = build()
    applied = apply_recipe(model, _cfg(name))
    _train_a_bit(model)
    inputs = sam_inputs(model)
    with torch.no_grad():
        y = sam_forward(model, inputs)
        assert not torch.equal(y, sam_forward(build(), inputs))  # the "training" did something
    save_adapter(model, tmp_path, recipe=_cfg(name), base=BASE, extra={"dice": 0.5})

    meta = read_adapter_meta(tmp_path)
    with safe_open(str(tmp_path / "adapter.safetensors"), "pt") as f:
        saved = set(f.keys())
    params = {n for n, v in meta["tensors"].items() if v["kind"] == "parameter"}
    assert params == set(applied.trainable_names)
    assert saved == set(meta["tensors"])
    assert meta["params"]["trainable"] == applied.trainable and meta["extra"] == {"dice": 0.5}
    if name == "norm":  # trained BatchNorm layers carry their running statistics
        assert any(n.endswith("running_mean") for n in saved - params)
    else:
        assert saved == params

    fresh = load_adapter(build(), tmp_path, base=BASE)
    with torch.no_grad():
        assert torch.equal(sam_forward(fresh, inputs), y)


def test_lora_artifact_on_litemedsam_is_small(tmp_path, capsys):
    sizes = {}
    for name in ("decoder-lora", "lora", "adapter", "decoder"):
        model = litemedsam(256)
        apply_recipe(model, _cfg(name))
        save_adapter(model, tmp_path / name, recipe=_cfg(name), base=BASE)
        sizes[name] = (tmp_path / name / "adapter.safetensors").stat().st_size
        assert read_adapter_meta(tmp_path / name)["files"]["adapter.safetensors"]["bytes"] == sizes[name]
    with capsys.disabled():
        print("\nLiteMedSAM adapter.safetensors bytes:", sizes)
    assert sizes["lora"] < 400_000 and sizes["decoder-lora"] < 120_000  # ~53k / ~24k float32 elements
    assert sizes["decoder"] > 16_000_000  # a full decoder, for scale


def test_merge_gives_official_keys_and_same_outputs(reference):
    manifest = json.loads((reference / "litemedsam.manifest.json").read_text())
    model = litemedsam(32)
    apply_recipe(model, _cfg("lora"))
    _train_a_bit(model)
    inputs = sam_inputs(model)
    with torch.no_grad():
        y = sam_forward(model, inputs)
    sd = merged_state_dict(model)
    assert set(sd) == set(manifest["keys"])
    assert any("lora_" in k for k in model.state_dict())  # merged_state_dict left the model adapted
    official = litemedsam(32)
    official.load_state_dict(sd)  # strict: exactly the official layout
    with torch.no_grad():
        torch.testing.assert_close(sam_forward(official, inputs), y, rtol=1e-4, atol=1e-4)
    merged = merge_adapter(model)
    assert merged is model and set(model.state_dict()) == set(manifest["keys"])


def test_merge_peft_lora_and_keep_adapters():
    model = small_vit_sam()
    keys = set(model.state_dict())
    apply_recipe(model, _cfg("peft-lora"))
    _train_a_bit(model)
    assert set(merged_state_dict(model)) == keys

    model = small_vit_sam()
    apply_recipe(model, _cfg("adapter"))
    inputs = sam_inputs(model)
    _train_a_bit(model)
    with torch.no_grad():
        y = sam_forward(model, inputs)
        merge_adapter(model)  # adapters cannot be folded: they stay
        assert any(isinstance(m, SerialAdapter) for m in model.modules())
        assert torch.equal(sam_forward(model, inputs), y)


def test_load_errors(tmp_path):
    model = small_vit_sam()
    apply_recipe(model, _cfg("lora"))
    _train_a_bit(model)
    save_adapter(model, tmp_path / "a", recipe=_cfg("lora"), base=BASE)

    with pytest.raises(MedadaptError, match="does not fit this base model.*missing"):
        load_adapter(litemedsam(32), tmp_path / "a")  # another architecture
    with pytest.raises(MedadaptError, match="different base model: checkpoint_sha256"):
        load_adapter(small_vit_sam(), tmp_path / "a", base={**BASE, "checkpoint_sha256": "1" * 64})
    with pytest.raises(MedadaptError, match="adapter.json is missing"):
        load_adapter(small_vit_sam(), tmp_path)

    other = small_vit_sam()
    apply_recipe(other, _cfg("decoder-lora"))
    save_adapter(other, tmp_path / "b", recipe=_cfg("decoder-lora"), base=BASE)
    (tmp_path / "a" / "adapter.safetensors").write_bytes((tmp_path / "b" / "adapter.safetensors").read_bytes())
    with pytest.raises(MedadaptError, match="checksum differs"):
        load_adapter(small_vit_sam(), tmp_path / "a")

    meta = json.loads((tmp_path / "b" / "adapter.json").read_text())
    meta["recipe"]["lora_rank"] = 8  # rank differs from the saved tensors
    (tmp_path / "b" / "adapter.json").write_text(json.dumps(meta))
    with pytest.raises(MedadaptError, match="another shape"):
        load_adapter(small_vit_sam(), tmp_path / "b")
    meta["recipe"]["bogus"] = 1
    (tmp_path / "b" / "adapter.json").write_text(json.dumps(meta))
    with pytest.raises(MedadaptError, match="no valid recipe"):
        load_adapter(small_vit_sam(), tmp_path / "b")


def test_save_refuses_a_model_without_trainable_tensors(tmp_path):
    model = small_vit_sam().requires_grad_(False)
    with pytest.raises(MedadaptError, match="no trainable tensors"):
        save_adapter(model, tmp_path, recipe=_cfg("lora"), base=BASE)
    assert not any(tmp_path.iterdir())


LITEMEDSAM_SHA256 = "79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76"


@pytest.mark.slow
def test_real_litemedsam_lora_reproduces_the_official_outputs_and_roundtrips(reference, tmp_path):
    """With the published weights: zero-init LoRA keeps the official box output; a trained
    adapter reloads exactly; its merged weights load into the official layout."""
    import numpy as np

    from medadapt.models.registry import build_model

    golden = np.load(reference / "litemedsam.golden.npz")
    image = torch.from_numpy(golden["image"])
    box = torch.from_numpy(golden["box"]).reshape(1, 4)
    ref = torch.from_numpy(golden["box_low_res_masks"])
    base = {"model": "litemedsam", "checkpoint_sha256": LITEMEDSAM_SHA256, "image_size": 256}

    def run(m: nn.Module) -> torch.Tensor:
        with torch.no_grad():
            return m(image, boxes=box, multimask_output=False)[0]

    model = build_model("litemedsam")
    apply_recipe(model, _cfg("lora"))
    out = run(model)
    assert (out - ref).abs().max() <= 1e-4 * ref.abs().max()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.02)
    tuned = run(model)
    assert (tuned - ref).abs().max() > 1e-2 * ref.abs().max()
    save_adapter(model, tmp_path, recipe=_cfg("lora"), base=base)
    assert torch.equal(run(load_adapter(build_model("litemedsam"), tmp_path, base=base)), tuned)
    official = build_model("litemedsam", pretrained=False)
    official.load_state_dict(merged_state_dict(model))
    official.eval()
    torch.testing.assert_close(run(official), tuned, rtol=1e-4, atol=1e-3 * float(tuned.abs().max()))
