"""The exportable graphs of a SAM-family model: image encoder, prompt encoder, mask encoder, mask decoder.

``Sam.decode`` branches in Python on which prompts are present (points? box? both?), which a
static graph cannot do. As in segment-anything's ONNX export, every prompt becomes a *labelled
point*: label 0/1 are negative/positive clicks, 2/3 a box's top-left/bottom-right corner, -1 the
"not a point" padding SAM appends when there is no box. :class:`PromptGraph` embeds that one form
and equals ``PromptEncoder.forward`` for points, boxes and both (tests check it). The dense prompt
is a graph input of the decoder: without a mask prompt it is SAM's learned "no mask" embedding,
stored once with the dense positional encoding in ``constants.npz``; a mask prompt (the previous
low-res logits an interactive session feeds back) goes through :class:`MaskGraph`, the prompt
encoder's mask-downscaling convolutions, exported as its own small graph so that a decoder call
without a mask pays nothing for it.

:class:`DecoderGraph` returns all 1 + 3 mask logits and IoUs; the runtime takes the first (single-
mask output) or the other three (multimask), as ``MaskDecoder.forward`` does.

:class:`TokenDecoderGraph` is the same function laid out for the int8 decoder (``deploy.quantize``):
ONNX Runtime's dynamic quantisation covers MatMul, not ConvTranspose, and the output upscaling (two
2x2, stride-2 transposed convolutions) is a third of the decoder's work. A 2x2 stride-2 transposed
convolution is one matmul per image token followed by a depth-to-space, so the graph keeps the image
tokens in token order, runs both upscaling steps as matmuls (LayerNorm over the last axis, no
transposes), takes the hypernetwork product there, and rearranges only the 4 mask channels into pixels
at the end instead of the 32 upscaled channels.

Corrective clicks decode one embedding again and again. As ``Sam.decoder_image`` does in PyTorch, the
export splits the decoder's prompt-free part off: :class:`DecoderImageGraph` computes the image tokens
and the first layer's projections of them once per embedding (no mask prompt), and
:class:`CachedDecoderGraph` finishes the decoder from them for each set of prompts. Together they equal
:class:`DecoderGraph`; int8 exports hold both, quantised like the full decoder.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medadapt.models.sam.prompt_encoder import PromptEncoder
from medadapt.models.sam.transformer import ImageSide

# Labels of the labelled-point prompt form.
PAD, NEGATIVE, POSITIVE, BOX_TOP_LEFT, BOX_BOTTOM_RIGHT = -1, 0, 1, 2, 3


class EncoderGraph(nn.Module):
    """``images [B, 3, S, S]`` (preprocessed) → ``embeddings [B, 256, 64, 64]``."""

    def __init__(self, image_encoder: nn.Module):
        super().__init__()
        self.image_encoder = image_encoder

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.image_encoder(images)


class EncoderStemGraph(nn.Module):
    """``images [B, 3, S, S]`` → ``tokens [B, L, C]``: a staged encoder's stem and first ``stages`` stages."""

    def __init__(self, image_encoder: nn.Module, stages: int):
        super().__init__()
        self.image_encoder, self.stages = image_encoder, stages

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.image_encoder.forward_stem(images, self.stages)


class EncoderTrunkGraph(nn.Module):
    """``tokens [B, L, C]`` → ``embeddings [B, 256, 64, 64]``: the remaining stages and the neck."""

    def __init__(self, image_encoder: nn.Module, stages: int):
        super().__init__()
        self.image_encoder, self.stages = image_encoder, stages

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.image_encoder.forward_trunk(tokens, self.stages)


class PromptGraph(nn.Module):
    """``coords [B, N, 2]`` (x, y input pixels), ``labels [B, N]`` (int64) → sparse tokens ``[B, N, 256]``."""

    def __init__(self, prompt_encoder: PromptEncoder):
        super().__init__()
        self.pe = prompt_encoder

    def forward(self, coords: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        emb = self.pe.pe_layer.forward_with_coords(coords + 0.5, self.pe.input_image_size)  # pixel centres
        lab = labels[..., None]
        emb = torch.where(lab == PAD, self.pe.not_a_point_embed.weight, emb)
        for value, table in enumerate(self.pe.point_embeddings):  # 0 neg, 1 pos, 2/3 box corners
            emb = emb + (lab == value).to(emb.dtype) * table.weight
        return emb


class MaskGraph(nn.Module):
    """``masks [B, 1, 4h, 4w]`` (low-res logits) → dense prompt ``[B, 256, h, w]`` (``PromptEncoder``'s mask path)."""

    def __init__(self, prompt_encoder: PromptEncoder):
        super().__init__()
        self.mask_downscaling = prompt_encoder.mask_downscaling

    def forward(self, masks: torch.Tensor) -> torch.Tensor:
        return self.mask_downscaling(masks)


class DecoderGraph(nn.Module):
    """(embeddings ``[1|B, 256, h, w]``, image_pe ``[1, 256, h, w]``, sparse ``[B, N, 256]``,
    dense ``[1|B, 256, h, w]``) → (all mask logits ``[B, 4, 4h, 4w]``, IoU ``[B, 4]``)."""

    def __init__(self, mask_decoder: nn.Module):
        super().__init__()
        self.mask_decoder = mask_decoder

    def forward(self, embeddings, image_pe, sparse, dense, image_side: ImageSide | None = None):
        return self.mask_decoder.predict_masks(embeddings, image_pe, sparse, dense, image_side)


class TokenDecoderGraph(nn.Module):
    """:class:`DecoderGraph` with the output upscaling as matmuls in token order (see the module docstring);
    equal to it within float32 rounding."""

    def __init__(self, mask_decoder: nn.Module):
        super().__init__()
        self.mask_decoder = mask_decoder
        up = mask_decoder.output_upscaling
        self.norm = up[1]
        with torch.no_grad():  # [C_in, (ky, kx, C_out)] weights, stored as constants so they quantise
            for i, conv in (("0", up[0]), ("1", up[3])):
                self.register_buffer(f"weight{i}", conv.weight.permute(0, 2, 3, 1).reshape(conv.in_channels, -1).clone())
                self.register_buffer(f"bias{i}", conv.bias.repeat(4).clone())

    def forward(self, embeddings, image_pe, sparse, dense, image_side: ImageSide | None = None):
        d = self.mask_decoder
        iou_token, mask_tokens, src, (h, w) = d.attend(embeddings, image_pe, sparse, dense, image_side)
        b = src.shape[0]
        x = (src @ self.weight0 + self.bias0).reshape(b, h * w * 4, -1)  # token (y, x), sub-pixel (ky, kx)
        x = F.gelu(F.layer_norm(x, self.norm.normalized_shape, self.norm.weight, self.norm.bias, self.norm.eps))
        x = F.gelu((x @ self.weight1 + self.bias1).reshape(b, h * w * 16, -1))  # + second sub-pixel [B, 16hw, C/8]
        masks = x @ d.hypernetwork(mask_tokens).transpose(1, 2)  # [B, 16hw, M]
        m = masks.shape[-1]
        # (y, x, ky1, kx1, ky2, kx2) -> row 4y + 2ky1 + ky2, column 4x + 2kx1 + kx2
        masks = masks.reshape(b, h, w, 2, 2, 2, 2, m).permute(0, 7, 1, 3, 5, 2, 4, 6).reshape(b, m, 4 * h, 4 * w)
        return masks, d.iou_prediction_head(iou_token)


class DecoderImageGraph(nn.Module):
    """embeddings ``[1, 256, h, w]`` → the prompt-free decoder work (``ImageSide``): image tokens ``[1, h*w, 256]``,
    first-layer k, v, q ``[1, h*w, 128]``. The dense PE and the no-mask dense prompt are constants of the graph."""

    def __init__(self, mask_decoder: nn.Module, image_pe: torch.Tensor, no_mask_dense: torch.Tensor):
        super().__init__()
        self.mask_decoder = mask_decoder
        self.register_buffer("image_pe", image_pe.detach().float().clone())
        self.register_buffer("dense", no_mask_dense.detach().float().contiguous().clone())

    def forward(self, embeddings):
        side = self.mask_decoder.transformer.image_side(embeddings + self.dense, self.image_pe)
        return (side.keys, *side.first_layer)


class CachedDecoderGraph(nn.Module):
    """``decoder`` (a :class:`DecoderGraph` or :class:`TokenDecoderGraph`) from :class:`DecoderImageGraph`'s
    outputs, for one prompt set: (keys, k, v, q, sparse ``[1, N, 256]``) → (mask logits ``[1, 4, 4h, 4w]``,
    IoU ``[1, 4]``).

    The dense PE is a constant and the prompt batch is fixed to 1 (an interactive click), so ONNX Runtime folds
    the PE's token layout once instead of transposing it at every call.
    """

    def __init__(self, decoder: nn.Module, image_pe: torch.Tensor):
        super().__init__()
        self.decoder = decoder
        self.register_buffer("image_pe", image_pe.detach().float().clone())

    def forward(self, keys, k, v, q, sparse):
        side = ImageSide(keys, (k, v, q), tuple(self.image_pe.shape[-2:]))
        return self.decoder(None, self.image_pe, sparse, None, side)


def labelled_points(
    points: tuple[torch.Tensor, torch.Tensor] | None, boxes: torch.Tensor | None
) -> tuple[np.ndarray, np.ndarray]:
    """``Sam.decode``'s prompts in the labelled-point form: (coords ``[B, N, 2]`` float32, labels ``[B, N]`` int64).

    Order and padding follow ``PromptEncoder.forward``: points first, then a padding point when
    there is no box, then the box's two corners.
    """
    parts_c: list[np.ndarray] = []
    parts_l: list[np.ndarray] = []
    if points is not None:
        coords, labels = (np.asarray(t, dtype=np.float32) for t in points)
        b = coords.shape[0]
        parts_c.append(coords)
        parts_l.append(labels.astype(np.int64))
        if boxes is None:
            parts_c.append(np.zeros((b, 1, 2), np.float32))
            parts_l.append(np.full((b, 1), PAD, np.int64))
    if boxes is not None:
        bx = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
        parts_c.append(bx.reshape(-1, 2, 2))
        parts_l.append(np.tile(np.array([[BOX_TOP_LEFT, BOX_BOTTOM_RIGHT]], np.int64), (bx.shape[0], 1)))
    if not parts_c:
        raise ValueError("a prompt needs points, a box or both")
    return np.concatenate(parts_c, axis=1), np.concatenate(parts_l, axis=1)


def prompt_constants(prompt_encoder: PromptEncoder) -> dict[str, np.ndarray]:
    """Inputs that never change between calls, stored once: dense PE and the no-mask dense prompt."""
    with torch.no_grad():
        image_pe = prompt_encoder.get_dense_pe().float().numpy()  # [1, 256, h, w]
        dense = prompt_encoder.no_mask_dense().float().contiguous().numpy()  # [1, 256, h, w]
    return {"image_pe": image_pe, "no_mask_dense": dense}


def graph_file(name: str, fmt: str, precision: str = "fp32") -> str:
    """File name of a graph: ``image_encoder.onnx``, ``image_encoder.int8.xml`` (+ ``.bin``)."""
    tag = "" if precision == "fp32" else f".{precision}"
    return f"{name}{tag}.{'onnx' if fmt == 'onnx' else 'xml'}"
