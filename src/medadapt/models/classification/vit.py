"""Vision Transformer with timm's parameter layout (ViT-S/B/L, patch 16).

Medical foundation models for chest X-ray (MAE on CXR, MRM, CXR-MAE) publish checkpoints saved from
``timm.models.vision_transformer.VisionTransformer`` (or MAE's ``models_vit`` subclass of it). timm is
not a dependency, and MONAI's ``ViT`` names its parameters differently, so this module re-states the
architecture with the exact timm names: ``patch_embed.proj``, ``cls_token``, ``pos_embed``,
``blocks.{i}.norm1 / attn.qkv / attn.proj / norm2 / mlp.fc1 / mlp.fc2``, ``norm`` or ``fc_norm`` and
``head``. The fused ``attn.qkv`` Linear is what q/v LoRA (``medadapt.adapt``) wraps.

Pooling follows MAE fine-tuning: ``pool="gap"`` averages the patch tokens and applies ``fc_norm``
(``norm`` is then an identity, so a pre-training ``norm.*`` in a checkpoint is reported as unexpected,
as in MAE); ``pool="cls"`` applies ``norm`` and takes the class token.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from monai.networks.layers import DropPath
from torch import nn

Pool = Literal["gap", "cls"]

# name -> (embed_dim, depth, num_heads); all use patch 16, mlp_ratio 4, qkv bias, LayerNorm eps 1e-6.
VIT_CONFIGS: dict[str, tuple[int, int, int]] = {
    "vit_small_patch16": (384, 12, 6),
    "vit_base_patch16": (768, 12, 12),
    "vit_large_patch16": (1024, 24, 16),
}


class PatchEmbed(nn.Module):
    """Non-overlapping patches -> tokens: [B,C,H,W] -> [B, H/p * W/p, D]."""

    def __init__(self, patch_size: int = 16, in_chans: int = 3, embed_dim: int = 768):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.patch_size
        if x.shape[-2] % p or x.shape[-1] % p:
            raise ValueError(f"input size {tuple(x.shape[-2:])} is not a multiple of the patch size {p}")
        return self.proj(x).flatten(2).transpose(1, 2)  # [B,D,h,w] -> [B,h*w,D]


class Attention(nn.Module):
    """Multi-head self-attention with one fused qkv projection (timm layout)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, attn_drop: float = 0.0,
                 proj_drop: float = 0.0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each [B,heads,N,C/heads]
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0)
        x = x.transpose(1, 2).reshape(b, n, c)
        return self.proj_drop(self.proj(x))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.drop1 = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden, dim)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))


class Block(nn.Module):
    """Pre-norm transformer block with stochastic depth on both residual branches."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 drop: float = 0.0, attn_drop: float = 0.0, drop_path: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


def resample_pos_embed(pos_embed: torch.Tensor, grid: tuple[int, int], num_prefix_tokens: int = 1) -> torch.Tensor:
    """Bicubically resize the patch part of a [1, prefix + h*w, D] position embedding to ``grid``.

    Same as MAE's ``interpolate_pos_embed`` (bicubic, ``align_corners=False``); prefix tokens (the class
    token) are kept as they are. The source grid must be square, as in every published ViT checkpoint.
    """
    prefix, patches = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    n, dim = patches.shape[1], patches.shape[2]
    side = math.isqrt(n)
    if side * side != n:
        raise ValueError(f"position embedding has {n} patch tokens, not a square grid")
    if (side, side) == tuple(grid):
        return pos_embed
    patches = patches.reshape(1, side, side, dim).permute(0, 3, 1, 2).float()  # [1,D,s,s]
    patches = F.interpolate(patches, size=tuple(grid), mode="bicubic", align_corners=False)
    patches = patches.permute(0, 2, 3, 1).reshape(1, grid[0] * grid[1], dim).to(pos_embed.dtype)
    return torch.cat([prefix, patches], dim=1)


class VisionTransformer(nn.Module):
    """ViT classifier: [B,3,H,W] -> logits [B, num_classes].

    ``img_size`` fixes the stored ``pos_embed`` grid; other input sizes (multiples of the patch) are
    accepted and get a resampled embedding on the fly.
    """

    def __init__(self, *, img_size: int = 224, patch_size: int = 16, in_chans: int = 3, num_classes: int = 1000,
                 embed_dim: int = 768, depth: int = 12, num_heads: int = 12, mlp_ratio: float = 4.0,
                 qkv_bias: bool = True, drop_rate: float = 0.0, attn_drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0, pool: Pool = "gap"):
        super().__init__()
        if pool not in ("gap", "cls"):
            raise ValueError(f"pool must be 'gap' or 'cls', got {pool!r}")
        if img_size % patch_size:
            raise ValueError(f"img_size {img_size} is not a multiple of patch_size {patch_size}")
        self.pool = pool
        self.num_classes = num_classes
        self.embed_dim = embed_dim
        self.patch_size = patch_size
        self.grid = (img_size // patch_size, img_size // patch_size)

        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.grid[0] * self.grid[1], embed_dim))
        self.pos_drop = nn.Dropout(drop_rate)
        dpr = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]  # as linspace: grows with depth
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias, drop_rate, attn_drop_rate, dpr[i]) for i in range(depth)
        )
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6) if pool == "cls" else nn.Identity()
        self.fc_norm = nn.LayerNorm(embed_dim, eps=1e-6) if pool == "gap" else nn.Identity()
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self._init_weights()

    def _init_weights(self) -> None:
        # timm's default ViT init: truncated normal (std .02) for pos_embed and Linear weights.
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def no_weight_decay(self) -> set[str]:
        """Parameter names conventionally excluded from weight decay (as timm)."""
        return {"pos_embed", "cls_token"}

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """[B,3,H,W] -> tokens [B, 1 + h*w, D] (class token first), before the final norm."""
        grid = (x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size)
        x = self.patch_embed(x)  # [B,h*w,D]
        pos = self.pos_embed if grid == self.grid else resample_pos_embed(self.pos_embed, grid)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + pos
        x = self.pos_drop(x)
        for blk in self.blocks:
            x = blk(x)
        return x

    def forward_head(self, tokens: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Tokens [B,N,D] -> pooled [B,D] (``pre_logits``) or logits [B,num_classes]."""
        if self.pool == "gap":
            x = self.fc_norm(tokens[:, 1:].mean(dim=1))
        else:
            x = self.norm(tokens)[:, 0]
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward_pooled(self, x: torch.Tensor) -> torch.Tensor:
        """[B,3,H,W] -> the pooled token [B,D] before ``fc_norm`` / ``norm`` (what a frozen trunk gives;
        ``norm`` acts per token, so norming the class token alone equals ``norm(tokens)[:, 0]``)."""
        tokens = self.forward_features(x)
        return tokens[:, 1:].mean(dim=1) if self.pool == "gap" else tokens[:, 0]

    def forward_from_pooled(self, pooled: torch.Tensor) -> torch.Tensor:
        """[B,D] from :meth:`forward_pooled` -> logits; ``forward == forward_from_pooled(forward_pooled)``."""
        x = self.fc_norm(pooled) if self.pool == "gap" else self.norm(pooled)
        return self.head(self.head_drop(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def vit_patch16(name: str, **kwargs) -> VisionTransformer:
    """Build ``vit_{small,base,large}_patch16`` with timm's hyper-parameters."""
    if name not in VIT_CONFIGS:
        raise KeyError(f"unknown ViT {name!r}; known: {sorted(VIT_CONFIGS)}")
    dim, depth, heads = VIT_CONFIGS[name]
    return VisionTransformer(patch_size=16, embed_dim=dim, depth=depth, num_heads=heads, **kwargs)
