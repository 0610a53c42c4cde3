"""Image, prompt and mask transforms into and out of a SAM model's input frame.

Two official pipelines, reproduced operation by operation because a model is only as good as
the preprocessing it was trained with:

- ``minmax`` (LiteMedSAM / MedSAM, CVPR 2024 "MedSAM on Laptop" code): grey -> 3 channels,
  longest side resized to S with ``cv2.INTER_AREA`` to ``(int(w*s+0.5), int(h*s+0.5))``,
  min-max normalised to [0, 1] after resizing (denominator clipped at 1e-8), zero-padded
  bottom/right to S x S. LiteMedSAM boxes are ``int(coord * S / max(H, W))``.
- ``imagenet`` (segment-anything / MobileSAM ``ResizeLongestSide``): 8-bit RGB resized with
  PIL bilinear (what torchvision's ``resize`` does on a PIL image), ``(x - mean) / std`` on
  0..255, zero-padded to S x S. Boxes and points are scaled by new/old size per axis.

Masks come back through :func:`postprocess_logits`: low-res logits -> S x S (if needed) ->
crop the unpadded part -> bilinear to the original size. MONAI's ``ResizeWithPadOrCrop`` and
friends centre-pad and resize differently, which is why this is written out here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from medadapt.models.registry import ModelSpec

PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)
_CV2_DTYPES = (np.uint8, np.uint16, np.float32, np.float64)


@dataclass(frozen=True)
class Transform:
    """Geometry of one image's trip into the S x S model frame."""

    original_hw: tuple[int, int]
    resized_hw: tuple[int, int]
    image_size: int
    box_rounding: Literal["trunc", "float"] = "float"
    normalization: Literal["imagenet", "minmax"] = "imagenet"

    @property
    def scale(self) -> float:
        """``S / max(H, W)``."""
        return self.image_size / max(self.original_hw)

    def apply_boxes(self, boxes: np.ndarray) -> np.ndarray:
        """``[N, 4]`` (x0, y0, x1, y1) original pixels -> model-frame pixels, float32."""
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        if self.box_rounding == "trunc":  # LiteMedSAM's resize_box_to_256: int(box * ratio)
            return np.trunc(boxes * self.scale).astype(np.float32)
        return self.apply_points(boxes.reshape(-1, 2)).reshape(-1, 4)

    def apply_points(self, coords: np.ndarray) -> np.ndarray:
        """``[..., 2]`` (x, y) original pixels -> model-frame pixels, float32 (SAM's apply_coords)."""
        coords = np.array(coords, dtype=np.float64)
        (h, w), (nh, nw) = self.original_hw, self.resized_hw
        coords[..., 0] *= nw / w
        coords[..., 1] *= nh / h
        return coords.astype(np.float32)

    def mask_to_model(self, mask: np.ndarray,
                      interpolation: Literal["area", "nearest"] | None = None) -> np.ndarray:
        """Resize a label mask ``[H, W]`` into the padded ``[S, S]`` model frame.

        The default follows the official code of each pipeline: the CVPR24 LiteMedSAM box
        propagation resizes the previous slice's mask with the image resize (``INTER_AREA``,
        values blend at edges and are rounded); otherwise nearest neighbour keeps labels intact.
        """
        if interpolation is None:
            interpolation = "area" if self.normalization == "minmax" else "nearest"
        mask = np.asarray(mask)
        if mask.shape != self.original_hw:
            raise ValueError(f"mask shape {mask.shape} != image shape {self.original_hw}")
        if mask.dtype == bool or mask.dtype.kind in "iu":
            mask = mask.astype(np.uint8 if mask.max(initial=0) <= 255 and mask.min(initial=0) >= 0 else np.float32)
        flag = cv2.INTER_AREA if interpolation == "area" else cv2.INTER_NEAREST
        nh, nw = self.resized_hw
        resized = cv2.resize(mask, (nw, nh), interpolation=flag)
        return _pad(resized, self.image_size)


def preprocess_image(image: np.ndarray, spec: ModelSpec, image_size: int | None = None
                     ) -> tuple[torch.Tensor, Transform]:
    """``[H, W]`` or ``[H, W, 3]`` array -> model input ``[3, S, S]`` float32 and its Transform."""
    size = spec.image_size if image_size is None else image_size
    image = _as_hwc_or_hw(image)
    h, w = image.shape[:2]
    resized_hw = resized_shape(h, w, size)
    if spec.normalization == "minmax":
        arr = _minmax_resized(image, resized_hw)  # [h', w', 3] float32 in [0, 1]
        tensor = torch.from_numpy(np.ascontiguousarray(_pad(arr, size))).permute(2, 0, 1)
    else:
        arr = _pil_bilinear(_to_uint8_rgb(image), resized_hw)  # [h', w', 3] uint8
        x = torch.from_numpy(arr).permute(2, 0, 1)
        x = (x - torch.tensor(PIXEL_MEAN).view(3, 1, 1)) / torch.tensor(PIXEL_STD).view(3, 1, 1)
        tensor = F.pad(x, (0, size - resized_hw[1], 0, size - resized_hw[0]))
    return tensor.contiguous(), Transform((h, w), resized_hw, size, spec.box_rounding, spec.normalization)


def preprocess_slices(slices: np.ndarray, spec: ModelSpec, image_size: int | None = None
                      ) -> tuple[torch.Tensor, Transform]:
    """A stack ``[D, H, W]`` (or ``[D, H, W, 3]``) -> ``[D, 3, S, S]``; each slice normalised alone."""
    slices = np.asarray(slices)
    if slices.ndim not in (3, 4) or slices.shape[0] == 0:
        raise ValueError(f"expected a [D, H, W] or [D, H, W, 3] stack, got shape {slices.shape}")
    out = [preprocess_image(s, spec, image_size) for s in slices]
    return torch.stack([t for t, _ in out]), out[0][1]


def postprocess_logits(low_res: torch.Tensor, transform: Transform) -> torch.Tensor:
    """Low-res logits ``[B, M, h, w]`` -> logits ``[B, M, H, W]`` on the original image.

    Threshold at 0 for masks (same as sigmoid > 0.5 in the official code).
    """
    size = transform.image_size
    x = low_res.float()
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, (size, size), mode="bilinear", align_corners=False)
    nh, nw = transform.resized_hw
    x = x[..., :nh, :nw]
    return F.interpolate(x, transform.original_hw, mode="bilinear", align_corners=False)


def resized_shape(h: int, w: int, size: int) -> tuple[int, int]:
    """Longest side -> ``size``, rounding as SAM's ``get_preprocess_shape``; returns (h', w')."""
    scale = size * 1.0 / max(h, w)
    return int(h * scale + 0.5), int(w * scale + 0.5)


def _as_hwc_or_hw(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    elif image.ndim == 3 and image.shape[2] == 4:  # RGBA: drop alpha
        image = image[:, :, :3]
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] != 3):
        raise ValueError(f"expected an [H, W] or [H, W, 3] image, got shape {image.shape}")
    if min(image.shape[:2]) == 0:
        raise ValueError(f"empty image of shape {image.shape}")
    return image


def _minmax_resized(image: np.ndarray, resized_hw: tuple[int, int]) -> np.ndarray:
    """CVPR24 LiteMedSAM: INTER_AREA resize, then (x - min) / clip(max - min, 1e-8)."""
    if image.dtype.type not in _CV2_DTYPES:  # cv2 cannot resize it; int16 would overflow below
        image = image.astype(np.float32)
    nh, nw = resized_hw
    # Channels are resized independently, so a grey image is resized once and repeated.
    img = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_AREA)
    img = (img - img.min()) / np.clip(img.max() - img.min(), a_min=1e-8, a_max=None)
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=-1)
    return img.astype(np.float32)


def _to_uint8_rgb(image: np.ndarray) -> np.ndarray:
    """SAM expects 8-bit RGB. 8-bit data stored in another dtype is rounded; anything else is
    min-max scaled to 0..255."""
    if image.dtype != np.uint8:
        img = image.astype(np.float64)
        lo, hi = float(img.min()), float(img.max())
        if lo < 0 or hi > 255:
            img = (img - lo) / max(hi - lo, 1e-8) * 255.0
        image = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=-1)
    return image


def _pil_bilinear(image: np.ndarray, resized_hw: tuple[int, int]) -> np.ndarray:
    nh, nw = resized_hw
    return np.array(Image.fromarray(np.ascontiguousarray(image)).resize((nw, nh), Image.BILINEAR))


def _pad(image: np.ndarray, size: int) -> np.ndarray:
    """Zero-pad bottom/right to ``size x size`` (LiteMedSAM's pad_image)."""
    h, w = image.shape[:2]
    pad = ((0, size - h), (0, size - w)) + ((0, 0),) * (image.ndim - 2)
    return np.pad(image, pad)
