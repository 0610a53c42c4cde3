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

Two variants of the input (the functions here default to the official pipelines, which is what
``fit`` trains with; which variant a predictor uses is :data:`ZERO_SHOT_RESIZE` / :data:`FIT_RESIZE`):

- ``resize``: how an image *smaller* than the model input is enlarged. ``official`` is the
  pipeline's own resize (``INTER_AREA`` for LiteMedSAM, which is blocky when enlarging; PIL
  bilinear for SAM); ``area`` / ``bilinear`` / ``cubic`` enlarge with ``cv2.INTER_AREA`` /
  ``INTER_LINEAR`` / ``INTER_CUBIC`` (for LiteMedSAM ``area`` is ``official``). Shrinking always
  uses the official resize, and masks are never touched.
- ROI ("zoom-in"): ``crop`` is a window of the image (:func:`roi_window` puts one around a box);
  only the window goes through the pipeline, so a small object gets more of the model's input
  pixels. The :class:`Transform` keeps the window: prompts in full-image pixels are moved into it,
  and :func:`postprocess_logits` pastes the window's logits back into a full-size map
  (``OUTSIDE_LOGIT``, i.e. background, elsewhere). Off unless asked: on validation cases it helped
  per-slice boxes on hippocampus but hurt 3D boxes there and split prostate cases 2 better / 3 worse
  (bench/results/zoom_*.json).
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

#: ``resize`` names: the pipeline's own resize, or the cv2 interpolation that enlarges small images.
RESIZE_METHODS = ("official", "area", "bilinear", "cubic")
#: How a zero-shot model enlarges small images unless told: bilinear beat the official INTER_AREA on
#: every validation hippocampus case and class, with per-slice and with 3D box prompts
#: (bench/results/zoom_hippocampus.json); on images at least as large as the input (prostate, DRIVE)
#: the two are the same pipeline.
ZERO_SHOT_RESIZE = "bilinear"
#: What ``fit`` trains with (the official pipeline), hence an adapted model's default at inference:
#: a model is only as good as the preprocessing it was trained with. On a box-trained decoder's own
#: validation volumes bilinear was mixed (worse with per-slice boxes, better with 3D boxes), so it
#: stays a flag there.
FIT_RESIZE = "official"
_ENLARGE_FLAGS = {"area": cv2.INTER_AREA, "bilinear": cv2.INTER_LINEAR, "cubic": cv2.INTER_CUBIC}
#: ROI crops grow a box by ``margin`` x its size on each side, but by at least this many pixels.
ROI_MIN_MARGIN_PX = 8
#: Logit written outside a ROI crop: sigmoid is exactly 0 in float32 (background), and sums stay finite.
OUTSIDE_LOGIT = -1.0e4


@dataclass(frozen=True)
class Transform:
    """Geometry of one image's trip into the S x S model frame."""

    original_hw: tuple[int, int]
    resized_hw: tuple[int, int]
    image_size: int
    box_rounding: Literal["trunc", "float"] = "float"
    normalization: Literal["imagenet", "minmax"] = "imagenet"
    # ROI: (x0, y0, x1, y1) window of the original image that was resized (x1, y1 one past the end).
    crop: tuple[int, int, int, int] | None = None

    @property
    def input_hw(self) -> tuple[int, int]:
        """Size of what was resized: the crop, or the whole image."""
        if self.crop is None:
            return self.original_hw
        x0, y0, x1, y1 = self.crop
        return y1 - y0, x1 - x0

    @property
    def scale(self) -> float:
        """``S / max(H, W)`` of the resized part."""
        return self.image_size / max(self.input_hw)

    def _to_crop(self, coords: np.ndarray) -> np.ndarray:
        """``[..., 2]`` (x, y) original pixels -> pixels of the crop (unchanged without one), float64."""
        coords = np.array(coords, dtype=np.float64)
        if self.crop is not None:
            coords -= np.array(self.crop[:2], dtype=np.float64)
        return coords

    def apply_boxes(self, boxes: np.ndarray) -> np.ndarray:
        """``[N, 4]`` (x0, y0, x1, y1) original pixels -> model-frame pixels, float32."""
        boxes = self._to_crop(np.asarray(boxes, dtype=np.float64).reshape(-1, 2, 2)).reshape(-1, 4)
        if self.box_rounding == "trunc":  # LiteMedSAM's resize_box_to_256: int(box * ratio)
            return np.trunc(boxes * self.scale).astype(np.float32)
        return self._resize_points(boxes.reshape(-1, 2)).reshape(-1, 4)

    def scale_boxes(self, boxes: np.ndarray) -> np.ndarray:
        """``[N, 4]`` original pixels -> model frame by ``scale`` alone, no rounding, float32 (the
        CVPR24 propagation's fallback box below the middle slice)."""
        boxes = self._to_crop(np.asarray(boxes, dtype=np.float64).reshape(-1, 2, 2)).reshape(-1, 4)
        return (boxes * self.scale).astype(np.float32)

    def apply_points(self, coords: np.ndarray) -> np.ndarray:
        """``[..., 2]`` (x, y) original pixels -> model-frame pixels, float32 (SAM's apply_coords)."""
        return self._resize_points(self._to_crop(coords))

    def _resize_points(self, coords: np.ndarray) -> np.ndarray:
        (h, w), (nh, nw) = self.input_hw, self.resized_hw
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
        if self.crop is not None:
            x0, y0, x1, y1 = self.crop
            mask = mask[y0:y1, x0:x1]
        if mask.dtype == bool or mask.dtype.kind in "iu":
            mask = mask.astype(np.uint8 if mask.max(initial=0) <= 255 and mask.min(initial=0) >= 0 else np.float32)
        flag = cv2.INTER_AREA if interpolation == "area" else cv2.INTER_NEAREST
        nh, nw = self.resized_hw
        resized = cv2.resize(mask, (nw, nh), interpolation=flag)
        return _pad(resized, self.image_size)


def preprocess_image(image: np.ndarray, spec: ModelSpec, image_size: int | None = None, *,
                     resize: str = "official", crop: tuple[int, int, int, int] | None = None
                     ) -> tuple[torch.Tensor, Transform]:
    """``[H, W]`` or ``[H, W, 3]`` array -> model input ``[3, S, S]`` float32 and its Transform.

    ``resize``: one of :data:`RESIZE_METHODS` (how a smaller image is enlarged); ``crop``: an
    (x0, y0, x1, y1) window (x1, y1 one past the end) that alone goes through the pipeline, min-max
    normalisation included; the Transform maps prompts into it and logits back out of it.
    """
    size = spec.image_size if image_size is None else image_size
    image = _as_hwc_or_hw(image)
    full_hw = image.shape[:2]
    if crop is not None:
        crop = check_window(crop, full_hw)
        x0, y0, x1, y1 = crop
        image = image[y0:y1, x0:x1]
    h, w = image.shape[:2]
    resized_hw = resized_shape(h, w, size)
    enlarge = _enlarge_flag(resize, (h, w), size, spec.normalization)
    if spec.normalization == "minmax":
        arr = _minmax_resized(image, resized_hw, enlarge)  # [h', w', 3] float32 in [0, 1]
        tensor = torch.from_numpy(np.ascontiguousarray(_pad(arr, size))).permute(2, 0, 1)
    else:
        rgb = _to_uint8_rgb(image)
        arr = _pil_bilinear(rgb, resized_hw) if enlarge is None else _enlarge(rgb, resized_hw, enlarge)
        x = torch.from_numpy(arr).permute(2, 0, 1)
        x = (x - torch.tensor(PIXEL_MEAN).view(3, 1, 1)) / torch.tensor(PIXEL_STD).view(3, 1, 1)
        tensor = F.pad(x, (0, size - resized_hw[1], 0, size - resized_hw[0]))
    return tensor.contiguous(), Transform(full_hw, resized_hw, size, spec.box_rounding, spec.normalization, crop)


def check_resize(resize: str) -> str:
    """``resize`` if it names a method of :data:`RESIZE_METHODS`, else ValueError."""
    if resize not in RESIZE_METHODS:
        raise ValueError(f"resize must be one of {', '.join(RESIZE_METHODS)}, got {resize!r}")
    return resize


def _enlarge_flag(resize: str, hw: tuple[int, int], size: int, normalization: str) -> int | None:
    """The cv2 flag that enlarges an image of ``hw`` to ``size``; None: the pipeline's own resize.

    ``area`` on a ``minmax`` pipeline *is* the official resize (INTER_AREA on the image's own dtype),
    so it takes the official path: enlarging in float32 instead would differ on 8-bit images, which
    the official code resizes (and rounds) in uint8.
    """
    check_resize(resize)
    if resize == "official" or max(hw) >= size or (resize == "area" and normalization == "minmax"):
        return None
    return _ENLARGE_FLAGS[resize]


def roi_window(box, image_hw: tuple[int, int], margin: float, min_margin: int = ROI_MIN_MARGIN_PX
               ) -> tuple[int, int, int, int]:
    """The ROI crop around ``box`` (x0, y0, x1, y1; x1/y1 the last pixel): (x0, y0, x1, y1), x1/y1 one past the end.

    The box's pixels grow by ``margin`` x the box's width (height) on each side, at least ``min_margin``
    px; the window is then widened to a square (the scale into the model is set by the longer side, so
    the extra context costs no resolution), moved to lie on the image and cut to the image where it is
    larger. It always holds the whole box.
    """
    if margin < 0 or min_margin < 0:
        raise ValueError(f"ROI margins must be >= 0, got {margin}, {min_margin}")
    h, w = image_hw
    bx0, by0, bx1, by1 = (float(v) for v in np.asarray(box, dtype=np.float64).reshape(-1)[:4])
    sides = []
    for lo, hi, n in ((bx0, bx1, w), (by0, by1, h)):
        start = min(max(int(np.floor(lo)), 0), n - 1)
        stop = max(min(int(np.ceil(hi)) + 1, n), start + 1)
        sides.append((start, stop, n))
    side = max(stop - start + 2 * max(margin * (stop - start), min_margin) for start, stop, _ in sides)
    window = []
    for start, stop, n in sides:
        extent = min(int(np.ceil(side)), n)
        lo = min(int(np.floor((start + stop - extent) / 2)), start)
        lo = min(max(lo, stop - extent), n - extent)
        lo = max(lo, 0)
        window.append((lo, lo + extent))
    (x0, x1), (y0, y1) = window
    return x0, y0, x1, y1


def check_window(crop, image_hw: tuple[int, int]) -> tuple[int, int, int, int]:
    """``crop`` as four ints if it is a non-empty window on an image of ``image_hw``, else ValueError."""
    x0, y0, x1, y1 = (int(v) for v in crop)
    h, w = image_hw
    if not (0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h):
        raise ValueError(f"crop {crop} is not a non-empty window on a {h}x{w} image")
    return x0, y0, x1, y1


def preprocess_slices(slices: np.ndarray, spec: ModelSpec, image_size: int | None = None, *,
                      resize: str = "official") -> tuple[torch.Tensor, Transform]:
    """A stack ``[D, H, W]`` (or ``[D, H, W, 3]``) -> ``[D, 3, S, S]``; each slice normalised alone."""
    slices = np.asarray(slices)
    if slices.ndim not in (3, 4) or slices.shape[0] == 0:
        raise ValueError(f"expected a [D, H, W] or [D, H, W, 3] stack, got shape {slices.shape}")
    out = [preprocess_image(s, spec, image_size, resize=resize) for s in slices]
    return torch.stack([t for t, _ in out]), out[0][1]


def postprocess_logits(low_res: torch.Tensor, transform: Transform) -> torch.Tensor:
    """Low-res logits ``[B, M, h, w]`` -> logits ``[B, M, H, W]`` on the original image.

    Threshold at 0 for masks (same as sigmoid > 0.5 in the official code). A ROI crop's logits are
    pasted into its window; the rest of the image gets ``OUTSIDE_LOGIT`` (background).
    """
    size = transform.image_size
    x = low_res.float()
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, (size, size), mode="bilinear", align_corners=False)
    nh, nw = transform.resized_hw
    x = x[..., :nh, :nw]
    x = F.interpolate(x, transform.input_hw, mode="bilinear", align_corners=False)
    if transform.crop is None:
        return x
    x0, y0, x1, y1 = transform.crop
    full = x.new_full((*x.shape[:-2], *transform.original_hw), OUTSIDE_LOGIT)
    full[..., y0:y1, x0:x1] = x
    return full


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


def _minmax_resized(image: np.ndarray, resized_hw: tuple[int, int], flag: int | None = None) -> np.ndarray:
    """CVPR24 LiteMedSAM: INTER_AREA resize (``flag``: another cv2 interpolation), then
    (x - min) / clip(max - min, 1e-8)."""
    if image.dtype.type not in _CV2_DTYPES:  # cv2 cannot resize it; int16 would overflow below
        image = image.astype(np.float32)
    # Channels are resized independently, so a grey image is resized once and repeated.
    if flag is None:
        nh, nw = resized_hw
        img = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_AREA)
    else:
        img = _enlarge(image, resized_hw, flag)
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


def _enlarge(image: np.ndarray, resized_hw: tuple[int, int], flag: int) -> np.ndarray:
    """Enlarge with a cv2 interpolation in float32 (8-bit results would be rounded again), within the
    image's own range (cubic overshoots at edges, which would shift the min-max normalisation)."""
    img = image.astype(np.float32)
    out = cv2.resize(img, resized_hw[::-1], interpolation=flag)
    return np.clip(out, img.min(), img.max())


def _pil_bilinear(image: np.ndarray, resized_hw: tuple[int, int]) -> np.ndarray:
    nh, nw = resized_hw
    return np.array(Image.fromarray(np.ascontiguousarray(image)).resize((nw, nh), Image.BILINEAR))


def _pad(image: np.ndarray, size: int) -> np.ndarray:
    """Zero-pad bottom/right to ``size x size`` (LiteMedSAM's pad_image)."""
    h, w = image.shape[:2]
    pad = ((0, size - h), (0, size - w)) + ((0, 0),) * (image.ndim - 2)
    return np.pad(image, pad)
