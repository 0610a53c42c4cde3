"""MONAI transform pipelines for volumetric segmentation.

The preprocessing of the published 3D foundation models (MONAI SSL Swin UNETR, CLIP-driven universal
model, FSEFT, SuPreM) is the same MONAI chain: channel first, orientation to RAS, resampling to a fixed
spacing (1.5 mm), CT intensities clipped to [-175, 250] HU and scaled to [0, 1], and a crop to the
foreground. :class:`VolumePreprocessing` names those choices once; the functions below turn it into
MONAI ``Compose`` pipelines for training (random crops balanced between organ and background, flips,
90 degree rotations) and inference (invertible, so predictions can be resampled back to the input grid).

Everything here is MONAI: every step is an ``InvertibleTransform`` where it changes geometry, so
``Compose.inverse`` / ``Invertd`` undo it exactly. The one exception is :func:`largest_component`:
MONAI's ``KeepLargestConnectedComponent`` needs scikit-image, which medadapt does not depend on, so
it is done with ``scipy.ndimage.label`` and a full 3x3x3 structure (26-connectivity, MONAI's default).

Order: the foreground crop runs on the native grid, before resampling (the public recipes crop last).
With MONAI 1.6, ``CropForegroundd`` applied to the output of ``Spacingd`` can record a crop
translation of 0 along an axis that was upsampled, so ``Invertd`` puts the prediction back shifted;
cropping first gives the same region and inverts exactly (``tests/test_volumetric_sliding_window.py``).
Intensity scaling therefore also runs before resampling; for CT (a clipped linear map) and MR
percentiles this changes only interpolated edge values.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
from monai import transforms as mt
from scipy import ndimage

from medadapt.errors import MedadaptError

__all__ = [
    "VolumePreprocessing",
    "intensity_transform",
    "keep_largest_component",
    "largest_component",
    "preprocess_transforms",
    "training_transforms",
]

Modality = Literal["CT", "MR"]
_RAS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))  # affines are RAS (nibabel's and MONAI's convention)


@dataclass(frozen=True)
class VolumePreprocessing:
    """How a volume is brought to the model's input space.

    ``spacing`` is in mm along the RAS axes (x, y, z) after reorientation, as MONAI's ``Spacingd``
    takes it; ``None`` keeps the native spacing. CT uses a fixed HU window (``ct_window`` mapped to
    ``out_range``, clipped); MR, whose intensities have no physical unit, maps the ``mr_percentiles``
    of each volume to ``out_range``.
    """

    modality: Modality = "CT"
    spacing: tuple[float, float, float] | None = (1.5, 1.5, 1.5)
    ct_window: tuple[float, float] = (-175.0, 250.0)
    mr_percentiles: tuple[float, float] = (0.5, 99.5)
    out_range: tuple[float, float] = (0.0, 1.0)
    orientation: str = "RAS"
    crop_foreground: bool = True

    def __post_init__(self) -> None:
        if self.modality not in ("CT", "MR"):
            raise MedadaptError(
                f"unknown modality {self.modality!r}", fix="use 'CT' (HU window) or 'MR' (percentile scaling)"
            )
        lo, hi = self.ct_window if self.modality == "CT" else self.mr_percentiles
        if not lo < hi:
            raise MedadaptError(f"intensity range {lo}..{hi} is empty", fix="give the lower bound first")

    def with_modality(self, modality: str) -> VolumePreprocessing:
        """The same preprocessing for another modality (``'CT'``, or anything MR-like)."""
        modality = "CT" if modality.strip().upper() == "CT" else "MR"
        return replace(self, modality=modality)


def intensity_transform(prep: VolumePreprocessing, keys: str | Sequence[str] = "image") -> mt.MapTransform:
    """CT: fixed HU window to ``out_range`` (clipped). MR: per-volume percentiles to ``out_range``."""
    b_min, b_max = prep.out_range
    if prep.modality == "CT":
        a_min, a_max = prep.ct_window
        return mt.ScaleIntensityRanged(keys, a_min=a_min, a_max=a_max, b_min=b_min, b_max=b_max, clip=True)
    lower, upper = prep.mr_percentiles
    return mt.ScaleIntensityRangePercentilesd(
        keys, lower=lower, upper=upper, b_min=b_min, b_max=b_max, clip=True
    )


def preprocess_transforms(
    prep: VolumePreprocessing,
    *,
    keys: Sequence[str] = ("image", "label"),
    load: bool = True,
    label_map: Mapping[int, int] | None = None,
) -> mt.Compose:
    """Deterministic, invertible preprocessing: (load), channel first, orient, scale, crop, resample.

    ``keys[0]`` is the image; the others are label maps (nearest-neighbour resampling). With
    ``load=False`` the input dict already holds 3D ``MetaTensor`` s (no channel axis) with their affine
    (see :mod:`medadapt.infer.sliding_window`). A key listed but absent from the dict is skipped, so one
    pipeline serves labelled and unlabelled cases. ``label_map`` renumbers label values (stored value
    -> training value); a value it does not list becomes background, so it must list every class to keep.
    """
    keys = list(keys)
    image_key, label_keys = keys[0], keys[1:]
    modes = ["bilinear"] + ["nearest"] * len(label_keys)
    steps: list[mt.Transform] = []
    if load:
        steps.append(mt.LoadImaged(keys, image_only=True, allow_missing_keys=True))
    # Loaded files carry their channel layout in the metadata; in-memory MetaTensors are 3D.
    steps.append(
        mt.EnsureChannelFirstd(keys, channel_dim=None if load else "no_channel", allow_missing_keys=True)
    )
    if prep.orientation:
        steps.append(
            mt.Orientationd(keys, axcodes=prep.orientation, labels=_RAS_LABELS, allow_missing_keys=True)
        )
    steps.append(intensity_transform(prep, image_key))
    if prep.crop_foreground:  # before resampling: see the module docstring
        steps.append(
            mt.CropForegroundd(keys, source_key=image_key, allow_smaller=True, allow_missing_keys=True)
        )
    if prep.spacing is not None:
        steps.append(mt.Spacingd(keys, pixdim=prep.spacing, mode=modes, allow_missing_keys=True))
    if label_keys:
        if label_map is not None:
            steps.append(_RemapLabelsd(label_keys, label_map))
        steps.append(mt.CastToTyped(label_keys, dtype=np.uint8, allow_missing_keys=True))
    return mt.Compose(steps)


def training_transforms(
    prep: VolumePreprocessing,
    roi_size: Sequence[int],
    *,
    pos: float = 2.0,
    neg: float = 1.0,
    num_samples: int = 2,
    flip_prob: float = 0.1,
    rot90_prob: float = 0.1,
    keys: Sequence[str] = ("image", "label"),
    load: bool = True,
    label_map: Mapping[int, int] | None = None,
) -> mt.Compose:
    """Preprocessing, then random ``roi_size`` crops and light augmentation.

    ``RandCropByPosNegLabeld`` centres a crop on a labelled voxel with probability ``pos / (pos + neg)``
    (the CLIP-driven / SuPreM recipe uses 2:1), which matters in few-shot training where the organ is a
    small part of the volume. Volumes smaller than the crop are padded first. Flips along each axis and
    90 degree rotations in the axial plane follow the same public recipes. Seed the pipeline with
    ``Compose.set_random_state`` for reproducible crops.
    """
    keys = list(keys)
    image_key, label_key = keys[0], keys[1]
    if pos < 0 or neg < 0 or pos + neg == 0:
        raise MedadaptError(
            f"pos/neg crop ratio {pos}:{neg} is invalid", fix="use non-negative values, not both 0"
        )
    steps = list(preprocess_transforms(prep, keys=keys, load=load, label_map=label_map).transforms)
    steps += [
        mt.SpatialPadd(keys, spatial_size=tuple(roi_size)),
        mt.RandCropByPosNegLabeld(
            keys,
            label_key=label_key,
            spatial_size=tuple(roi_size),
            pos=pos,
            neg=neg,
            num_samples=num_samples,
            image_key=image_key,
            image_threshold=prep.out_range[0],
        ),
    ]
    if flip_prob > 0:
        steps += [mt.RandFlipd(keys, prob=flip_prob, spatial_axis=axis) for axis in range(3)]
    if rot90_prob > 0:
        steps.append(mt.RandRotate90d(keys, prob=rot90_prob, max_k=3, spatial_axes=(0, 1)))
    steps.append(mt.EnsureTyped(keys, track_meta=False))
    return mt.Compose(steps)


class _RemapLabelsd(mt.MapTransform):
    """Renumber label values; unlisted values become 0 (MONAI's ``MapLabelValued`` keeps them)."""

    def __init__(self, keys: Sequence[str], mapping: Mapping[int, int]):
        super().__init__(keys, allow_missing_keys=True)
        self.mapping = {int(k): int(v) for k, v in mapping.items()}

    def __call__(self, data):
        d = dict(data)
        for key in self.key_iterator(d):
            label = d[key]
            out = label * 0
            for src, dst in self.mapping.items():
                out[label == src] = dst
            d[key] = out
        return d


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 26-connected component of a binary mask (all False when the mask is empty)."""
    mask = np.asarray(mask) > 0
    components, n = ndimage.label(mask, structure=np.ones((3,) * mask.ndim, dtype=bool))
    if n <= 1:
        return mask
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    return components == int(sizes.argmax())


def keep_largest_component(labels: np.ndarray, classes: Sequence[int] | None = None) -> np.ndarray:
    """A label map where each class (default: every class present) keeps only its largest component."""
    labels = np.asarray(labels)
    out = labels.copy()
    for c in np.unique(labels) if classes is None else classes:
        if c == 0:
            continue
        mask = labels == c
        out[mask & ~largest_component(mask)] = 0
    return out
