"""The ``Sam`` wrapper: image encoder + prompt encoder + mask decoder.

Unlike segment-anything's ``Sam`` it does no pre/post-processing (that is
``medadapt.models.preprocess``), so one module serves training, prompted inference and export:
``encode`` once per image, ``decode`` once per set of prompts. A caller that decodes one embedding many
times (corrective clicks) can also take its prompt-free decoder work once (``decoder_image``) and pass it
to every ``decode`` of that embedding without a mask prompt.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import chain

import torch
from torch import nn

from medadapt.models.sam.mask_decoder import MaskDecoder
from medadapt.models.sam.prompt_encoder import PromptEncoder
from medadapt.models.sam.transformer import ImageSide

Points = tuple[torch.Tensor, torch.Tensor]


def tensor_key(t: torch.Tensor) -> tuple:
    """Storage, version, shape, strides and dtype of ``t``: equal keys (while the first tensor is held, so its
    storage is not reused) mean the very same values, not changed in place since."""
    return t.data_ptr(), t._version, tuple(t.shape), t.stride(), t.dtype


@dataclass(frozen=True)
class DecoderImage:
    """One embedding's prompt-free decoder work (:meth:`Sam.decoder_image`).

    ``decode`` uses it only for the embedding it came from, unchanged (``source_key``; holding ``source``
    keeps that storage from being reused) and while the weights it depends on are unchanged (``weights``);
    otherwise it decodes as if it were not given.
    """

    side: ImageSide
    source: torch.Tensor
    source_key: tuple
    weights: tuple


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
               multimask_output: bool = False,
               decoder_image: DecoderImage | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompts -> (low-res mask logits ``[B, M, 256, 256]``, predicted IoU ``[B, M]``).

        ``points`` = (coords ``[B, N, 2]`` (x, y) in input pixels, labels ``[B, N]``),
        ``boxes`` ``[B, 4]`` (x0, y0, x1, y1), ``masks`` ``[B, 1, 256, 256]`` logits.
        ``image_embeddings`` is ``[1, ...]`` (shared by all B prompts) or ``[B, ...]``.
        ``decoder_image``: :meth:`decoder_image` of ``image_embeddings`` (used when it is current and there
        is no mask prompt; the result is the same either way).
        """
        if boxes is not None and boxes.ndim == 3:
            boxes = boxes.reshape(-1, 4)
        sparse, dense = self.prompt_encoder(points=points, boxes=boxes, masks=masks)
        if masks is None:
            dense = dense[:1]  # one no-mask prompt for all B: it broadcasts rather than copying the image B times
        usable = decoder_image is not None and masks is None and self.is_current(decoder_image, image_embeddings)
        return self.mask_decoder(
            image_embeddings=image_embeddings,
            image_pe=self.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask_output,
            image_side=decoder_image.side if usable else None,
        )

    def decoder_image(self, image_embeddings: torch.Tensor) -> DecoderImage:
        """The prompt-free decoder work for ``image_embeddings`` ``[1, C, h, w]`` without a mask prompt."""
        if image_embeddings.dim() != 4 or image_embeddings.shape[0] != 1:
            raise ValueError(f"decoder_image takes one embedding [1, C, h, w], got {tuple(image_embeddings.shape)}")
        dense = self.prompt_encoder.no_mask_dense()
        side = self.mask_decoder.transformer.image_side(image_embeddings + dense, self.get_dense_pe())
        return DecoderImage(side, image_embeddings, tensor_key(image_embeddings), self._decoder_image_weights())

    def _decoder_image_weights(self) -> tuple:
        """Identity and version of every tensor (and PEFT switch) a :class:`DecoderImage` depends on."""
        block = self.mask_decoder.transformer.layers[0]
        modules = (self.prompt_encoder.no_mask_embed, self.prompt_encoder.pe_layer,
                   block.cross_attn_token_to_image.k_proj, block.cross_attn_token_to_image.v_proj,
                   block.cross_attn_image_to_token.q_proj)
        key = []
        for m in modules:
            key += [(t.data_ptr(), t._version) for t in chain(m.parameters(), m.buffers())]
            key += [getattr(m, "merged", None), getattr(m, "disable_adapters", None),
                    str(getattr(m, "active_adapters", None))]
        return tuple(key)

    def is_current(self, image: DecoderImage, image_embeddings: torch.Tensor) -> bool:
        """Whether ``decode`` would use ``image`` for ``image_embeddings`` (outside autograd, weights unchanged)."""
        return (not torch.is_grad_enabled() and tensor_key(image_embeddings) == image.source_key
                and image.weights == self._decoder_image_weights())

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
