"""SAM's two-way transformer: prompt tokens and image tokens attend to each other.

``Attention`` keeps separate ``q_proj``/``k_proj``/``v_proj``/``out_proj`` linears (the names
PEFT methods target) and computes attention with ``F.scaled_dot_product_attention``. The image
tokens are made contiguous once (``[B, h*w, C]``) rather than left as a permuted view, which every
linear layer and addition would otherwise copy or stride through on each of the decoder's passes.

Part of the first layer never sees a prompt: the token-to-image keys and values and the image-to-token
queries are projections of the image tokens alone. :class:`ImageSide` holds them (and the image tokens)
so that a caller decoding the same image embedding many times (corrective clicks on one slice) computes
them once; the decoder's outputs are bitwise the same with or without it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from medadapt.models.sam.common import MLPBlock


def _tokens(grid: torch.Tensor) -> torch.Tensor:
    """``[B, C, h, w]`` -> contiguous image tokens ``[B, h*w, C]``."""
    return grid.flatten(2).transpose(1, 2).contiguous()


class Attention(nn.Module):
    """Multi-head attention whose internal width may be downsampled (``dim // downsample_rate``)."""

    def __init__(self, embedding_dim: int, num_heads: int, downsample_rate: int = 1) -> None:
        super().__init__()
        self.embedding_dim = embedding_dim
        self.internal_dim = embedding_dim // downsample_rate
        self.num_heads = num_heads
        if self.internal_dim % num_heads:
            raise ValueError("num_heads must divide embedding_dim // downsample_rate")
        self.q_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.k_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.v_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.out_proj = nn.Linear(self.internal_dim, embedding_dim)

    def _separate_heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        return x.reshape(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)  # B heads N c

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return self.attend(self.q_proj(q), self.k_proj(k), self.v_proj(v))

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Attention of already projected ``q`` ``[B, Nq, C']``, ``k``/``v`` ``[B, Nk, C']``, then ``out_proj``."""
        q = self._separate_heads(q)
        k = self._separate_heads(k)
        v = self._separate_heads(v)
        out = F.scaled_dot_product_attention(q, k, v)  # B heads Nq c
        b, _, n, _ = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(b, n, self.internal_dim))


@dataclass(frozen=True)
class ImageSide:
    """The prompt-free part of decoding one image embedding (batch 1): see the module docstring."""

    keys: torch.Tensor  # [1, h*w, C] image tokens (embedding + dense prompt)
    first_layer: tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # token->image k, v; image->token q [1, h*w, C']
    hw: tuple[int, int]


class TwoWayAttentionBlock(nn.Module):
    """Token self-attention, tokens -> image, token MLP, image -> tokens (each with a norm)."""

    def __init__(self, embedding_dim: int, num_heads: int, mlp_dim: int = 2048,
                 attention_downsample_rate: int = 2, skip_first_layer_pe: bool = False) -> None:
        super().__init__()
        self.self_attn = Attention(embedding_dim, num_heads)
        self.norm1 = nn.LayerNorm(embedding_dim)
        self.cross_attn_token_to_image = Attention(embedding_dim, num_heads, attention_downsample_rate)
        self.norm2 = nn.LayerNorm(embedding_dim)
        self.mlp = MLPBlock(embedding_dim, mlp_dim, nn.ReLU)
        self.norm3 = nn.LayerNorm(embedding_dim)
        self.norm4 = nn.LayerNorm(embedding_dim)
        self.cross_attn_image_to_token = Attention(embedding_dim, num_heads, attention_downsample_rate)
        self.skip_first_layer_pe = skip_first_layer_pe

    def image_projections(self, keys: torch.Tensor,
                          key_pe: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """What this block projects from the image tokens it is given: token->image k, v; image->token q."""
        k = keys + key_pe
        return (self.cross_attn_token_to_image.k_proj(k), self.cross_attn_token_to_image.v_proj(keys),
                self.cross_attn_image_to_token.q_proj(k))

    def forward(self, queries: torch.Tensor, keys: torch.Tensor, query_pe: torch.Tensor,
                key_pe: torch.Tensor, projected: tuple[torch.Tensor, ...] | None = None,
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """``projected``: :meth:`image_projections` of ``keys`` (batch 1 or the queries' batch), computed before."""
        if self.skip_first_layer_pe:
            queries = self.self_attn(q=queries, k=queries, v=queries)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q=q, k=q, v=queries)
        queries = self.norm1(queries)

        t2i, i2t = self.cross_attn_token_to_image, self.cross_attn_image_to_token
        if projected is None:
            projected = self.image_projections(keys, key_pe)
        k, v, image_q = projected  # batch 1 (one image for B prompts) broadcasts in the attention
        q = queries + query_pe
        queries = self.norm2(queries + t2i.attend(t2i.q_proj(q), k, v))

        queries = self.norm3(queries + self.mlp(queries))

        q = queries + query_pe
        keys = self.norm4(keys + i2t.attend(image_q, i2t.k_proj(q), i2t.v_proj(queries)))
        return queries, keys


class TwoWayTransformer(nn.Module):
    def __init__(self, depth: int = 2, embedding_dim: int = 256, num_heads: int = 8, mlp_dim: int = 2048,
                 attention_downsample_rate: int = 2) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            TwoWayAttentionBlock(embedding_dim, num_heads, mlp_dim, attention_downsample_rate,
                                 skip_first_layer_pe=(i == 0))
            for i in range(depth)
        )
        self.final_attn_token_to_image = Attention(embedding_dim, num_heads, attention_downsample_rate)
        self.norm_final_attn = nn.LayerNorm(embedding_dim)

    def image_side(self, image_embedding: torch.Tensor, image_pe: torch.Tensor) -> ImageSide:
        """The prompt-free part of :meth:`forward` for ``image_embedding`` ``[1, C, h, w]`` (embedding + dense prompt)."""
        keys, key_pe = _tokens(image_embedding), _tokens(image_pe)
        return ImageSide(keys, self.layers[0].image_projections(keys, key_pe), tuple(image_embedding.shape[-2:]))

    def forward(self, image_embedding: torch.Tensor | None, image_pe: torch.Tensor, point_embedding: torch.Tensor,
                image_side: ImageSide | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``image_embedding``/``image_pe`` ``[1|B, C, h, w]``, tokens ``[B, N, C]``; with ``image_side`` (from
        :meth:`image_side`) ``image_embedding`` is not read.

        Returns the processed tokens ``[B, N, C]`` and image tokens ``[B, h*w, C]``.
        """
        key_pe = _tokens(image_pe)
        if image_side is None:
            keys, projected = _tokens(image_embedding), None
        else:
            keys, projected = image_side.keys, image_side.first_layer
        queries = point_embedding
        for i, layer in enumerate(self.layers):
            queries, keys = layer(queries, keys, query_pe=point_embedding, key_pe=key_pe,
                                  projected=projected if i == 0 else None)
        q = queries + point_embedding
        k = keys + key_pe
        queries = self.norm_final_attn(queries + self.final_attn_token_to_image(q=q, k=k, v=keys))
        return queries, keys
