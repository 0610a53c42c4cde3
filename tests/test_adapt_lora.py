"""q/v LoRA for fused qkv layers and LoRA for plain Linears."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from medadapt.adapt.lora import (
    LoRALinear,
    LoRAQKV,
    apply_lora_decoder,
    apply_lora_qkv,
    find_qkv_attention,
    merge_lora,
    qkv_rows,
)
from medadapt.errors import MedadaptError
from test_adapt_models import litemedsam, small_vit_sam


def _split_tinyvit(qkv: torch.Tensor, heads: int) -> tuple[torch.Tensor, ...]:
    # TinyViT Attention.forward: view(B, N, heads, 3*kd).split(kd, -1)
    b, n, _ = qkv.shape
    return qkv.view(b, n, heads, -1).chunk(3, dim=-1)


def _split_vit(qkv: torch.Tensor, heads: int) -> tuple[torch.Tensor, ...]:
    # SAM-ViT Attention.forward: reshape(B, N, 3, heads, -1).unbind(2)
    b, n, _ = qkv.shape
    return qkv.reshape(b, n, 3, heads, -1).unbind(2)


@pytest.mark.parametrize("kind", ["tinyvit", "vit"])
def test_lora_qkv_changes_q_and_v_of_every_head_and_never_k(kind):
    model = litemedsam(32) if kind == "tinyvit" else small_vit_sam()
    name, attn = find_qkv_attention(model, "image_encoder")[1]
    split = _split_tinyvit if kind == "tinyvit" else _split_vit
    base = attn.qkv
    lora = LoRAQKV(base, rank=2, q_rows=qkv_rows(attn)[0], v_rows=qkv_rows(attn)[1])
    x = torch.randn(2, 5, base.in_features)
    q0, k0, v0 = split(base(x), attn.num_heads)
    q1, k1, v1 = split(lora(x), attn.num_heads)
    assert torch.equal(q0, q1) and torch.equal(v0, v1)  # B starts at zero
    with torch.no_grad():
        lora.lora_B_q.normal_()
        lora.lora_B_v.normal_()
    q1, k1, v1 = split(lora(x), attn.num_heads)
    assert torch.equal(k0, k1)
    for h in range(attn.num_heads):  # every head's q and v move
        assert not torch.allclose(q0[..., h, :], q1[..., h, :])
        assert not torch.allclose(v0[..., h, :], v1[..., h, :])


def test_tinyvit_rows_differ_from_thirds():
    attn = find_qkv_attention(litemedsam(32), "image_encoder")[0][1]
    q, v = qkv_rows(attn)
    kd = attn.key_dim
    assert attn.num_heads > 1
    assert q[:kd].tolist() == list(range(kd)) and q[kd].item() == 3 * kd  # head 1 starts after q|k|v of head 0
    assert v[:kd].tolist() == list(range(2 * kd, 3 * kd))


def test_lora_qkv_merge_and_scaling():
    torch.manual_seed(0)
    base = nn.Linear(12, 36)
    lora = LoRAQKV(base, rank=3, alpha=6.0)
    assert lora.scaling == 2.0
    with torch.no_grad():
        lora.lora_B_q.normal_()
        lora.lora_B_v.normal_()
    x = torch.randn(4, 12)
    manual = base(x)
    manual[:, :12] += 2.0 * x @ lora.lora_A_q.T @ lora.lora_B_q.T
    manual[:, 24:] += 2.0 * x @ lora.lora_A_v.T @ lora.lora_B_v.T
    torch.testing.assert_close(lora(x), manual)
    merged = lora.merge()
    assert type(merged) is nn.Linear and set(merged.state_dict()) == {"weight", "bias"}
    torch.testing.assert_close(merged(x), manual, rtol=1e-5, atol=1e-5)
    assert merged.bias is base.bias


def test_lora_linear_dropout_and_merge():
    torch.manual_seed(0)
    base = nn.Linear(8, 6)
    lora = LoRALinear(base, rank=2, dropout=0.5)
    x = torch.randn(3, 8)
    assert torch.equal(lora(x), base(x))
    with torch.no_grad():
        lora.lora_B.normal_()
    lora.eval()
    y = lora(x)
    assert not torch.allclose(y, base(x))
    torch.testing.assert_close(lora.merge()(x), y, rtol=1e-5, atol=1e-5)
    lora.train()
    assert not torch.allclose(lora(x), y)  # dropout acts on the LoRA path in training


def test_wrappers_keep_the_base_keys():
    lora = LoRAQKV(nn.Linear(8, 24), rank=2)
    assert set(lora.state_dict()) == {"weight", "bias", "lora_A_q", "lora_B_q", "lora_A_v", "lora_B_v"}
    assert set(LoRALinear(nn.Linear(8, 4, bias=False), rank=2).state_dict()) == {"weight", "lora_A", "lora_B"}


def test_apply_lora_qkv_on_litemedsam():
    model = litemedsam(256)
    before = set(model.state_dict())
    names = apply_lora_qkv(model, rank=4)
    expected = [f"image_encoder.layers.{i}.blocks.{j}.attn.qkv" for i, n in ((1, 2), (2, 6), (3, 2)) for j in range(n)]
    assert names == expected
    added = set(model.state_dict()) - before
    assert added == {f"{n}.lora_{p}" for n in expected for p in ("A_q", "B_q", "A_v", "B_v")}
    assert before <= set(model.state_dict())
    # 4 * rank * dim per block: dims 128 (x2), 160 (x6), 320 (x2)
    assert sum(model.get_parameter(k).numel() for k in added) == 4 * 4 * (2 * 128 + 6 * 160 + 2 * 320)


def test_apply_lora_qkv_block_selection_and_errors():
    model = litemedsam(256)
    assert apply_lora_qkv(model, blocks=[0, -1]) == ["image_encoder.layers.1.blocks.0.attn.qkv",
                                                       "image_encoder.layers.3.blocks.1.attn.qkv"]
    with pytest.raises(MedadaptError, match="already has LoRA"):
        apply_lora_qkv(model, blocks=[0])
    with pytest.raises(MedadaptError, match="out of range"):
        apply_lora_qkv(litemedsam(256), blocks=[10])
    with pytest.raises(MedadaptError, match="no module named 'encoder'"):
        apply_lora_qkv(model, root="encoder")
    with pytest.raises(MedadaptError, match="no attention"):
        apply_lora_qkv(model, root="mask_decoder")
    with pytest.raises(MedadaptError, match="rank"):
        apply_lora_qkv(litemedsam(256), rank=0)


def test_apply_lora_decoder_wraps_q_and_v_of_all_seven_attentions():
    model = litemedsam(256)
    names = apply_lora_decoder(model, rank=4)
    attns = [f"mask_decoder.transformer.layers.{i}.{a}" for i in range(2)
             for a in ("self_attn", "cross_attn_token_to_image", "cross_attn_image_to_token")]
    attns.append("mask_decoder.transformer.final_attn_token_to_image")
    assert sorted(names) == sorted(f"{a}.{p}" for a in attns for p in ("q_proj", "v_proj"))
    assert all(isinstance(model.get_submodule(n), LoRALinear) for n in names)
    assert all(not isinstance(model.get_submodule(f"{a}.k_proj"), LoRALinear) for a in attns)


def test_merge_lora_restores_modules_and_outputs():
    model = small_vit_sam()
    x = torch.randn(1, 3, 64, 64)
    keys = set(model.state_dict())
    apply_lora_qkv(model, rank=2)
    apply_lora_decoder(model, rank=2)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
        adapted = model.image_encoder(x)
    merged = merge_lora(model)
    assert len(merged) == 4 + 14
    assert set(model.state_dict()) == keys
    assert not any(isinstance(m, (LoRAQKV, LoRALinear)) for m in model.modules())
    with torch.no_grad():
        torch.testing.assert_close(model.image_encoder(x), adapted, rtol=1e-4, atol=1e-5)
