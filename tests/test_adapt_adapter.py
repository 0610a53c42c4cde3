"""Bottleneck adapters: placement, zero-init equality, SAM encoders, decoder, MONAI Swin."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from medadapt.adapt.adapter import (
    Adapter,
    ParallelAdapter,
    SerialAdapter,
    apply_decoder_adapters,
    apply_encoder_adapters,
    apply_mlp_adapters,
)
from medadapt.errors import MedadaptError
from test_adapt_models import litemedsam, sam_forward, sam_inputs, small_vit_sam, swin_unetr


def _perturb_adapters(model: nn.Module) -> None:
    with torch.no_grad():
        for n, p in model.named_parameters():
            if ".adapter.fc2." in n:
                p.normal_(0, 0.1)


def test_adapter_starts_as_identity_or_zero():
    x = torch.randn(2, 3, 16)
    a = Adapter(16, ratio=0.25)
    assert a.fc1.out_features == 4
    assert torch.equal(a(x), x)
    assert torch.equal(Adapter(16, skip=False)(x), torch.zeros_like(x))
    with torch.no_grad():
        a.fc2.weight.normal_()
    assert not torch.allclose(a(x), x)


@pytest.mark.parametrize("build", [small_vit_sam, lambda: litemedsam(32)], ids=["vit", "tinyvit"])
def test_encoder_adapters_start_equal_and_then_act(build):
    model = build()
    inputs = sam_inputs(model)
    with torch.no_grad():
        y0 = sam_forward(model, inputs)
    names = apply_encoder_adapters(model)
    n_blocks = 4 if build is small_vit_sam else 10
    assert len(names) == 2 * n_blocks
    assert all(isinstance(model.get_submodule(n), SerialAdapter) for n in names if n.endswith(".attn"))
    assert all(isinstance(model.get_submodule(n), ParallelAdapter) for n in names if n.endswith(".mlp"))
    assert not any(m.training for m in model.modules())  # eval-mode model stays in eval mode
    with torch.no_grad():
        assert torch.equal(sam_forward(model, inputs), y0)
        _perturb_adapters(model)
        assert not torch.allclose(sam_forward(model, inputs), y0)


def test_encoder_adapter_placement_in_a_vit_block():
    model = small_vit_sam()
    blk = model.image_encoder.blocks[0]
    attn, mlp = blk.attn, blk.mlp
    apply_encoder_adapters(model, ratio=0.5, scale=0.5, blocks=[0])
    assert blk.attn.base_layer is attn and blk.mlp.base_layer is mlp
    assert blk.attn.num_heads == attn.num_heads  # attributes read through the wrapper
    _perturb_adapters(model)
    x = torch.randn(1, 4, 4, 64)
    with torch.no_grad():
        a = attn(x)
        torch.testing.assert_close(blk.attn(x), a + blk.attn.adapter.fc2(nn.functional.gelu(blk.attn.adapter.fc1(a))))
        ad = blk.mlp.adapter
        torch.testing.assert_close(blk.mlp(x), mlp(x) + 0.5 * ad.fc2(nn.functional.gelu(ad.fc1(x))))


def test_decoder_adapters_wrap_each_sublayer_of_both_blocks():
    model = small_vit_sam()
    inputs = sam_inputs(model)
    with torch.no_grad():
        y0 = sam_forward(model, inputs)
    names = apply_decoder_adapters(model)
    expected = [f"mask_decoder.transformer.layers.{i}.{s}" for i in range(2)
                for s in ("self_attn", "cross_attn_token_to_image", "mlp", "cross_attn_image_to_token")]
    assert sorted(names) == sorted(expected)
    n_params = sum(p.numel() for n, p in model.named_parameters() if ".adapter." in n)
    assert n_params == 8 * (2 * 256 * 64 + 64 + 256)
    with torch.no_grad():
        assert torch.equal(sam_forward(model, inputs), y0)
        _perturb_adapters(model)
        assert not torch.allclose(sam_forward(model, inputs), y0)


def test_adaptformer_on_monai_swin_unetr():
    model = swin_unetr()
    x = torch.randn(1, 1, 32, 32, 32)

    def forward(m):
        return torch.cat([h.flatten() for h in m.swinViT(x)])  # the encoder's hidden states

    with torch.no_grad():
        y0 = forward(model)
    names = apply_mlp_adapters(model, root="swinViT", ratio=0.25, scale=0.1)
    assert names == [f"swinViT.layers{i}.0.blocks.0.mlp" for i in range(1, 5)]
    assert isinstance(model.swinViT.layers1[0].blocks[0].mlp.base_layer.linear1, nn.Linear)
    with torch.no_grad():
        assert torch.equal(forward(model), y0)
        _perturb_adapters(model)
        assert not torch.allclose(forward(model), y0)


def test_adapter_errors():
    model = small_vit_sam()
    apply_encoder_adapters(model, blocks=[1])
    with pytest.raises(MedadaptError, match="already has adapters"):
        apply_encoder_adapters(model, blocks=[1])
    with pytest.raises(MedadaptError, match="no transformer blocks"):
        apply_encoder_adapters(model, root="prompt_encoder")
    with pytest.raises(MedadaptError, match="out of range"):
        apply_encoder_adapters(model, blocks=[4])
