"""Recipes: exactly the intended parameters train, outputs start equal, one step moves only them."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from medadapt.adapt import RECIPES, RecipeConfig, apply_recipe
from medadapt.adapt.norm import is_norm
from medadapt.errors import MedadaptError
from test_adapt_models import litemedsam, sam_forward, sam_inputs, small_vit_sam, swin_unetr

R = 4  # LoRA rank used below
ENC_DIMS = [128] * 2 + [160] * 6 + [320] * 2  # LiteMedSAM TinyViT attention blocks (layers 1-3)
ENC_BLOCKS = [f"image_encoder.layers.{i}.blocks.{j}" for i, n in ((1, 2), (2, 6), (3, 2)) for j in range(n)]
DEC_BLOCKS = [f"mask_decoder.transformer.layers.{i}" for i in range(2)]
DEC_ATTNS = [f"{b}.{a}" for b in DEC_BLOCKS for a in ("self_attn", "cross_attn_token_to_image",
                                                      "cross_attn_image_to_token")]
DEC_ATTNS.append("mask_decoder.transformer.final_attn_token_to_image")


def _base_params(model: nn.Module) -> dict[str, int]:
    return {n: p.numel() for n, p in model.named_parameters()}


def _adapter_count(dim: int) -> int:
    h = dim // 4
    return 2 * dim * h + h + dim


def expected(name: str, base: dict[str, int], model: nn.Module) -> tuple[set[str], int]:
    """The trainable names and element count each recipe must give on LiteMedSAM, derived from
    the base model's names and the methods' formulas (not from the recipe code)."""
    not_pe = {n: c for n, c in base.items() if not n.startswith("prompt_encoder.")}
    enc_lora = {f"{b}.attn.qkv.lora_{p}" for b in ENC_BLOCKS for p in ("A_q", "B_q", "A_v", "B_v")}
    enc_lora_n = sum(4 * R * d for d in ENC_DIMS)
    dec_lora = {f"{a}.{p}_proj.lora_{m}" for a in DEC_ATTNS for p in "qv" for m in "AB"}
    # self-attention projects 256 -> 256, the cross-attentions 256 -> 128
    dec_lora_n = sum(2 * R * (256 + (256 if a.endswith("self_attn") else 128)) for a in DEC_ATTNS)
    enc_ad = {f"{b}.{s}.adapter.fc{i}.{w}" for b in ENC_BLOCKS for s in ("attn", "mlp") for i in (1, 2)
              for w in ("weight", "bias")}
    enc_ad_n = sum(2 * _adapter_count(d) for d in ENC_DIMS)
    dec_ad = {f"{b}.{s}.adapter.fc{i}.{w}" for b in DEC_BLOCKS
              for s in ("self_attn", "cross_attn_token_to_image", "cross_attn_image_to_token", "mlp")
              for i in (1, 2) for w in ("weight", "bias")}
    dec_ad_n = 8 * _adapter_count(256)
    heads = {n for n in base if n.startswith(("mask_decoder.output_hypernetworks_mlps.",
                                              "mask_decoder.iou_prediction_head."))}
    norm_modules = {m for m, mod in model.named_modules() if is_norm(mod)}
    norms = {n for n in not_pe if n.rpartition(".")[0] in norm_modules}
    peft = {f"{b}.attn.qkv.lora_{m}.default.weight" for b in ENC_BLOCKS for m in "AB"}
    peft_n = sum(R * (d + 3 * d) for d in ENC_DIMS)

    def total(names: set[str]) -> int:
        return sum(base[n] for n in names)

    table = {
        "full": (set(not_pe), total(set(not_pe))),
        "decoder": ({n for n in base if n.startswith("mask_decoder.")},
                    total({n for n in base if n.startswith("mask_decoder.")})),
        "decoder-lora": (dec_lora, dec_lora_n),
        "encoder-lora": (enc_lora, enc_lora_n),
        "lora": (enc_lora | dec_lora, enc_lora_n + dec_lora_n),
        "peft-lora": (peft, peft_n),
        "decoder-adapter": (dec_ad, dec_ad_n),
        "encoder-adapter": (enc_ad, enc_ad_n),
        "adapter": (enc_ad | dec_ad, enc_ad_n + dec_ad_n),
        "bias": ({n for n in not_pe if n.endswith(".bias")}, total({n for n in not_pe if n.endswith(".bias")})),
        "norm": (norms, total(norms)),
        "head": (heads, total(heads)),
        "linear-probe": (heads, total(heads)),
    }
    return table[name]


def _config(name: str, **kw) -> RecipeConfig:
    return RecipeConfig(name=name, lora_rank=R, target_modules=["qkv"] if name == "peft-lora" else None, **kw)


@pytest.mark.parametrize("name", list(RECIPES))
def test_recipe_trains_exactly_the_intended_parameters(name):
    model = litemedsam(256)
    base = _base_params(model)
    want_names, want_count = expected(name, base, model)
    applied = apply_recipe(model, _config(name))
    assert set(applied.trainable_names) == want_names
    assert applied.trainable == want_count
    assert applied.total == sum(base.values()) + (applied.trainable if name not in (
        "full", "decoder", "bias", "norm", "head", "linear-probe") else 0)
    assert applied.encoder_trainable == (name in ("full", "encoder-lora", "lora", "peft-lora", "encoder-adapter",
                                                   "adapter", "bias", "norm"))
    print(f"{name:16s} {applied.trainable:>10,d} trainable of {applied.total:,d}")


def test_recipe_table_is_complete_and_documented():
    assert {"full", "decoder", "decoder-lora", "encoder-lora", "lora", "peft-lora", "decoder-adapter",
            "encoder-adapter", "adapter", "bias", "norm", "head", "linear-probe"} == set(RECIPES)
    assert all(r.description and r.cost for r in RECIPES.values())


def test_prompt_encoder_and_also_train():
    model = litemedsam(256)
    applied = apply_recipe(model, RecipeConfig(name="decoder-lora", train_prompt_encoder=True,
                                               also_train=["mask_decoder.iou_token", "image_encoder.neck.1.weight"]))
    names = set(applied.trainable_names)
    pe = {n for n, _ in model.named_parameters() if n.startswith("prompt_encoder.")}
    assert pe and pe <= names
    assert {"mask_decoder.iou_token.weight", "image_encoder.neck.1.weight"} <= names
    assert "image_encoder.neck.1.bias" not in names
    with pytest.raises(MedadaptError, match="no module named 'mask_decoder.prompt_tokens'"):
        apply_recipe(litemedsam(256), RecipeConfig(name="decoder", also_train=["mask_decoder.prompt_tokens"]))


def test_recipe_errors():
    with pytest.raises(MedadaptError, match="unknown recipe 'qlora'.*decoder-lora"):
        apply_recipe(small_vit_sam(), "qlora")
    with pytest.raises(MedadaptError, match="target modules"):
        apply_recipe(small_vit_sam(), "peft-lora")
    with pytest.raises(MedadaptError, match="no module named 'swinViT'"):
        apply_recipe(small_vit_sam(), RecipeConfig(name="encoder-lora", encoder_attr="swinViT"))
    with pytest.raises(MedadaptError, match="no head"):
        apply_recipe(nn.Sequential(nn.Linear(2, 2)), RecipeConfig(name="head", decoder_attr="0"))


STEM = ("image_encoder.patch_embed.", "image_encoder.layers.0.", "image_encoder.layers.1.")


@pytest.mark.parametrize("name", ["encoder-lora", "lora", "adapter", "bias", "norm", "full"])
def test_frozen_stages_keep_the_stem_untouched(name):
    """frozen_stages=2: the recipe's trainable set minus everything in the patch stem and stages 0-1,
    and no module injected there (the engine feeds cached stem outputs to the rest)."""
    model = litemedsam(256)
    want_names, _ = expected(name, _base_params(model), model)
    want = {n for n in want_names if not n.startswith(STEM)}
    assert want != want_names  # the stem held some of them
    applied = apply_recipe(model, _config(name, frozen_stages=2))
    assert set(applied.trainable_names) == want and applied.frozen_stages == 2
    assert applied.encoder_trainable
    assert not [m for m in applied.injected if m.startswith(STEM)]
    assert all(not p.requires_grad for n, p in model.named_parameters() if n.startswith(STEM))


def test_frozen_stages_errors():
    with pytest.raises(MedadaptError, match="layers.1.blocks.0.attn.qkv lies in the encoder's frozen stem"):
        apply_recipe(litemedsam(256), _config("encoder-lora", frozen_stages=2, lora_blocks=[0, 5]))
    with pytest.raises(MedadaptError, match="layers.1.blocks.0.attn.qkv lies in the encoder's frozen stem"):
        apply_recipe(litemedsam(256), _config("peft-lora", frozen_stages=2))  # 'qkv' matches every block
    peft_late = _config("peft-lora", frozen_stages=2).model_copy(update={"target_modules": r".*layers\.[23]\..*qkv"})
    assert apply_recipe(litemedsam(256), peft_late).trainable == sum(R * 4 * d for d in ENC_DIMS[2:])
    with pytest.raises(MedadaptError, match="frozen_stages=5, but the encoder has 4 stages"):
        apply_recipe(litemedsam(256), _config("lora", frozen_stages=5))
    with pytest.raises(MedadaptError, match="needs a staged encoder"):
        apply_recipe(small_vit_sam(), _config("lora", frozen_stages=1))


LORA_LIKE = ["decoder-lora", "encoder-lora", "lora", "peft-lora", "decoder-adapter", "encoder-adapter", "adapter"]


@pytest.mark.parametrize("name", LORA_LIKE)
def test_adapted_model_starts_equal_to_the_base(name):
    model = small_vit_sam()
    inputs = sam_inputs(model)
    with torch.no_grad():
        y0 = sam_forward(model, inputs)
    apply_recipe(model, _config(name))
    with torch.no_grad():
        assert torch.equal(sam_forward(model, inputs), y0)


def _one_step(model: nn.Module, name: str) -> tuple[set[str], set[str], list[str]]:
    """Apply a recipe, take one SGD step in train mode; return (changed keys, trainable, frozen BN)."""
    applied = apply_recipe(model, _config(name))
    inputs = sam_inputs(model)
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    model.train()
    sam_forward(model, inputs).square().mean().backward()
    opt.step()
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    return changed, set(applied.trainable_names), applied.frozen_bn


@pytest.mark.parametrize("name", list(RECIPES))
def test_one_step_changes_only_trainable_tensors(name):
    changed, trainable, _ = _one_step(small_vit_sam(), name)
    assert changed and changed <= trainable
    if "lora" in name:  # B gets a gradient first (A's gradient is zero while B is zero)
        assert {n for n in trainable if "lora_B" in n} <= changed


@pytest.mark.parametrize("name", ["encoder-lora", "norm"])
def test_frozen_batchnorm_statistics_stay_fixed(name):
    model = litemedsam(32)
    bn_stats = {f"{m}.{b}" for m, mod in model.named_modules() if isinstance(mod, nn.BatchNorm2d)
                for b in ("running_mean", "running_var", "num_batches_tracked")}
    changed, trainable, frozen_bn = _one_step(model, name)
    if name == "encoder-lora":  # no BatchNorm trains: none may move
        assert len(frozen_bn) == len(bn_stats) // 3 > 0
        assert changed and changed <= trainable
    else:  # trained BatchNorm layers update their statistics; artifacts save them
        assert frozen_bn == []
        assert changed - trainable and changed - trainable <= bn_stats


def test_recipes_on_monai_swin_unetr():
    model = swin_unetr()
    n_base = sum(p.numel() for p in model.parameters())
    cfg = {"encoder_attr": "swinViT", "decoder_attr": "*"}
    dec = apply_recipe(model, RecipeConfig(name="decoder", **cfg))
    assert not dec.encoder_trainable
    assert {n.split(".")[0] for n in dec.trainable_names} == {n for n, _ in model.named_children()} - {"swinViT"}
    head = apply_recipe(model, RecipeConfig(name="head", **cfg))
    assert set(head.trainable_names) == {"out.conv.conv.weight", "out.conv.conv.bias"}

    model = swin_unetr()
    x = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        y0 = torch.cat([h.flatten() for h in model.swinViT(x)])
    lora = apply_recipe(model, RecipeConfig(name="encoder-lora", lora_rank=2, also_train=["out"], **cfg))
    assert lora.injected == [f"swinViT.layers{i}.0.blocks.0.attn.qkv" for i in range(1, 5)]
    assert {n for n in lora.trainable_names if "lora" not in n} == {"out.conv.conv.weight", "out.conv.conv.bias"}
    assert lora.total == n_base + lora.trainable - sum(p.numel() for p in model.out.parameters())
    with torch.no_grad():
        assert torch.equal(torch.cat([h.flatten() for h in model.swinViT(x)]), y0)

    peft = apply_recipe(swin_unetr(), RecipeConfig(name="peft-lora", target_modules=r".*conv_block\.conv[12]\.conv",
                                                   **cfg))
    assert len(peft.injected) == 2 * 5 and all(".lora_" in n for n in peft.trainable_names)


def test_recipes_on_a_vit_classifier():
    from medadapt.models.classification.vit import VisionTransformer

    model = VisionTransformer(img_size=32, patch_size=16, num_classes=3, embed_dim=32, depth=2, num_heads=2)
    head = apply_recipe(model, RecipeConfig(name="linear-probe", encoder_attr="blocks", decoder_attr=[]))
    assert set(head.trainable_names) == {"head.weight", "head.bias"}
    lora = apply_recipe(model, RecipeConfig(name="encoder-lora", encoder_attr="blocks", decoder_attr=[],
                                            lora_rank=2, also_train=["head"]))
    assert lora.injected == ["blocks.0.attn.qkv", "blocks.1.attn.qkv"]
    assert lora.trainable == 2 * 4 * 2 * 32 + 3 * 32 + 3
