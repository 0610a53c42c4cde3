"""timm-layout ViT: architecture sizes, checkpoint key layout and loading, pos_embed resampling, LoRA."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from medadapt.adapt import apply_recipe
from medadapt.engine.classify_task import classifier_recipe
from medadapt.errors import MedadaptError
from medadapt.models.classification import (
    VisionTransformer,
    build_classifier,
    input_spec,
    load_vit_checkpoint,
    resample_pos_embed,
    vit_patch16,
)

D, DEPTH, HEADS = 64, 2, 4


def timm_state_dict(dim=D, depth=DEPTH, grid=14, num_classes=1000, mae_decoder=True, final_norm=True):
    """A checkpoint written out key by key in timm's VisionTransformer layout (not from our model)."""
    g = torch.Generator().manual_seed(0)

    def r(*shape):
        return torch.randn(*shape, generator=g)

    sd = {
        "cls_token": r(1, 1, dim),
        "pos_embed": r(1, 1 + grid * grid, dim),
        "patch_embed.proj.weight": r(dim, 3, 16, 16),
        "patch_embed.proj.bias": r(dim),
    }
    for i in range(depth):
        p = f"blocks.{i}."
        sd.update({
            p + "norm1.weight": r(dim), p + "norm1.bias": r(dim),
            p + "attn.qkv.weight": r(3 * dim, dim), p + "attn.qkv.bias": r(3 * dim),
            p + "attn.proj.weight": r(dim, dim), p + "attn.proj.bias": r(dim),
            p + "norm2.weight": r(dim), p + "norm2.bias": r(dim),
            p + "mlp.fc1.weight": r(4 * dim, dim), p + "mlp.fc1.bias": r(4 * dim),
            p + "mlp.fc2.weight": r(dim, 4 * dim), p + "mlp.fc2.bias": r(dim),
        })
    if final_norm:
        sd.update({"norm.weight": r(dim), "norm.bias": r(dim)})
    sd.update({"head.weight": r(num_classes, dim), "head.bias": r(num_classes)})
    if mae_decoder:  # MAE pre-training files carry the decoder too
        sd.update({"mask_token": r(1, 1, 32), "decoder_embed.weight": r(32, dim)})
    return sd


def tiny_vit(img_size=96, pool="gap", num_classes=3):
    return VisionTransformer(img_size=img_size, embed_dim=D, depth=DEPTH, num_heads=HEADS, num_classes=num_classes,
                             pool=pool)


@pytest.mark.parametrize("name,count", [("vit_small_patch16", 22_050_664), ("vit_base_patch16", 86_567_656),
                                        ("vit_large_patch16", 304_326_632)])
def test_parameter_counts_match_timm(name, count):
    # timm's vit_{small,base,large}_patch16_224 with 1000 classes; built on the meta device (no memory)
    with torch.device("meta"):
        model = vit_patch16(name)
    assert sum(p.numel() for p in model.parameters()) == count
    assert {"patch_embed.proj.weight", "blocks.0.attn.qkv.weight", "blocks.0.mlp.fc2.bias", "fc_norm.weight"} <= set(
        model.state_dict())


@pytest.mark.parametrize("wrap", ["flat", "model", "module_prefix"])
def test_load_timm_layout_file(tmp_path, wrap):
    sd = timm_state_dict()
    obj = {"flat": sd, "model": {"model": sd, "epoch": 3}, "module_prefix": {f"module.{k}": v for k, v in sd.items()}}[wrap]
    path = tmp_path / "ckpt.pth"
    torch.save(obj, path)
    model = tiny_vit(img_size=96, pool="gap")  # 6x6 grid, 3 classes
    report = load_vit_checkpoint(model, path)

    assert sorted(report.missing) == ["fc_norm.bias", "fc_norm.weight", "head.bias", "head.weight"]
    assert set(report.unexpected) == {"norm.weight", "norm.bias", "mask_token", "decoder_embed.weight"}
    assert {"head.weight", "head.bias"} <= set(report.dropped)
    assert any(r.startswith("pos_embed") for r in report.resized)
    own = model.state_dict()
    for k in ("blocks.1.attn.qkv.weight", "blocks.0.mlp.fc2.bias", "patch_embed.proj.weight", "cls_token"):
        assert torch.equal(own[k], sd[k]), k
    # pos_embed: class token kept, 14x14 grid resized bicubically to 6x6 (MAE's interpolate_pos_embed)
    grid = sd["pos_embed"][:, 1:].reshape(1, 14, 14, D).permute(0, 3, 1, 2)
    want = F.interpolate(grid, size=(6, 6), mode="bicubic", align_corners=False).permute(0, 2, 3, 1).reshape(1, 36, D)
    assert torch.equal(own["pos_embed"][:, :1], sd["pos_embed"][:, :1])
    torch.testing.assert_close(own["pos_embed"][:, 1:], want)
    assert model(torch.randn(2, 3, 96, 96)).shape == (2, 3)


def test_cls_pool_loads_final_norm_and_keep_head():
    sd = timm_state_dict(num_classes=3)
    model = tiny_vit(img_size=224, pool="cls")
    report = load_vit_checkpoint(model, sd, keep_head=True)
    assert report.missing == [] and not report.resized
    assert torch.equal(model.norm.weight, sd["norm.weight"]) and torch.equal(model.head.weight, sd["head.weight"])
    # a head of another size is dropped even with keep_head
    report = load_vit_checkpoint(tiny_vit(pool="cls", num_classes=5), sd, keep_head=True)
    assert "head.weight" in report.missing


def test_grayscale_patch_embed_spread_over_rgb():
    sd = timm_state_dict()
    sd["patch_embed.proj.weight"] = sd["patch_embed.proj.weight"][:, :1]
    model = tiny_vit()
    load_vit_checkpoint(model, sd)
    torch.testing.assert_close(model.patch_embed.proj.weight.sum(1, keepdim=True), sd["patch_embed.proj.weight"])


def test_checkpoint_that_matches_nothing_is_a_user_error(tmp_path):
    with pytest.raises(MedadaptError, match="matches a timm-layout ViT"):
        load_vit_checkpoint(tiny_vit(), {"encoder.layer.0.weight": torch.zeros(3)})
    wrong_width = timm_state_dict(dim=32)
    with pytest.raises(MedadaptError, match="width 64"):
        load_vit_checkpoint(tiny_vit(), wrong_width)
    with pytest.raises(MedadaptError, match="not found"):
        load_vit_checkpoint(tiny_vit(), tmp_path / "missing.pth")
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(MedadaptError):
        load_vit_checkpoint(tiny_vit(), bad)


def test_mae_training_checkpoint_with_args_loads(tmp_path):
    import argparse

    path = tmp_path / "checkpoint-best.pth"
    torch.save({"model": timm_state_dict(), "args": argparse.Namespace(lr=0.1), "epoch": 7}, path)
    assert len(load_vit_checkpoint(tiny_vit(), path).loaded) > 20


def test_resample_pos_embed_and_other_input_sizes():
    pe = torch.randn(1, 1 + 16, 8)
    assert resample_pos_embed(pe, (4, 4)) is pe
    out = resample_pos_embed(pe, (2, 3))
    assert out.shape == (1, 7, 8) and torch.equal(out[:, 0], pe[:, 0])
    model = tiny_vit(img_size=64).eval()
    assert model(torch.randn(1, 3, 48, 80)).shape == (1, 3)
    with pytest.raises(ValueError, match="multiple of the patch"):
        model(torch.randn(1, 3, 50, 64))


def test_gap_and_cls_pooling_differ_in_what_they_read():
    torch.manual_seed(0)
    gap, cls = tiny_vit(pool="gap").eval(), tiny_vit(pool="cls").eval()
    x = torch.randn(1, 3, 96, 96)
    tokens = gap.forward_features(x)
    torch.testing.assert_close(gap.forward_head(tokens, pre_logits=True), gap.fc_norm(tokens[:, 1:].mean(1)))
    torch.testing.assert_close(cls.forward_head(tokens, pre_logits=True), cls.norm(tokens)[:, 0])


def test_lora_trains_only_lora_and_head():
    torch.manual_seed(0)
    model = tiny_vit(img_size=32, num_classes=3)
    model.input_spec = input_spec("vit_small_patch16", 32)
    x = torch.randn(4, 3, 32, 32)
    model.eval()
    before = model(x).detach()
    applied = apply_recipe(model, classifier_recipe(model, "lora", lora_rank=4, lora_alpha=32.0))
    rank = 4
    # q and v: A [r, D] and B [D, r] each, per block; plus head and fc_norm
    expected = DEPTH * 2 * (rank * D + D * rank) + (D * 3 + 3) + 2 * D
    assert applied.trainable == expected
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert all(".lora_" in n or n.startswith(("head.", "fc_norm.")) for n in names)
    torch.testing.assert_close(model(x), before)  # B starts at zero

    model.train()
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    for _ in range(2):
        loss = model(x).logsumexp(1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)
    assert not torch.equal(model.blocks[0].attn.qkv.lora_B_q, torch.zeros_like(model.blocks[0].attn.qkv.lora_B_q))


def test_unknown_backbone():
    with pytest.raises(MedadaptError, match="unknown classification backbone"):
        build_classifier("resnet50", 2)


def test_sam_encoder_backbone_with_pooled_head():
    from medadapt.io.checkpoints import read_checkpoint
    from medadapt.models.weights import litemedsam_checkpoint_path

    model = build_classifier("litemedsam", 2, img_size=64)  # the bundled LiteMedSAM weights
    assert model.input_spec == input_spec("litemedsam", 64) and model.input_spec.normalize == "minmax"
    assert input_spec("litemedsam").size == 256 and input_spec("litemedsam").fit == "pad"
    official = read_checkpoint(litemedsam_checkpoint_path())
    own = model.state_dict()
    same = [k for k, v in official.items() if k.startswith("image_encoder.") and k in own and own[k].shape == v.shape]
    assert len(same) > 150 and all(torch.equal(own[k], official[k]) for k in same)
    model.eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        feats = model.forward_features(x)
        assert feats.shape == (1, 256, 16, 16)  # TinyViT keeps stride 4
        torch.testing.assert_close(model.forward_head(feats), model.head(model.fc_norm(feats.mean((2, 3)))))
    applied = apply_recipe(model, classifier_recipe(model, "lora", lora_rank=2))
    assert all(n.startswith(("image_encoder.", "head.", "fc_norm.")) for n in applied.trainable_names)
    assert any(".lora_" in n for n in applied.trainable_names)


@pytest.mark.parametrize("pool", ["gap", "cls"])
def test_pooled_path_equals_forward(pool):
    torch.manual_seed(0)
    m = VisionTransformer(img_size=32, embed_dim=32, depth=1, num_heads=2, num_classes=3, pool=pool).eval()
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(m.forward_from_pooled(m.forward_pooled(x)), m(x))


def test_cnn_small_from_scratch():
    from medadapt.models.classification import is_random_init

    torch.manual_seed(0)
    m = build_classifier("cnn_small", 2, img_size=28).eval()
    assert m.input_spec.size == 28 and sum(p.numel() for p in m.parameters()) == 1_173_730
    x = torch.randn(2, 3, 28, 28)
    assert m(x).shape == (2, 2)
    torch.testing.assert_close(m.forward_from_pooled(m.forward_pooled(x)), m(x))
    assert is_random_init("cnn_small", None) and not is_random_init("litemedsam", None)
    with pytest.raises(MedadaptError, match="from scratch"):
        build_classifier("cnn_small", 2, checkpoint="x.pth")
