"""SAM-family modules: exact official state-dict layout, batching, prompt handling."""

from __future__ import annotations

import json

import pytest
import torch

from medadapt.models.registry import build_model, get_sam_spec
from medadapt.models.sam import TinyViT
from medadapt.models.sam.tiny_vit import Attention as TinyViTAttention

LAYOUTS = ["litemedsam", "sam_vit_t", "sam_vit_b", "sam_vit_l", "sam_vit_h"]
MODEL_FOR_LAYOUT = {"litemedsam": "litemedsam", "sam_vit_t": "mobilesam", "sam_vit_b": "sam_vit_b",
                    "sam_vit_l": "sam_vit_l", "sam_vit_h": "sam_vit_h"}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_state_dict_equals_manifest(reference, layout):
    manifest = json.loads((reference / f"{layout}.manifest.json").read_text())["keys"]
    with torch.device("meta"):  # shapes only: ViT-H in milliseconds
        model = build_model(MODEL_FOR_LAYOUT[layout], pretrained=False)
    ours = {k: {"shape": list(v.shape), "dtype": str(v.dtype).removeprefix("torch.")}
            for k, v in model.state_dict().items()}
    assert sorted(set(manifest) - set(ours)) == []
    assert sorted(set(ours) - set(manifest)) == []
    assert {k: ours[k] for k in manifest} == manifest


def test_medsam_uses_vit_b_layout():
    assert get_sam_spec("medsam").layout == "sam_vit_b"
    assert get_sam_spec("sam_vit_t") is get_sam_spec("mobilesam")


# LiteMedSAM's architecture at a 64x64 input (16x16 embedding, 64x64 low-res masks): the same
# code paths, including window padding, at 1/16 of the cost of the published 256x256.
S = 64
E = 16


@pytest.fixture(scope="module")
def lite():
    torch.manual_seed(0)
    return build_model("litemedsam", pretrained=False, image_size=S)


def test_no_cached_attention_bias(lite):
    """Weights loaded after eval() must take effect (the official TinyViT cached stale biases)."""
    attn = next(m for m in lite.modules() if isinstance(m, TinyViTAttention))
    assert "attention_bias_idxs" not in lite.state_dict()
    x = torch.randn(2, 49, attn.qkv.in_features)
    with torch.no_grad():
        before = attn(x)
        attn.attention_biases.add_(1.5 * torch.randn_like(attn.attention_biases))
        after = attn(x)
    assert not torch.allclose(before, after)


def test_encoder_batch_equals_single(lite):
    torch.manual_seed(1)
    x = torch.rand(2, 3, S, S)
    with torch.no_grad():
        both = lite.encode(x)
        one = lite.encode(x[1:])
    assert both.shape == (2, 256, E, E)
    torch.testing.assert_close(both[1:], one, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["litemedsam", "litemedsam_student_s"])
def test_encoder_stem_then_trunk_equals_forward(name):
    """The split used by the OpenVINO ``mixed`` precision computes exactly the encoder's forward."""
    torch.manual_seed(2)
    enc = build_model(name, pretrained=False, image_size=S).image_encoder.eval()
    x = torch.rand(1, 3, S, S)
    with torch.no_grad():
        ref = enc(x)
        for n in range(1, len(enc.layers) + 1):
            torch.testing.assert_close(enc.forward_trunk(enc.forward_stem(x, n), n), ref, rtol=0, atol=0)


def test_decode_shared_and_per_image_embeddings(lite):
    torch.manual_seed(2)
    emb = torch.randn(1, 256, E, E)
    boxes = torch.tensor([[2.0, 5.0, 30.0, 50.0], [12.0, 15.0, 22.0, 25.0], [0.0, 0.0, 63.0, 63.0]])
    with torch.no_grad():
        shared, iou_shared = lite.decode(emb, boxes=boxes)  # one image, three objects
        per_image, iou_per = lite.decode(emb.expand(3, -1, -1, -1), boxes=boxes)  # training layout
        single, iou_single = lite.decode(emb, boxes=boxes[1:2])
        with pytest.raises(ValueError, match="batch"):
            lite.decode(torch.randn(2, 256, E, E), boxes=boxes)
    assert shared.shape == (3, 1, S, S) and iou_shared.shape == (3, 1)
    torch.testing.assert_close(shared, per_image)
    torch.testing.assert_close(shared[1:2], single, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(shared[0], shared[1])  # the prompts matter


def test_points_multimask_and_mask_prompt(lite):
    torch.manual_seed(3)
    emb = torch.randn(2, 256, E, E)
    coords = torch.tensor([[[25.0, 25.0], [7.0, 50.0]], [[15.0, 15.0], [2.0, 2.0]]])
    labels = torch.tensor([[1, 0], [1, 1]])
    with torch.no_grad():
        masks, iou = lite.decode(emb, points=(coords, labels), multimask_output=True)
        prior = torch.randn(2, 1, S, S)
        with_prior, _ = lite.decode(emb, points=(coords, labels), masks=prior)
        without, _ = lite.decode(emb, points=(coords, labels))
        both, _ = lite.decode(emb, points=(coords, labels), boxes=torch.tensor([[0.0, 0, 30, 30]] * 2))
    assert masks.shape == (2, 3, S, S) and iou.shape == (2, 3)
    assert with_prior.shape == without.shape == both.shape == (2, 1, S, S)
    assert not torch.allclose(with_prior, without)


def test_forward_trains():
    model = build_model("litemedsam", pretrained=False, image_size=S)
    model.train()
    images = torch.rand(2, 3, S, S)
    boxes = torch.tensor([[2.0, 2.0, 25.0, 25.0], [12.0, 10.0, 50.0, 55.0]])
    logits, iou = model(images, boxes=boxes)
    assert logits.shape == (2, 1, S, S) and iou.shape == (2, 1)
    logits.mean().backward()
    grads = [p.grad for p in model.image_encoder.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    # relative-position/attention-bias tables are trained too
    attn = next(m for m in model.modules() if isinstance(m, TinyViTAttention))
    assert attn.attention_biases.grad is not None and attn.attention_biases.grad.abs().sum() > 0


def test_get_dense_pe_shape():
    with torch.device("meta"):
        model = build_model("litemedsam", pretrained=False)
    assert isinstance(model.image_encoder, TinyViT)
    assert model.prompt_encoder.image_embedding_size == (64, 64)
    pe = build_model("litemedsam", pretrained=False, image_size=S).get_dense_pe()
    assert pe.shape == (1, 256, E, E)


def test_dense_pe_is_computed_once_and_follows_its_buffer():
    """The cached grid encoding equals a fresh one, is reused, follows a loaded / changed buffer, and one
    cached inside inference_mode still serves a training step."""
    model = build_model("litemedsam", pretrained=False, image_size=S)
    pe = model.prompt_encoder
    with torch.inference_mode():
        first = model.get_dense_pe()
    assert not first.is_inference() and model.get_dense_pe() is first
    torch.testing.assert_close(first, pe.pe_layer(pe.image_embedding_size).unsqueeze(0), rtol=0, atol=0)
    other = build_model("litemedsam", pretrained=False, image_size=S)
    other.prompt_encoder.pe_layer.positional_encoding_gaussian_matrix.normal_()
    pe.load_state_dict(other.prompt_encoder.state_dict())  # copy_ into the buffer: a new version
    second = model.get_dense_pe()
    assert second is not first
    torch.testing.assert_close(second, other.get_dense_pe(), rtol=0, atol=0)
    emb = torch.randn(1, 256, E, E, requires_grad=True)
    masks, _ = model.decode(emb, boxes=torch.tensor([[4.0, 4.0, 40.0, 40.0]]))
    masks.sum().backward()
    assert emb.grad is not None and emb.grad.abs().sum() > 0


def test_decoder_image_gives_the_same_masks_and_is_used_only_while_current(lite):
    """Decoding with an embedding's prompt-free decoder work (``decoder_image``) is bitwise the plain decode, skips
    that work, and is ignored for another embedding, a mask prompt, autograd, changed weights or an embedding changed
    in place."""
    torch.manual_seed(5)
    emb, other = torch.randn(1, 256, E, E), torch.randn(1, 256, E, E)
    boxes = torch.tensor([[2.0, 5.0, 30.0, 50.0], [12.0, 15.0, 22.0, 25.0]])
    points = (torch.tensor([[[20.0, 20.0]], [[14.0, 18.0]]]), torch.tensor([[1], [0]]))
    block = lite.mask_decoder.transformer.layers[0]
    calls = []
    orig = block.image_projections
    block.image_projections = lambda *a: calls.append(1) or orig(*a)
    try:
        with torch.no_grad():
            image = lite.decoder_image(emb)
            assert calls == [1] and lite.is_current(image, emb[:])  # a view of the same embedding
            for kw in ({"boxes": boxes}, {"points": points}, {"boxes": boxes, "points": points}):
                plain, plain_iou = lite.decode(emb, **kw)
                n = len(calls)
                fast, fast_iou = lite.decode(emb, decoder_image=image, **kw)
                assert len(calls) == n  # the image side was not recomputed
                assert torch.equal(plain, fast) and torch.equal(plain_iou, fast_iou)
            # another embedding or a mask prompt: decoded as if no decoder_image were given
            assert not lite.is_current(image, other)
            assert torch.equal(lite.decode(other, boxes=boxes[:1], decoder_image=image)[0],
                               lite.decode(other, boxes=boxes[:1])[0])
            prior = torch.randn(1, 1, S, S)
            assert torch.equal(lite.decode(emb, boxes=boxes[:1], masks=prior, decoder_image=image)[0],
                               lite.decode(emb, boxes=boxes[:1], masks=prior)[0])
        assert not lite.is_current(image, emb)  # autograd on: the training path never takes it
        with torch.no_grad():
            k_proj = block.cross_attn_token_to_image.k_proj
            saved = k_proj.weight.clone()
            k_proj.weight.mul_(1.5)  # weights changed in place (an optimiser step)
            try:
                assert not lite.is_current(image, emb)
                assert torch.equal(lite.decode(emb, boxes=boxes, decoder_image=image)[0], lite.decode(emb, boxes=boxes)[0])
            finally:
                k_proj.weight.copy_(saved)
            image = lite.decoder_image(emb)
            assert lite.is_current(image, emb)
            emb.mul_(2)  # the embedding changed in place: the work no longer belongs to it, nor to a view of it
            assert not lite.is_current(image, emb) and not lite.is_current(image, emb[:])
    finally:
        del block.image_projections
