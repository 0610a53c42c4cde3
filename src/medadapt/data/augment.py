"""Training-time augmentation of 2D samples, with prompts drawn from the augmented mask.

Geometry and intensity are MONAI dictionary transforms applied jointly to the image (bilinear) and the
label (nearest): random flips on both axes, a small affine (rotation ±10°, scale 0.9–1.1, optionally a
shift of up to ``translate`` × the slice size per axis) and intensity jitter (gamma contrast, scale,
shift). Flips can be turned off (``flip_prob = 0``) for structures whose classes are told apart by
position. Box and point prompts are computed *after* the geometry, from
the augmented mask, so they always describe what the model is asked to segment: a box per class with
each side pushed outwards by up to ``box_jitter`` px (MedSAM's ``bbox_shift``), and optionally random
points inside (and outside) the object.

:func:`train_augment` returns a callable with its own random streams, seeded once: the same seed and
the same sequence of samples give the same outputs. Each MONAI transform gets its own seed (MONAI's
``Compose.set_random_state`` would give them all the same one, correlating e.g. the two flips).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from monai import transforms as mt
from monai.utils import convert_to_numpy

from medadapt.data.prompts import Prompt, boxes_from_label, points_from_label
from medadapt.data.slices import SliceSample


@dataclass(frozen=True)
class AugmentConfig:
    flip_prob: float = 0.5  # per axis
    affine_prob: float = 0.5
    rotate_deg: float = 10.0
    scale: float = 0.1  # zoom in 1 ± scale
    translate: float = 0.0  # shift by up to ± translate × the slice size, per axis
    intensity_prob: float = 0.5  # per intensity transform
    gamma: tuple[float, float] = (0.8, 1.25)
    intensity_scale: float = 0.1  # v * (1 + U(-s, s))
    intensity_shift: float = 10.0  # v + U(-o, o), on the 0..255 scale
    box_jitter: int = 5
    n_pos: int = 0  # random foreground points per class (0: box only)
    n_neg: int = 0  # random background points per class


def build_transforms(config: AugmentConfig) -> mt.Compose:
    """MONAI pipeline on ``{"image": C×H×W float32 0..255, "label": 1×H×W float32}``."""
    keys = ("image", "label")
    angle = float(np.deg2rad(config.rotate_deg))
    return mt.Compose(
        [
            mt.RandFlipd(keys, prob=config.flip_prob, spatial_axis=0),
            mt.RandFlipd(keys, prob=config.flip_prob, spatial_axis=1),
            mt.RandAffined(
                keys,
                prob=config.affine_prob,
                rotate_range=(angle,),
                scale_range=(config.scale, config.scale),
                mode=("bilinear", "nearest"),
                padding_mode=("zeros", "zeros"),
            ),
            mt.RandAdjustContrastd("image", prob=config.intensity_prob, gamma=config.gamma),
            mt.RandScaleIntensityd("image", factors=config.intensity_scale, prob=config.intensity_prob),
            mt.RandShiftIntensityd("image", offsets=config.intensity_shift, prob=config.intensity_prob),
        ]
    )


class TrainAugment:
    """``sample → augmented sample`` with prompts; accepts a :class:`SliceSample` or a dict with image/label."""

    def __init__(self, seed: int = 0, config: AugmentConfig | None = None):
        self.config = config or AugmentConfig()
        self.transforms = build_transforms(self.config)
        self._affine = next(t for t in self.transforms.transforms if isinstance(t, mt.RandAffined))
        self.reseed(seed)

    def reseed(self, seed: int) -> None:
        """Restart every random stream from ``seed`` (e.g. per DataLoader worker: ``seed + worker_id``)."""
        children = np.random.SeedSequence(seed).spawn(len(self.transforms.transforms) + 1)
        for t, child in zip(self.transforms.transforms, children, strict=False):
            if isinstance(t, mt.Randomizable):
                t.set_random_state(seed=int(child.generate_state(1)[0]))
        self.rng = np.random.default_rng(children[-1])

    def __call__(self, sample: SliceSample | dict[str, Any]):
        image = np.asarray(sample.image if isinstance(sample, SliceSample) else sample["image"])
        label = np.asarray(sample.label if isinstance(sample, SliceSample) else sample["label"])
        image, label = self.apply(image, label)
        prompts = tuple(self.prompts(label))
        if isinstance(sample, SliceSample):
            return replace(sample, image=image, label=label, prompts=prompts)
        return {**sample, "image": image, "label": label, "prompts": prompts}

    def apply(self, image: np.ndarray, label: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Augment an ``H×W`` / ``H×W×3`` uint8 image and its ``H×W`` label together (same shapes back)."""
        if label.shape != image.shape[:2]:
            raise ValueError(f"label shape {label.shape} != image shape {image.shape[:2]}")
        if self.config.translate:  # MONAI's range is in pixels; ours is a fraction of this slice's size
            self._affine.rand_affine.rand_affine_grid.translate_range = tuple(
                self.config.translate * n for n in label.shape)
        chw = image[None] if image.ndim == 2 else np.moveaxis(image, -1, 0)  # C×H×W
        data = {"image": chw.astype(np.float32), "label": label[None].astype(np.float32)}
        # MONAI builds the affine grid with torch on the CPU: under a bf16 training step (autocast)
        # it would come out in bf16, which numpy cannot take.
        with torch.autocast(device_type="cpu", enabled=False):
            out = self.transforms(data)
        img = convert_to_numpy(out["image"])
        img = img[0] if image.ndim == 2 else np.moveaxis(img, 0, -1)
        img = (
            np.clip(np.rint(img), 0, 255).astype(image.dtype)
            if image.dtype == np.uint8
            else img.astype(image.dtype)
        )
        lab = np.rint(convert_to_numpy(out["label"])[0]).astype(label.dtype)
        return np.ascontiguousarray(img), np.ascontiguousarray(lab)

    def prompts(self, label: np.ndarray) -> list[Prompt]:
        """One prompt per class in ``label``: a jittered box, plus random points when configured."""
        cfg = self.config
        out = boxes_from_label(label, per="class", jitter=cfg.box_jitter, rng=self.rng)
        if cfg.n_pos or cfg.n_neg:
            for p in out:
                inside = int(np.count_nonzero(label == p.class_id))
                n_pos, n_neg = min(cfg.n_pos, inside), min(cfg.n_neg, label.size - inside)
                if n_pos + n_neg == 0:
                    continue
                pts = points_from_label(label, p.class_id, n_pos=n_pos, n_neg=n_neg, rng=self.rng)
                p.points, p.point_labels = pts.points, pts.point_labels
        return out


def train_augment(seed: int = 0, **overrides) -> TrainAugment:
    """The default training augmentation, seeded; keyword arguments override :class:`AugmentConfig` fields."""
    return TrainAugment(seed, AugmentConfig(**overrides))
