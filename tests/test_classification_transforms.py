"""The MONAI ``Compose`` behind ImageTransform gives the outputs of the hand-written transform it replaced.

``ReferenceTransform`` below is that earlier implementation, kept verbatim as the reference.
"""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from monai.transforms import Compose, RandAffine

from medadapt.data.classification import IMAGENET_MEAN, IMAGENET_STD, ImageTransform, ResizeSide
from medadapt.errors import MedadaptError


class ReferenceTransform:
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
            self.affine.set_random_state(seed=seed)

    def __call__(self, image: np.ndarray, seed: int | None = None) -> torch.Tensor:
        """``seed`` fixes this call's random augmentation (reproducible whatever the loader workers)."""
        x = torch.from_numpy(np.ascontiguousarray(image))
        if x.ndim == 2:
            x = x[None]
        elif x.ndim == 3 and x.shape[-1] in (1, 3, 4):
            x = x[..., :3].permute(2, 0, 1)  # HWC -> CHW
        else:
            raise MedadaptError(f"image has shape {tuple(image.shape)}; expected H×W or H×W×3")
        x = self._resize(x.float()[None])[0]  # [C,h,w], short (crop) or long (pad) side = size
        if self.normalize == "imagenet" and image.dtype == np.uint8:
            x = x / 255.0
        else:  # LiteMedSAM's min-max after the resize; also brings 16-bit / float radiographs to [0,1]
            x = (x - x.min()) / (x.max() - x.min()).clamp_min(1e-8)
        x = self._crop_or_pad(x)  # [C,S,S]
        if self.affine is not None:  # on one channel for grayscale: 3x cheaper than after replication
            if seed is not None:
                self.affine.set_random_state(seed=seed % 2**32)
            x = torch.as_tensor(self.affine(x)).float()
        if x.shape[0] == 1:
            x = x.expand(3, -1, -1)
        if self.normalize == "imagenet":
            mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
            x = (x - mean) / torch.tensor(IMAGENET_STD).view(3, 1, 1)
        return x.contiguous()

    def _resize(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        s = self.size
        if self.fit == "crop":  # short side -> s; the long side never rounds below s
            scale = s / min(h, w)
            nh, nw = max(s, round(h * scale)), max(s, round(w * scale))
        else:  # long side -> s
            scale = s / max(h, w)
            nh, nw = min(s, max(1, round(h * scale))), min(s, max(1, round(w * scale)))
        if (nh, nw) == (h, w):
            return x
        return F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False, antialias=scale < 1)

    def _crop_or_pad(self, x: torch.Tensor) -> torch.Tensor:
        (h, w), s = x.shape[-2:], self.size
        if self.fit == "crop":
            top, left = (h - s) // 2, (w - s) // 2
            return x[..., top:top + s, left:left + s]
        return F.pad(x, (0, s - w, 0, s - h))



def _images(rng):
    yield rng.integers(0, 256, (37, 53), dtype=np.uint8)  # gray uint8, landscape
    yield rng.integers(0, 256, (80, 41, 3), dtype=np.uint8)  # RGB uint8, portrait
    yield rng.integers(0, 256, (20, 20, 4), dtype=np.uint8)  # RGBA: alpha dropped
    yield rng.integers(0, 4096, (64, 48), dtype=np.uint16)  # 12-bit radiograph
    yield rng.normal(size=(30, 90)).astype(np.float32)
    yield np.full((16, 16), 7, np.uint8)  # constant image
    yield rng.integers(0, 256, (16, 16, 1), dtype=np.uint8)  # already the target size


@pytest.mark.parametrize("normalize", ["imagenet", "minmax"])
@pytest.mark.parametrize("fit", ["crop", "pad"])
@pytest.mark.parametrize("size", [16, 32])
def test_same_outputs_as_the_hand_written_transform(normalize, fit, size):
    new, ref = ImageTransform(size, normalize, fit), ReferenceTransform(size, normalize, fit)
    for image in _images(np.random.default_rng(size)):
        a, b = new(image), ref(image)
        assert type(a) is torch.Tensor and a.shape == (3, size, size) and a.dtype == torch.float32
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


@pytest.mark.parametrize("fit", ["crop", "pad"])
def test_same_augmentation_for_the_same_seed(fit):
    new = ImageTransform(32, "imagenet", fit, augment=True, seed=3)
    ref = ReferenceTransform(32, "imagenet", fit, augment=True, seed=3)
    rng = np.random.default_rng(0)
    for i, image in enumerate(_images(rng)):
        torch.testing.assert_close(new(image, seed=i), ref(image, seed=i), rtol=0, atol=1e-5)
    image = rng.integers(0, 256, (40, 40), dtype=np.uint8)
    unseeded = ImageTransform(32, "imagenet", fit, augment=True, seed=3)  # the constructor's seed alone
    torch.testing.assert_close(unseeded(image), ReferenceTransform(32, "imagenet", fit, augment=True, seed=3)(image),
                               rtol=0, atol=1e-5)
    assert not torch.equal(new(image, seed=1), new(image, seed=2))  # the seed changes the augmentation


def test_pipeline_is_a_monai_compose_and_resize_side_keeps_aspect():
    pipe = ImageTransform(16, "imagenet", "crop").pipeline(uint8=True, gray=True)
    assert isinstance(pipe, Compose)
    x = torch.rand(1, 30, 60)
    assert ResizeSide(15, "short")(x).shape == (1, 15, 30)
    assert ResizeSide(15, "long")(x).shape == (1, 8, 15)
    with pytest.raises(MedadaptError, match="expected H×W"):
        ImageTransform(16)(np.zeros((2, 3, 4, 5), np.uint8))
