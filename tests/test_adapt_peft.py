"""peft LoRA on named Linear, Conv2d and Conv3d modules, and peft merging."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from medadapt.adapt.peft_lora import apply_peft_lora, merge_peft_lora, peft_lora_layers
from medadapt.errors import MedadaptError
from test_adapt_models import small_vit_sam, swin_unetr


def _perturb_lora(model: nn.Module) -> None:
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)


def _roundtrip(model: nn.Module, forward, targets, expected_kinds: set[type]) -> None:
    """Zero-init equality, LoRA takes effect, merge reproduces it and restores the base keys."""
    keys = {k: v.shape for k, v in model.state_dict().items()}
    with torch.no_grad():
        y0 = forward(model)
    names = apply_peft_lora(model, targets, rank=2)
    assert names
    kinds = {type(model.get_submodule(n).get_base_layer()) for n in names}
    assert kinds == expected_kinds
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    with torch.no_grad():
        assert torch.equal(forward(model), y0)
        _perturb_lora(model)
        y1 = forward(model)
    assert not torch.allclose(y1, y0)
    assert merge_peft_lora(model) == names
    assert peft_lora_layers(model) == [] and not hasattr(model, "peft_config")
    assert {k: v.shape for k, v in model.state_dict().items()} == keys
    with torch.no_grad():
        torch.testing.assert_close(forward(model), y1, rtol=1e-4, atol=1e-5)


def test_peft_lora_linear_by_suffix():
    model = small_vit_sam()
    x = torch.randn(1, 3, 64, 64)
    _roundtrip(model, lambda m: m.image_encoder(x), ["qkv", "lin1"], {nn.Linear})


def test_peft_lora_conv2d_by_regex():
    model = small_vit_sam()
    x = torch.randn(1, 3, 64, 64)
    _roundtrip(model, lambda m: m.image_encoder(x), r"image_encoder\.(patch_embed\.proj|neck\.[02])", {nn.Conv2d})


def test_peft_lora_conv3d_on_swin_unetr():
    model = swin_unetr()
    x = torch.randn(1, 1, 64, 64, 64)
    targets = r"(encoder1\.layer\.conv1|decoder1\.conv_block\.conv2|out\.conv)\.conv"
    _roundtrip(model, lambda m: m(x), targets, {nn.Conv3d})


def test_peft_lora_errors():
    model = small_vit_sam()
    with pytest.raises(MedadaptError, match="peft could not apply LoRA"):
        apply_peft_lora(model, ["no_such_layer"])
    with pytest.raises(MedadaptError, match="target modules"):
        apply_peft_lora(model, [])
    apply_peft_lora(model, ["qkv"])
    with pytest.raises(MedadaptError, match="already has peft LoRA"):
        apply_peft_lora(model, ["proj"])


def test_peft_lora_pointwise_conv3d_merges():
    # peft 0.21 crashes merging Conv3d kernels that start (1, 1): merged here with the general formula
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv3d(3, 4, (1, 1, 3), padding=(0, 0, 1)), nn.ReLU(), nn.Conv3d(4, 2, 1)).eval()
    x = torch.randn(2, 3, 5, 6, 7)
    _roundtrip(model, lambda m: m(x), ["0", "2"], {nn.Conv3d})


def test_peft_lora_refuses_dilated_convolutions():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=2, dilation=2), nn.Conv2d(4, 4, 3, padding=1)).eval()
    keys = set(model.state_dict())
    with pytest.raises(MedadaptError, match="dilated"):
        apply_peft_lora(model, ["0", "1"])
    assert set(model.state_dict()) == keys and not peft_lora_layers(model)  # left as it was
