"""Each recipe on the 3D segmenters trains exactly the parameters it names (counted)."""

from __future__ import annotations

import pytest
import torch

from medadapt.adapt.recipes import apply_recipe
from medadapt.engine.volumetric_task import volumetric_recipe
from medadapt.errors import MedadaptError
from medadapt.models.volumetric import build_volumetric

TINY = {"feature_size": 12, "depths": (1, 1, 1, 1), "num_heads": (1, 1, 1, 1)}
DIMS = [12, 24, 48, 96]  # Swin stage widths for feature_size 12, one block each


@pytest.fixture(scope="module")
def fresh():
    torch.manual_seed(0)
    template = build_volumetric("swinunetr", 2, **TINY)
    state = template.state_dict()

    def make():
        model = build_volumetric("swinunetr", 2, **TINY)
        model.load_state_dict(state)
        return model

    return make


def _counts(model, names):
    params = dict(model.named_parameters())
    return sum(params[n].numel() for n in names)


def _under(model, roots):
    return {n for n, _ in model.named_parameters() if any(n == r or n.startswith(r + ".") for r in roots)}


def test_head_and_decoder_recipes(fresh):
    model = fresh()
    applied = apply_recipe(model, volumetric_recipe(model, "head"))
    assert set(applied.trainable_names) == {"head.conv.conv.weight", "head.conv.conv.bias"}
    assert applied.trainable == 2 * 12 + 2

    model = fresh()
    applied = apply_recipe(model, volumetric_recipe(model, "decoder"))
    expected = _under(model, [*model.decoder_attrs, "head"])
    assert set(applied.trainable_names) == expected
    assert not any(n.startswith("backbone.swinViT.") for n in applied.trainable_names)
    assert applied.trainable == _counts(model, expected)


def test_encoder_lora_counts_q_and_v_only(fresh):
    model = fresh()
    rank = 4
    applied = apply_recipe(model, volumetric_recipe(model, "encoder-lora", lora_rank=rank))
    # q and v of each fused qkv (dim d): A [r, d] + B [d, r], twice.
    assert applied.trainable == sum(2 * rank * (d + d) for d in DIMS)
    assert all(".attn.qkv.lora_" in n for n in applied.trainable_names)
    assert len(applied.injected) == 4

    model = fresh()
    applied = apply_recipe(
        model, volumetric_recipe(model, "encoder-lora", lora_rank=rank, also_train=["head"])
    )
    assert applied.trainable == sum(4 * rank * d for d in DIMS) + 26


def test_peft_lora_on_conv3d_and_adapters(fresh):
    model = fresh()
    applied = apply_recipe(
        model, volumetric_recipe(model, "peft-lora", target_modules=["decoder1.conv_block.conv1.conv"])
    )
    # Conv3d(24 -> 12, k=3): lora_A is a Conv3d(24 -> r, k=3), lora_B a Conv3d(r -> 12, k=1).
    assert applied.trainable == 24 * 4 * 27 + 4 * 12
    assert all("decoder1.conv_block.conv1.conv.lora_" in n for n in applied.trainable_names)

    model = fresh()
    applied = apply_recipe(model, volumetric_recipe(model, "encoder-adapter"))
    assert applied.trainable_names and all(
        n.startswith("backbone.swinViT.") and ".adapter." in n for n in applied.trainable_names
    )
    # two bottleneck adapters per block (after attention, beside the MLP): fc1 d->d/4, fc2 d/4->d
    assert applied.trainable == sum(2 * (2 * d * (d // 4) + d // 4 + d) for d in DIMS)


def test_bias_norm_full(fresh):
    model = fresh()
    applied = apply_recipe(model, volumetric_recipe(model, "bias"))
    assert all(n.endswith(".bias") for n in applied.trainable_names)
    assert applied.trainable == _counts(
        model, [n for n, _ in model.named_parameters() if n.endswith(".bias")]
    )

    model = fresh()
    applied = apply_recipe(model, volumetric_recipe(model, "norm"))
    assert all(
        ".norm" in n for n in applied.trainable_names
    )  # Swin LayerNorms (decoder InstanceNorms have none)
    # per stage: norm1 + norm2 of its block (2 x 2d), the patch-merging norm over 8d channels (2 x 8d)
    assert applied.trainable == sum(2 * 2 * d + 2 * 8 * d for d in DIMS)

    model = fresh()
    applied = apply_recipe(model, volumetric_recipe(model, "full"))
    assert applied.trainable == sum(p.numel() for p in model.parameters())


def test_transformer_decoder_recipes_refuse_a_conv_decoder(fresh):
    model = fresh()
    with pytest.raises(MedadaptError):
        apply_recipe(model, volumetric_recipe(model, "decoder-lora"))
