"""Bottleneck adapters (finetune-SAM / Medical-SAM-Adapter, AdaptFormer).

An :class:`Adapter` is ``Linear(dim, ratio*dim) -> GELU -> Linear(ratio*dim, dim)`` with the up
projection zero-initialised, so an adapted model starts equal to its base. It is placed by
replacing modules with wrappers, never by editing block code:

- after an attention: :class:`SerialAdapter` ``y = adapter(attn(x))`` with the adapter's skip
  connection (finetune-SAM's ``Space_Adapter``; Houlsby's placement, before the residual add);
- beside an MLP: :class:`ParallelAdapter` ``y = mlp(x) + scale * adapter(x)``, adapter without
  skip (finetune-SAM's ``MLP_Adapter``, scale 0.5; AdaptFormer, usually scale 0.1).

Adapters act on the last dimension, so they fit SAM-ViT tokens ``[B, H, W, C]``, TinyViT and
decoder tokens ``[B, N, C]`` and MONAI Swin tokens ``[B, D, H, W, C]`` alike. For TinyViT the
MLP adapter sees the MLP's input before the MLP's own LayerNorm, as in finetune-SAM's TinyViT.

Hand-written because peft has no bottleneck-adapter tuner for vision models. Unlike LoRA an
adapter is non-linear, so it cannot be folded into base weights: a merged model keeps them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from medadapt.adapt.freeze import resolve_roots
from medadapt.adapt.lora import select_blocks
from medadapt.errors import MedadaptError

__all__ = [
    "Adapter",
    "ParallelAdapter",
    "SerialAdapter",
    "apply_decoder_adapters",
    "apply_encoder_adapters",
    "apply_mlp_adapters",
    "find_blocks",
]

_MLP_PAIRS = (("lin1", "lin2"), ("fc1", "fc2"), ("linear1", "linear2"))
_ATTN_OUT = ("proj", "out_proj")


class Adapter(nn.Module):
    """``x + fc2(gelu(fc1(x)))`` (or without ``x`` when ``skip=False``); ``fc2`` starts at zero."""

    def __init__(self, dim: int, ratio: float = 0.25, skip: bool = True, act: type[nn.Module] = nn.GELU) -> None:
        super().__init__()
        hidden = max(1, int(dim * ratio))
        self.skip = skip
        self.fc1 = nn.Linear(dim, hidden)
        self.act = act()
        self.fc2 = nn.Linear(hidden, dim)
        nn.init.zeros_(self.fc2.weight)
        nn.init.zeros_(self.fc2.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [..., dim]
        y = self.fc2(self.act(self.fc1(x)))
        return x + y if self.skip else y


class _Wrapper(nn.Module):
    """Holds the wrapped module as ``base_layer``; unknown attributes are read from it."""

    def __init__(self, base_layer: nn.Module, adapter: Adapter) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.adapter = adapter
        self.training = base_layer.training  # a wrapper created on an eval-mode model stays in eval mode
        adapter.train(base_layer.training)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name in ("base_layer", "adapter"):
                raise
            return getattr(self.base_layer, name)


class SerialAdapter(_Wrapper):
    """``adapter(base_layer(*args))``: an adapter with skip after a sub-layer."""

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.adapter(self.base_layer(*args, **kwargs))


class ParallelAdapter(_Wrapper):
    """``base_layer(x) + scale * adapter(x)``: an adapter without skip beside an MLP."""

    def __init__(self, base_layer: nn.Module, adapter: Adapter, scale: float = 0.5) -> None:
        super().__init__(base_layer, adapter)
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base_layer(x) + self.scale * self.adapter(x)

    def extra_repr(self) -> str:
        return f"scale={self.scale:g}"


def _unwrapped(m: nn.Module | None) -> nn.Module | None:
    while isinstance(m, _Wrapper):
        m = m.base_layer
    return m


def _out_dim(module: nn.Module, names: Sequence[str]) -> int:
    for n in names:
        layer = module._modules.get(n)
        if layer is not None and hasattr(layer, "out_features"):
            return int(layer.out_features)
    raise MedadaptError(f"cannot tell the width of {type(module).__name__}: it has none of {', '.join(names)}")


def _is_mlp(m: nn.Module | None) -> bool:
    m = _unwrapped(m)
    return m is not None and any(a in m._modules and b in m._modules for a, b in _MLP_PAIRS)


def _is_attention(m: nn.Module | None) -> bool:
    m = _unwrapped(m)
    return m is not None and ("qkv" in m._modules or "q_proj" in m._modules) and \
        any(n in m._modules for n in _ATTN_OUT)


def find_blocks(model: nn.Module, root: str | Sequence[str] | None) -> list[tuple[str, nn.Module]]:
    """Transformer blocks under ``root``: modules with an ``mlp`` child and an attention child.

    SAM-ViT ``blocks.{i}``, TinyViT's attention blocks, SAM decoder ``transformer.layers.{i}``,
    MONAI Swin blocks; ``blocks`` indices refer to this order.
    """
    found = []
    for prefix, module in resolve_roots(model, root):
        for name, m in module.named_modules():
            if isinstance(m, _Wrapper):
                continue
            if _is_mlp(m._modules.get("mlp")) and any(_is_attention(c) for c in m._modules.values()):
                found.append((".".join(p for p in (prefix, name) if p), m))
    return found


def _wrap_attention(block: nn.Module, child: str, ratio: float) -> None:
    attn = block._modules[child]
    if isinstance(attn, SerialAdapter):
        raise MedadaptError("this block already has adapters", fix="apply an adapter recipe once per model")
    dim = _out_dim(_unwrapped(attn), _ATTN_OUT)
    setattr(block, child, SerialAdapter(attn, Adapter(dim, ratio, skip=True).to(**_like(attn))))


def _wrap_mlp(block: nn.Module, ratio: float, scale: float) -> None:
    mlp = block._modules["mlp"]
    if isinstance(mlp, ParallelAdapter):
        raise MedadaptError("this MLP already has an adapter", fix="apply an adapter recipe once per model")
    base = _unwrapped(mlp)
    dim = _out_dim(base, [b for _, b in _MLP_PAIRS])
    block.mlp = ParallelAdapter(mlp, Adapter(dim, ratio, skip=False).to(**_like(mlp)), scale)


def _like(m: nn.Module) -> dict[str, Any]:
    p = next(m.parameters(), None)
    return {} if p is None else {"device": p.device, "dtype": p.dtype}


def _apply(model: nn.Module, ratio: float, scale: float, blocks: Sequence[int] | None,
           root: str | Sequence[str] | None, attention: bool) -> list[str]:
    found = find_blocks(model, root)
    if not found:
        raise MedadaptError(f"no transformer blocks (attention + mlp) under {root!r}",
                            fix="pick the module with --encoder-attr / --decoder-attr")
    done = []
    for name, block in select_blocks(found, blocks, "transformer block"):
        if attention:
            for child, m in list(block._modules.items()):
                if child != "mlp" and _is_attention(m):
                    _wrap_attention(block, child, ratio)
                    done.append(f"{name}.{child}")
        _wrap_mlp(block, ratio, scale)
        done.append(f"{name}.mlp")
    return done


def apply_encoder_adapters(model: nn.Module, ratio: float = 0.25, scale: float = 0.5,
                           blocks: Sequence[int] | None = None,
                           root: str | Sequence[str] = "image_encoder") -> list[str]:
    """finetune-SAM encoder adapters: serial after ``attn``, parallel to ``mlp`` (``scale``).

    ``blocks`` are positions in :func:`find_blocks` order (``None``: all). Returns the names of
    the wrapped modules.
    """
    return _apply(model, ratio, scale, blocks, root, attention=True)


def apply_decoder_adapters(model: nn.Module, ratio: float = 0.25, scale: float = 0.5,
                           blocks: Sequence[int] | None = None,
                           root: str | Sequence[str] = "mask_decoder") -> list[str]:
    """Adapters in every two-way block: after each attention sub-layer, beside the MLP.

    For SAM: ``self_attn``, ``cross_attn_token_to_image`` and ``cross_attn_image_to_token`` each
    get a serial adapter, ``mlp`` a parallel one (the final token-to-image attention, outside
    the blocks, is left alone). Returns the names of the wrapped modules.
    """
    return _apply(model, ratio, scale, blocks, root, attention=True)


def apply_mlp_adapters(model: nn.Module, ratio: float = 0.25, scale: float = 0.1,
                       blocks: Sequence[int] | None = None, root: str | Sequence[str] | None = None) -> list[str]:
    """AdaptFormer: a parallel adapter beside the ``mlp`` of each transformer block only.

    MLPs may name their layers ``fc1/fc2`` (timm, TinyViT), ``lin1/lin2`` (SAM) or
    ``linear1/linear2`` (MONAI, e.g. SwinUNETR's ``swinViT``). Returns the wrapped MLPs' names.
    """
    return _apply(model, ratio, scale, blocks, root, attention=False)
