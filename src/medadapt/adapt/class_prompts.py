"""Automatic (prompt-free) mode: learned class prompt tokens for SAM-family decoders.

SAM needs a prompt per object; a clinic wants "segment every structure of this dataset" with no
input. Each class gets a few learned sparse prompt tokens (prompt tuning, as finetune-SAM's
automatic mode and AutoSAM do) that replace the box/point tokens. They start as the prompt
encoder's embedding of a whole-image box, so the untrained automatic model behaves like SAM
given the whole image as its box. The decoder runs once per class on the shared image
embedding; the multi-class label is the arg-max over class logits where that logit is > 0.

peft's prompt-tuning targets token sequences of language models and has no notion of SAM's
sparse/dense prompt split, hence this small module.
"""

from __future__ import annotations

import torch
from torch import nn


class ClassPrompts(nn.Module):
    """``num_classes`` × ``tokens`` learned sparse prompt embeddings ``[C, T, 256]``."""

    def __init__(self, num_classes: int, embed_dim: int = 256, tokens: int = 2):
        super().__init__()
        self.num_classes = num_classes
        self.tokens = nn.Parameter(torch.zeros(num_classes, tokens, embed_dim))

    @torch.no_grad()
    def init_from_whole_image_box(self, prompt_encoder: nn.Module) -> None:
        """Start every class as the embedding of the box (0, 0, S-1, S-1)."""
        h, w = prompt_encoder.input_image_size
        box = torch.tensor([[0.0, 0.0, w - 1.0, h - 1.0]])
        sparse, _ = prompt_encoder(points=None, boxes=box, masks=None)  # [1, 2, C]
        t = self.tokens.shape[1]
        init = sparse[0].repeat((t + 1) // 2, 1)[:t]
        self.tokens.copy_(init.expand_as(self.tokens))

    def decode(self, model: nn.Module, embeddings: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Embeddings ``[B, 256, 64, 64]`` → class logits ``[B, C, 256, 256]`` and IoU ``[B, C]``."""
        b, c = embeddings.shape[0], self.num_classes
        src = embeddings.repeat_interleave(c, dim=0)  # [B*C, 256, 64, 64]
        sparse = self.tokens.to(embeddings.dtype).repeat(b, 1, 1)  # [B*C, T, 256]
        pe = model.prompt_encoder
        dense = pe.no_mask_dense(b * c)
        low_res, iou = model.mask_decoder(
            image_embeddings=src,
            image_pe=pe.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=False,
        )
        return low_res.reshape(b, c, *low_res.shape[-2:]), iou.reshape(b, c)


def labels_from_class_logits(logits: torch.Tensor) -> torch.Tensor:
    """``[B, C, H, W]`` logits → ``[B, H, W]`` labels 0..C (0 where no class logit is positive)."""
    best, idx = logits.max(dim=1)
    return torch.where(best > 0, idx + 1, torch.zeros_like(idx))


def attach_class_prompts(model: nn.Module, num_classes: int, tokens: int = 2, *, init: bool = True) -> ClassPrompts:
    """Give a SAM model learned class prompts (automatic mode) as ``model.class_prompts``."""
    cp = ClassPrompts(num_classes, tokens=tokens)
    if init:
        cp.init_from_whole_image_box(model.prompt_encoder)
    model.class_prompts = cp
    return cp


def attach_auto_prompts(net: nn.Module, meta: dict) -> None:
    """Give ``net`` the class prompts an automatic-mode adapter trained (before its weights load)."""
    extra = meta.get("extra") or {}
    if extra.get("class_prompt_tokens"):
        attach_class_prompts(net, len(extra["classes"]), extra["class_prompt_tokens"], init=False)
