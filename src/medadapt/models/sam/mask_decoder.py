"""SAM mask decoder: output tokens + prompts, two-way transformer, hypernetwork mask heads."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from medadapt.models.sam.common import LayerNorm2d
from medadapt.models.sam.transformer import ImageSide, TwoWayTransformer


class MLP(nn.Module):
    """``num_layers`` linears with ReLU in between (MaskFormer's prediction head)."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int) -> None:
        super().__init__()
        h = [hidden_dim] * (num_layers - 1)
        self.layers = nn.ModuleList(nn.Linear(n, k) for n, k in zip([input_dim] + h, h + [output_dim], strict=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


class MaskDecoder(nn.Module):
    def __init__(self, transformer_dim: int = 256, transformer: nn.Module | None = None,
                 num_multimask_outputs: int = 3, iou_head_depth: int = 3, iou_head_hidden_dim: int = 256) -> None:
        super().__init__()
        self.transformer_dim = transformer_dim
        self.transformer = transformer if transformer is not None else TwoWayTransformer(
            depth=2, embedding_dim=transformer_dim, num_heads=8, mlp_dim=2048)
        self.num_multimask_outputs = num_multimask_outputs
        self.iou_token = nn.Embedding(1, transformer_dim)
        self.num_mask_tokens = num_multimask_outputs + 1
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, transformer_dim)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(transformer_dim, transformer_dim // 4, kernel_size=2, stride=2),
            LayerNorm2d(transformer_dim // 4),
            nn.GELU(),
            nn.ConvTranspose2d(transformer_dim // 4, transformer_dim // 8, kernel_size=2, stride=2),
            nn.GELU(),
        )
        self.output_hypernetworks_mlps = nn.ModuleList(
            MLP(transformer_dim, transformer_dim, transformer_dim // 8, 3) for _ in range(self.num_mask_tokens)
        )
        self.iou_prediction_head = MLP(transformer_dim, iou_head_hidden_dim, self.num_mask_tokens, iou_head_depth)

    def forward(self, image_embeddings: torch.Tensor, image_pe: torch.Tensor,
                sparse_prompt_embeddings: torch.Tensor, dense_prompt_embeddings: torch.Tensor,
                multimask_output: bool, image_side: ImageSide | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Masks ``[B, M, 4h, 4w]`` and predicted IoU ``[B, M]``; M = 3 if multimask else 1.

        ``image_embeddings`` has batch 1 (one image, B prompts) or B (one prompt per image). ``image_side``
        (``transformer.image_side`` of ``image_embeddings + dense_prompt_embeddings``) replaces both.
        """
        masks, iou_pred = self.predict_masks(image_embeddings, image_pe, sparse_prompt_embeddings,
                                             dense_prompt_embeddings, image_side)
        sl = slice(1, None) if multimask_output else slice(0, 1)
        return masks[:, sl], iou_pred[:, sl]

    def predict_masks(self, image_embeddings: torch.Tensor, image_pe: torch.Tensor,
                      sparse_prompt_embeddings: torch.Tensor,
                      dense_prompt_embeddings: torch.Tensor,
                      image_side: ImageSide | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        iou_token_out, mask_tokens_out, src, (h, w) = self.attend(
            image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings, image_side)
        b, _, c = src.shape
        src = src.transpose(1, 2).reshape(b, c, h, w)
        upscaled = self.output_upscaling(src)  # [B, C/8, 4h, 4w]
        hyper_in = self.hypernetwork(mask_tokens_out)  # [B, M, C/8]
        _, c8, h4, w4 = upscaled.shape
        masks = (hyper_in @ upscaled.reshape(b, c8, h4 * w4)).reshape(b, -1, h4, w4)
        return masks, self.iou_prediction_head(iou_token_out)

    def attend(self, image_embeddings: torch.Tensor, image_pe: torch.Tensor, sparse_prompt_embeddings: torch.Tensor,
               dense_prompt_embeddings: torch.Tensor, image_side: ImageSide | None = None,
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, tuple[int, int]]:
        """The two-way transformer on the output tokens + prompts and the image: (IoU token ``[B, C]``,
        mask tokens ``[B, M, C]``, image tokens ``[B, h*w, C]``, (h, w))."""
        b = sparse_prompt_embeddings.shape[0]
        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        output_tokens = output_tokens.unsqueeze(0).expand(b, -1, -1)
        tokens = torch.cat((output_tokens, sparse_prompt_embeddings.to(output_tokens.dtype)), dim=1)

        # A shared embedding / PE stays batch 1 and broadcasts: the first attention makes the image tokens batch B
        # (an exported graph would copy an expanded tensor at every call).
        pos_src = image_pe
        if image_side is None:
            if image_embeddings.shape[0] not in (1, b):
                raise ValueError(
                    f"image embeddings have batch {image_embeddings.shape[0]} but the prompts have batch {b}; "
                    "pass one embedding shared by all prompts or one per prompt"
                )
            src = image_embeddings + dense_prompt_embeddings
            hw = tuple(src.shape[-2:])
        else:
            src, hw = None, image_side.hw

        hs, src = self.transformer(src, pos_src, tokens, image_side)
        return hs[:, 0, :], hs[:, 1 : 1 + self.num_mask_tokens, :], src, hw

    def hypernetwork(self, mask_tokens_out: torch.Tensor) -> torch.Tensor:
        """Mask tokens ``[B, M, C]`` -> per-mask weights over the upscaled channels ``[B, M, C/8]``."""
        return torch.stack([mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(self.output_hypernetworks_mlps)],
                           dim=1)
