"""SAM prompt encoder: points and boxes -> sparse tokens, masks -> dense embedding.

The dense positional encoding of the embedding grid depends only on a fixed random buffer, so
``get_dense_pe`` computes it once and reuses it (an interactive click decodes many times on one
embedding); it is recomputed when that buffer is replaced or changed (a loaded checkpoint).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from medadapt.models.sam.common import LayerNorm2d


class PositionEmbeddingRandom(nn.Module):
    """Random Fourier features of coordinates normalised to [0, 1]."""

    def __init__(self, num_pos_feats: int = 64) -> None:
        super().__init__()
        self.register_buffer("positional_encoding_gaussian_matrix", torch.randn((2, num_pos_feats)))

    def _pe_encoding(self, coords: torch.Tensor) -> torch.Tensor:
        coords = 2 * coords - 1
        coords = coords @ self.positional_encoding_gaussian_matrix
        coords = 2 * math.pi * coords
        return torch.cat([torch.sin(coords), torch.cos(coords)], dim=-1)

    def forward(self, size: tuple[int, int]) -> torch.Tensor:
        """Encoding of the pixel-centre grid of an ``h x w`` map: ``[C, h, w]``."""
        h, w = size
        device = self.positional_encoding_gaussian_matrix.device
        grid = torch.ones((h, w), device=device, dtype=torch.float32)
        y_embed = (grid.cumsum(dim=0) - 0.5) / h
        x_embed = (grid.cumsum(dim=1) - 0.5) / w
        return self._pe_encoding(torch.stack([x_embed, y_embed], dim=-1)).permute(2, 0, 1)

    def forward_with_coords(self, coords: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
        """``coords`` ``[B, N, 2]`` as (x, y) pixels of an ``image_size`` (H, W) input -> ``[B, N, C]``."""
        size_xy = torch.tensor([image_size[1], image_size[0]], dtype=coords.dtype, device=coords.device)
        return self._pe_encoding((coords / size_xy).to(torch.float))


class PromptEncoder(nn.Module):
    def __init__(self, embed_dim: int, image_embedding_size: tuple[int, int],
                 input_image_size: tuple[int, int], mask_in_chans: int = 16) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.input_image_size = input_image_size
        self.image_embedding_size = image_embedding_size
        self.pe_layer = PositionEmbeddingRandom(embed_dim // 2)
        # 0: negative point, 1: positive point, 2: box top-left, 3: box bottom-right
        self.point_embeddings = nn.ModuleList(nn.Embedding(1, embed_dim) for _ in range(4))
        self.not_a_point_embed = nn.Embedding(1, embed_dim)
        self.mask_input_size = (4 * image_embedding_size[0], 4 * image_embedding_size[1])
        self.mask_downscaling = nn.Sequential(
            nn.Conv2d(1, mask_in_chans // 4, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans // 4),
            nn.GELU(),
            nn.Conv2d(mask_in_chans // 4, mask_in_chans, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans),
            nn.GELU(),
            nn.Conv2d(mask_in_chans, embed_dim, kernel_size=1),
        )
        self.no_mask_embed = nn.Embedding(1, embed_dim)
        self._dense_pe: tuple[tuple, torch.Tensor] | None = None  # (key of the buffer it came from, encoding)

    def get_dense_pe(self) -> torch.Tensor:
        """Positional encoding of the image-embedding grid: ``[1, C, h, w]`` (cached, see the module docstring)."""
        gauss = self.pe_layer.positional_encoding_gaussian_matrix
        key = (gauss.data_ptr(), gauss._version, gauss.device, gauss.dtype, tuple(self.image_embedding_size))
        if self._dense_pe is None or self._dense_pe[0] != key:
            # a normal tensor even inside inference_mode, so later training steps may use it too
            with torch.inference_mode(False), torch.no_grad():
                self._dense_pe = key, self.pe_layer(self.image_embedding_size).unsqueeze(0)
        return self._dense_pe[1]

    def _embed_points(self, points: torch.Tensor, labels: torch.Tensor, pad: bool) -> torch.Tensor:
        points = points + 0.5  # pixel centre
        if pad:  # without a box, SAM appends one "not a point" token
            points = torch.cat([points, points.new_zeros(points.shape[0], 1, 2)], dim=1)
            labels = torch.cat([labels, -labels.new_ones(labels.shape[0], 1)], dim=1)
        emb = self.pe_layer.forward_with_coords(points, self.input_image_size)
        labels = labels[..., None]
        emb = torch.where(labels == -1, self.not_a_point_embed.weight, emb)
        emb = emb + (labels == 0) * self.point_embeddings[0].weight
        return emb + (labels == 1) * self.point_embeddings[1].weight

    def _embed_boxes(self, boxes: torch.Tensor) -> torch.Tensor:
        coords = (boxes + 0.5).reshape(-1, 2, 2)  # pixel centre; corners as two points
        emb = self.pe_layer.forward_with_coords(coords, self.input_image_size)
        corners = torch.cat([self.point_embeddings[2].weight, self.point_embeddings[3].weight])  # [2, C]
        return emb + corners

    def forward(self, points: tuple[torch.Tensor, torch.Tensor] | None, boxes: torch.Tensor | None,
                masks: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns sparse ``[B, N, C]`` and dense ``[B, C, h, w]`` prompt embeddings.

        ``points``: (coords ``[B, N, 2]`` in input pixels, labels ``[B, N]``: 1 fg, 0 bg, -1 pad);
        ``boxes``: ``[B, 4]`` or ``[B, 1, 4]``; ``masks``: ``[B, 1, 4h, 4w]`` logits.
        """
        bs = _batch_size(points, boxes, masks)
        device = self.point_embeddings[0].weight.device
        sparse = [torch.empty((bs, 0, self.embed_dim), device=device)]
        if points is not None:
            coords, labels = points
            sparse.append(self._embed_points(coords, labels, pad=boxes is None))
        if boxes is not None:
            sparse.append(self._embed_boxes(boxes))
        sparse_embeddings = torch.cat(sparse, dim=1)
        if masks is not None:
            dense = self.mask_downscaling(masks)
        else:
            dense = self.no_mask_dense(bs)
        return sparse_embeddings, dense

    def no_mask_dense(self, batch: int = 1) -> torch.Tensor:
        """The dense prompt without a mask: the learned no-mask embedding at every grid cell, ``[batch, C, h, w]``
        (an expanded view)."""
        return self.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(batch, -1, *self.image_embedding_size)


def _batch_size(points, boxes, masks) -> int:
    if points is not None:
        return points[0].shape[0]
    if boxes is not None:
        return boxes.shape[0]
    if masks is not None:
        return masks.shape[0]
    return 1
