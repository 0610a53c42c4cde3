"""The ``Sam`` wrapper: image encoder + prompt encoder + mask decoder.

Unlike segment-anything's ``Sam`` it does no pre/post-processing (that is
``medadapt.models.preprocess``), so one module serves training, prompted inference and export:
``encode`` once per image, ``decode`` once per set of prompts.
"""

from __future__ import annotations

import torch
from torch import nn

from medadapt.models.sam.mask_decoder import MaskDecoder
from medadapt.models.sam.prompt_encoder import PromptEncoder

Points = tuple[torch.Tensor, torch.Tensor]


class Sam(nn.Module):
    def __init__(self, image_encoder: nn.Module, prompt_encoder: PromptEncoder, mask_decoder: MaskDecoder,
                 image_size: int) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        self.image_size = image_size

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Preprocessed ``[B, 3, S, S]`` images -> embeddings ``[B, 256, 64, 64]``."""
        return self.image_encoder(images)

    def get_dense_pe(self) -> torch.Tensor:
        """Positional encoding of the embedding grid, ``[1, 256, 64, 64]``."""
        return self.prompt_encoder.get_dense_pe()

    def decode(self, image_embeddings: torch.Tensor, points: Points | None = None,
               boxes: torch.Tensor | None = None, masks: torch.Tensor | None = None,
               multimask_output: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompts -> (low-res mask logits ``[B, M, 256, 256]``, predicted IoU ``[B, M]``).

        ``points`` = (coords ``[B, N, 2]`` (x, y) in input pixels, labels ``[B, N]``),
        ``boxes`` ``[B, 4]`` (x0, y0, x1, y1), ``masks`` ``[B, 1, 256, 256]`` logits.
        ``image_embeddings`` is ``[1, ...]`` (shared by all B prompts) or ``[B, ...]``.
        """
        if boxes is not None and boxes.ndim == 3:
            boxes = boxes.reshape(-1, 4)
        sparse, dense = self.prompt_encoder(points=points, boxes=boxes, masks=masks)
        return self.mask_decoder(
            image_embeddings=image_embeddings,
            image_pe=self.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask_output,
        )

    def forward(self, images: torch.Tensor, boxes: torch.Tensor | None = None, points: Points | None = None,
                masks: torch.Tensor | None = None,
                multimask_output: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Training path: ``decode(encode(images), ...)`` with one prompt per image."""
        return self.decode(self.encode(images), points=points, boxes=boxes, masks=masks,
                           multimask_output=multimask_output)


def build_sam(image_encoder: nn.Module) -> Sam:
    """Attach SAM's standard prompt encoder and mask decoder to ``image_encoder``.

    The encoder must expose ``img_size`` (input side S) and ``embedding_size`` (output grid).
    """
    grid = image_encoder.embedding_size
    size = image_encoder.img_size
    prompt_encoder = PromptEncoder(embed_dim=256, image_embedding_size=(grid, grid),
                                   input_image_size=(size, size), mask_in_chans=16)
    return Sam(image_encoder, prompt_encoder, MaskDecoder(transformer_dim=256), image_size=size)
