"""LoRA on the q and v projections of attention (SAMed / finetune-SAM form).

``W' = W + (alpha / r) * B @ A`` on the query and value rows only, with ``B`` zero-initialised
so the adapted model starts equal to the base model.

Why hand-written rather than peft: SAM's image encoder computes q, k and v with ONE fused
``qkv`` Linear. peft wraps whole modules, so it can LoRA the fused layer (also k) but not just
its q and v rows, which is the form SAMed, finetune-SAM and MedSAM adapters use. The decoder's
separate ``q_proj``/``v_proj`` Linears would be fine in peft; they use :class:`LoRALinear` here
so both halves of one recipe share a naming scheme and a merge path.

Row layout of the fused layer differs between encoders (see :func:`qkv_rows`): SAM-ViT, timm ViT
and MONAI Swin stack ``[q... | k... | v...]``; TinyViT (MobileSAM, LiteMedSAM) interleaves per
head ``[q_h | k_h | v_h]``. Slicing the first and last thirds of a TinyViT ``qkv`` (as
finetune-SAM does) would adapt the wrong rows.

The wrappers own the base ``weight``/``bias`` Parameters, so an adapted model keeps the base's
state-dict keys (``...attn.qkv.weight``) and only adds ``lora_*`` keys; :meth:`merge` returns a
plain ``nn.Linear`` with the same keys.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from medadapt.adapt.freeze import resolve_roots
from medadapt.errors import MedadaptError

__all__ = [
    "LoRALinear",
    "LoRAQKV",
    "apply_lora_decoder",
    "apply_lora_qkv",
    "find_attention",
    "find_qkv_attention",
    "merge_lora",
    "qkv_rows",
    "select_blocks",
]


def _check_rank(rank: int, alpha: float | None, dropout: float) -> float:
    if rank < 1:
        raise MedadaptError(f"LoRA rank must be at least 1, got {rank}", fix="use --lora-rank 4 (a usual value)")
    if not 0.0 <= dropout < 1.0:
        raise MedadaptError(f"LoRA dropout must be in [0, 1), got {dropout}")
    return float(rank if alpha is None else alpha) / rank


class _LoRABase(nn.Module):
    """Holds the wrapped Linear's Parameters under their original names."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float | None, dropout: float) -> None:
        super().__init__()
        self.scaling = _check_rank(rank, alpha, dropout)
        self.rank = rank
        self.in_features = base.in_features
        self.out_features = base.out_features
        self.weight = base.weight  # same Parameter objects: keys and values stay the base's
        self.bias = base.bias
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def _new_a(self) -> nn.Parameter:
        a = torch.empty(self.rank, self.in_features, device=self.weight.device, dtype=self.weight.dtype)
        nn.init.kaiming_uniform_(a, a=math.sqrt(5))  # as peft / SAMed
        return nn.Parameter(a)

    def _new_b(self, rows: int) -> nn.Parameter:
        return nn.Parameter(torch.zeros(rows, self.rank, device=self.weight.device, dtype=self.weight.dtype))

    def delta_weight(self) -> torch.Tensor:  # [out, in]
        raise NotImplementedError

    @torch.no_grad()
    def merge(self) -> nn.Linear:
        """A plain Linear with the low-rank update folded into its weight (dropout dropped)."""
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                           device=self.weight.device, dtype=self.weight.dtype)
        linear.weight = nn.Parameter(self.weight + self.delta_weight().to(self.weight.dtype),
                                     requires_grad=self.weight.requires_grad)
        linear.bias = self.bias
        return linear

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}, " \
               f"scaling={self.scaling:g}"


class LoRALinear(_LoRABase):
    """``y = x W^T + b + s * dropout(x) A^T B^T`` for a plain Linear (decoder ``q_proj``/``v_proj``)."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float | None = None, dropout: float = 0.0) -> None:
        super().__init__(base, rank, alpha, dropout)
        self.lora_A = self._new_a()  # [r, in]
        self.lora_B = self._new_b(self.out_features)  # [out, r]
        self.train(base.training)  # a wrapper created on an eval-mode model stays in eval mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.linear(x, self.weight, self.bias)
        return out + F.linear(F.linear(self.lora_dropout(x), self.lora_A), self.lora_B) * self.scaling

    def delta_weight(self) -> torch.Tensor:
        return (self.lora_B @ self.lora_A) * self.scaling


class LoRAQKV(_LoRABase):
    """LoRA on the q and v rows of a fused ``qkv`` Linear; k is left untouched.

    ``q_rows``/``v_rows`` are the output indices of the query and value projections
    (:func:`qkv_rows`). Parameters: ``lora_A_q`` [r, in], ``lora_B_q`` [|q_rows|, r], and the same
    for v; the row indices are non-persistent buffers rebuilt from the architecture.
    """

    def __init__(self, base: nn.Linear, rank: int, alpha: float | None = None, dropout: float = 0.0, *,
                 q_rows: torch.Tensor | None = None, v_rows: torch.Tensor | None = None) -> None:
        super().__init__(base, rank, alpha, dropout)
        if q_rows is None or v_rows is None:
            q_rows, v_rows = _blocked_rows(self.out_features)
        rows = torch.cat([q_rows, v_rows]).to(device=self.weight.device, dtype=torch.long)
        if rows.unique().numel() != rows.numel() or rows.min() < 0 or rows.max() >= self.out_features:
            raise ValueError("q_rows and v_rows must be distinct output indices of the qkv layer")
        self.register_buffer("rows", rows, persistent=False)  # [|q| + |v|]
        self.n_q = len(q_rows)
        self.lora_A_q = self._new_a()
        self.lora_B_q = self._new_b(len(q_rows))
        self.lora_A_v = self._new_a()
        self.lora_B_v = self._new_b(len(v_rows))
        self.train(base.training)  # a wrapper created on an eval-mode model stays in eval mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [..., in] -> [..., out]
        out = F.linear(x, self.weight, self.bias)
        dx = self.lora_dropout(x)
        dq = F.linear(F.linear(dx, self.lora_A_q), self.lora_B_q)
        dv = F.linear(F.linear(dx, self.lora_A_v), self.lora_B_v)
        return out.index_add(-1, self.rows, torch.cat([dq, dv], dim=-1), alpha=self.scaling)

    def delta_weight(self) -> torch.Tensor:
        upd = torch.cat([self.lora_B_q @ self.lora_A_q, self.lora_B_v @ self.lora_A_v])  # [|q|+|v|, in]
        delta = torch.zeros(self.out_features, self.in_features, device=upd.device, dtype=upd.dtype)
        return delta.index_add(0, self.rows, upd, alpha=self.scaling)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", q_rows={self.n_q}, v_rows={len(self.rows) - self.n_q}"


def _blocked_rows(out_features: int) -> tuple[torch.Tensor, torch.Tensor]:
    if out_features % 3:
        raise MedadaptError(f"a fused qkv layer with {out_features} outputs cannot be split in three",
                            fix="target this layer with the peft-lora recipe instead")
    d = out_features // 3
    return torch.arange(0, d), torch.arange(2 * d, 3 * d)


def qkv_rows(attn: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """Output indices of q and v in ``attn.qkv``.

    ``attn.qkv_layout`` (``"blocked"`` or ``"per_head"``) decides when present. Otherwise an
    attention with a ``key_dim`` attribute is TinyViT/LeViT (per head ``[q | k | v]``, v of width
    ``attn.d`` if set, else ``key_dim``); anything else is blocked ``[q | k | v]`` thirds
    (SAM-ViT, timm ViT, MONAI Swin).
    """
    out = attn.qkv.out_features
    layout = getattr(attn, "qkv_layout", "per_head" if hasattr(attn, "key_dim") else "blocked")
    if layout == "blocked":
        return _blocked_rows(out)
    if layout != "per_head":
        raise ValueError(f"unknown qkv_layout {layout!r}")
    heads, kd = int(attn.num_heads), int(attn.key_dim)
    vd = int(getattr(attn, "d", kd))
    per = 2 * kd + vd
    if heads * per != out:
        raise MedadaptError(f"{type(attn).__name__}.qkv has {out} outputs, expected {heads} heads x {per}")
    start = torch.arange(heads) * per
    q = (start[:, None] + torch.arange(kd)).flatten()
    v = (start[:, None] + 2 * kd + torch.arange(vd)).flatten()
    return q, v


def find_qkv_attention(model: nn.Module, root: str | Sequence[str] | None) -> list[tuple[str, nn.Module]]:
    """Attention modules with a fused ``qkv`` Linear under ``root``, in module order.

    This order is what ``blocks`` indices refer to: ``image_encoder.blocks.{i}`` for SAM-ViT,
    the attention blocks of ``layers.1..3`` for TinyViT (layer 0 is convolutional), every Swin
    block of a MONAI ``swinViT``.
    """
    found = []
    for prefix, module in resolve_roots(model, root):
        for name, m in module.named_modules():
            if isinstance(m._modules.get("qkv"), (nn.Linear, LoRAQKV)):
                found.append((_join(prefix, name), m))
    return found


def find_attention(model: nn.Module, root: str | Sequence[str] | None) -> list[tuple[str, nn.Module]]:
    """Attention modules with separate ``q_proj``/``k_proj``/``v_proj`` under ``root`` (SAM decoder)."""
    found = []
    for prefix, module in resolve_roots(model, root):
        for name, m in module.named_modules():
            if all(p in m._modules for p in ("q_proj", "k_proj", "v_proj")):
                found.append((_join(prefix, name), m))
    return found


def _join(prefix: str, name: str) -> str:
    return ".".join(p for p in (prefix, name) if p)


def select_blocks(items: list, indices: Sequence[int] | None, what: str) -> list:
    """``items`` picked by position (negative counts from the end); ``None`` keeps all."""
    if indices is None:
        return items
    bad = [i for i in indices if not -len(items) <= i < len(items)]
    if bad:
        raise MedadaptError(f"{what} index {bad[0]} is out of range: the model has {len(items)}",
                            fix=f"use indices 0..{len(items) - 1}")
    return [items[i] for i in sorted({i % len(items) for i in indices})]


def apply_lora_qkv(model: nn.Module, rank: int = 4, alpha: float | None = None, dropout: float = 0.0,
                   blocks: Sequence[int] | None = None, root: str | Sequence[str] = "image_encoder") -> list[str]:
    """Wrap ``attn.qkv`` of the chosen attention blocks under ``root`` in :class:`LoRAQKV`.

    ``blocks`` are positions in :func:`find_qkv_attention` order (``None``: all). ``alpha``
    defaults to ``rank`` (scaling 1, as SAMed). Returns the wrapped modules' names.
    """
    attns = find_qkv_attention(model, root)
    if not attns:
        raise MedadaptError(f"no attention with a fused 'qkv' Linear under {root!r}",
                            fix="pick the encoder with --encoder-attr, or use the peft-lora recipe")
    done = []
    for name, attn in select_blocks(attns, blocks, "attention block"):
        if isinstance(attn.qkv, LoRAQKV):
            raise MedadaptError(f"{name}.qkv already has LoRA", fix="apply a LoRA recipe once per model")
        q, v = qkv_rows(attn)
        attn.qkv = LoRAQKV(attn.qkv, rank, alpha, dropout, q_rows=q, v_rows=v)
        done.append(f"{name}.qkv")
    return done


def apply_lora_decoder(model: nn.Module, rank: int = 4, alpha: float | None = None, dropout: float = 0.0,
                       root: str | Sequence[str] = "mask_decoder",
                       projections: Sequence[str] = ("q_proj", "v_proj")) -> list[str]:
    """Wrap the q/v projections of every decoder attention in :class:`LoRALinear`.

    For SAM: self-attention, both cross-attentions of each two-way block and
    ``final_attn_token_to_image`` (as finetune-SAM). Returns the wrapped modules' names.
    """
    attns = find_attention(model, root)
    if not attns:
        raise MedadaptError(f"no attention with q_proj/k_proj/v_proj under {root!r}",
                            fix="pick the decoder with --decoder-attr, or use the peft-lora recipe")
    done = []
    for name, attn in attns:
        for proj in projections:
            layer = getattr(attn, proj)
            if isinstance(layer, LoRALinear):
                raise MedadaptError(f"{name}.{proj} already has LoRA", fix="apply a LoRA recipe once per model")
            if not isinstance(layer, nn.Linear):
                raise MedadaptError(f"{name}.{proj} is a {type(layer).__name__}, not a Linear")
            setattr(attn, proj, LoRALinear(layer, rank, alpha, dropout))
            done.append(f"{name}.{proj}")
    return done


def merge_lora(model: nn.Module) -> list[str]:
    """Replace every LoRA wrapper by its merged Linear, in place. Returns the merged names."""
    merged = []
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, _LoRABase):
                setattr(module, child_name, child.merge())
                merged.append(_join(name, child_name))
    return merged
