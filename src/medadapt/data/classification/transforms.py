"""Per-backbone image preprocessing for classification, as MONAI transforms.

:class:`ImageTransform` chains MONAI's ``ScaleIntensityRange`` / ``ScaleIntensity``,
``CenterSpatialCrop`` / ``SpatialPad``, ``RandAffine``, ``RepeatChannel`` and ``NormalizeIntensity``
in a ``Compose``. The resize step (:class:`ResizeSide`) is our own: MONAI's ``Resize`` has no
"short side to S" mode, and its anti-aliasing is a Gaussian pre-filter, while the pre-training
recipes (torchvision's ``Resize``, SAM's resize) use torch's antialiased bilinear interpolation.
MONAI's centre crop starts at ``h//2 - s//2``: for the even input sizes of every backbone that is
``(h - s)//2``, the usual centre.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from monai.data import MetaTensor
from monai.transforms import (
    CenterSpatialCrop,
    Compose,
    NormalizeIntensity,
    RandAffine,
    RepeatChannel,
    ScaleIntensity,
    ScaleIntensityRange,
    SpatialPad,
    Transform,
)

from medadapt.errors import MedadaptError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ResizeSide(Transform):
    """``[C,h,w]`` -> the short (``side="short"``) or long (``"long"``) side at ``size``, aspect kept.

    Bilinear, torch's antialiasing when shrinking. Short side: the long side never rounds below
    ``size`` (a centre crop follows); long side: neither side exceeds ``size`` (a pad follows).
    """

    def __init__(self, size: int, side: str):
        self.size, self.side = size, side

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        s = self.size
        if self.side == "short":
            scale = s / min(h, w)
            nh, nw = max(s, round(h * scale)), max(s, round(w * scale))
        else:
            scale = s / max(h, w)
            nh, nw = min(s, max(1, round(h * scale))), min(s, max(1, round(w * scale)))
        if (nh, nw) == (h, w):
            return x
        x = torch.as_tensor(x)
        return F.interpolate(x[None], size=(nh, nw), mode="bilinear", align_corners=False, antialias=scale < 1)[0]


class ImageTransform:
    """``H×W[×C]`` pixels -> float tensor ``[3,size,size]`` the way a backbone was pre-trained.

    ``normalize="imagenet"``: uint8 / 255 (other dtypes: min-max per image) -> ImageNet mean/std.
    ``normalize="minmax"``: min-max per image to [0,1] (LiteMedSAM). ``fit="crop"``: short side to
    ``size`` then centre crop (MED-PEFT eval transform); ``fit="pad"``: long side to ``size`` then
    zero-pad bottom/right (SAM). Grayscale is replicated to 3 channels. ``augment`` adds MONAI's
    random affine (±10° rotation, ±10 % scale, ±5 % shift) for training.
    """

    def __init__(self, size: int, normalize: str = "imagenet", fit: str = "crop", *, augment: bool = False,
                 seed: int = 0):
        if normalize not in ("imagenet", "minmax") or fit not in ("crop", "pad"):
            raise MedadaptError(f"unknown preprocessing normalize={normalize!r} fit={fit!r}",
                                fix="normalize: imagenet|minmax, fit: crop|pad")
        self.size, self.normalize, self.fit = size, normalize, fit
        self.affine = None
        if augment:
            self.affine = RandAffine(prob=0.8, rotate_range=(math.pi / 18,), scale_range=(0.1, 0.1),
                                     translate_range=(0.05 * size, 0.05 * size), padding_mode="zeros")
        self._pipelines = {(uint8, gray): self._build(uint8, gray) for uint8 in (False, True) for gray in (False, True)}
        if self.affine is not None:  # after the Composes: a Compose re-seeds the transforms it is given
            self.affine.set_random_state(seed=seed)

    def pipeline(self, uint8: bool, gray: bool) -> Compose:
        """The MONAI ``Compose`` for a uint8 (or other dtype) image with one (or three) channels."""
        return self._pipelines[(uint8, gray)]

    def _build(self, uint8: bool, gray: bool) -> Compose:
        steps = [ResizeSide(self.size, "short" if self.fit == "crop" else "long")]
        if self.normalize == "imagenet" and uint8:
            steps.append(ScaleIntensityRange(a_min=0.0, a_max=255.0, b_min=0.0, b_max=1.0))
        else:  # LiteMedSAM's min-max after the resize; also brings 16-bit / float radiographs to [0,1]
            steps.append(ScaleIntensity(minv=0.0, maxv=1.0))
        if self.fit == "crop":
            steps.append(CenterSpatialCrop(roi_size=(self.size, self.size)))
        else:
            steps.append(SpatialPad(spatial_size=(self.size, self.size), method="end", mode="constant"))
        if self.affine is not None:  # on one channel for grayscale: 3x cheaper than after replication
            steps.append(self.affine)
        if gray:
            steps.append(RepeatChannel(repeats=3))
        if self.normalize == "imagenet":
            steps.append(NormalizeIntensity(subtrahend=IMAGENET_MEAN, divisor=IMAGENET_STD, channel_wise=True))
        return Compose(steps)

    def __call__(self, image: np.ndarray, seed: int | None = None) -> torch.Tensor:
        """``seed`` fixes this call's random augmentation (reproducible whatever the loader workers)."""
        x = torch.from_numpy(np.ascontiguousarray(image))
        if x.ndim == 2:
            x = x[None]
        elif x.ndim == 3 and x.shape[-1] in (1, 3, 4):
            x = x[..., :3].permute(2, 0, 1)  # HWC -> CHW
        else:
            raise MedadaptError(f"image has shape {tuple(image.shape)}; expected H×W or H×W×3")
        if self.affine is not None and seed is not None:
            self.affine.set_random_state(seed=seed % 2**32)
        out = self.pipeline(image.dtype == np.uint8, x.shape[0] == 1)(x.float())
        if isinstance(out, MetaTensor):
            out = out.as_tensor()
        return out.float().contiguous()
