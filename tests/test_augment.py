"""Training augmentation keeps image and mask aligned; prompts come from the augmented mask."""

from __future__ import annotations

import numpy as np
import pytest

from medadapt.data.augment import train_augment
from medadapt.data.slices import SliceSample


def _scene(rgb: bool = False):
    label = np.zeros((64, 80), np.uint8)
    label[12:34, 20:45] = 1
    yy, xx = np.mgrid[:64, :80]
    label[((yy - 45) / 8) ** 2 + ((xx - 60) / 11) ** 2 < 1] = 2
    image = (30 + 100 * (label == 1) + 200 * (label == 2)).astype(np.uint8)
    if rgb:
        image = np.stack([image, image // 2, image], axis=-1)
    return image, label


def test_flip_twice_is_identity():
    image, label = _scene(rgb=True)
    aug = train_augment(0, flip_prob=1.0, affine_prob=0.0, intensity_prob=0.0)
    once = aug({"image": image, "label": label})
    assert not np.array_equal(once["label"], label)
    assert np.array_equal(once["label"], label[::-1, ::-1]) and np.array_equal(
        once["image"], image[::-1, ::-1]
    )
    twice = aug(once)
    assert np.array_equal(twice["image"], image) and np.array_equal(twice["label"], label)


@pytest.mark.parametrize("seed", range(6))
def test_image_and_mask_stay_aligned(seed):
    image, label = _scene()
    aug = train_augment(seed, flip_prob=0.5, affine_prob=1.0, intensity_prob=0.0)
    out = aug({"image": image, "label": label})
    img, lab = out["image"], out["label"]
    assert img.shape == image.shape and lab.shape == label.shape and lab.dtype == label.dtype
    assert set(np.unique(lab)) <= {0, 1, 2}  # nearest: no interpolated class values
    assert not np.array_equal(lab, label)
    # the image was drawn from the mask: after the same warp, its intensity classes still match the mask
    for c, value in ((1, 130), (2, 230)):
        inside = lab == c
        assert inside.any()
        assert np.mean(np.abs(img[inside].astype(int) - value) < 40) > 0.9


@pytest.mark.parametrize("seed", range(6))
def test_boxes_contain_the_mask_within_jitter(seed):
    image, label = _scene()
    aug = train_augment(seed, affine_prob=1.0, box_jitter=5)
    out = aug(SliceSample("case", 3, 2, image, label, (1.0, 1.0), (64, 80, 10)))
    assert isinstance(out, SliceSample) and out.key == "case" and out.index == 3
    h, w = label.shape
    classes = [int(c) for c in np.unique(out.label) if c]
    assert [p.class_id for p in out.prompts] == classes
    for p in out.prompts:
        ys, xs = np.nonzero(out.label == p.class_id)
        x0, y0, x1, y1 = p.box
        assert x0 <= xs.min() and y0 <= ys.min() and x1 >= xs.max() and y1 >= ys.max()
        assert xs.min() - x0 <= 5 and ys.min() - y0 <= 5 and x1 - xs.max() <= 5 and y1 - ys.max() <= 5
        assert 0 <= x0 and 0 <= y0 and x1 <= w - 1 and y1 <= h - 1


def test_points_inside_and_outside():
    image, label = _scene()
    out = train_augment(1, n_pos=3, n_neg=2)({"image": image, "label": label})
    for p in out["prompts"]:
        assert p.box is not None and len(p.points) == 5
        cls = out["label"][p.points[:, 1].astype(int), p.points[:, 0].astype(int)]
        assert (cls[p.point_labels == 1] == p.class_id).all()
        assert (cls[p.point_labels == 0] != p.class_id).all()


def test_deterministic_given_seed():
    image, label = _scene(rgb=True)
    runs = []
    for seed in (4, 4, 5):
        aug = train_augment(seed)
        runs.append([aug({"image": image, "label": label}) for _ in range(4)])
    for a, b in zip(runs[0], runs[1], strict=True):
        assert np.array_equal(a["image"], b["image"]) and np.array_equal(a["label"], b["label"])
        assert all(np.array_equal(p.box, q.box) for p, q in zip(a["prompts"], b["prompts"], strict=True))
    assert any(not np.array_equal(a["image"], c["image"]) for a, c in zip(runs[0], runs[2], strict=True))


def test_intensity_jitter_keeps_uint8_range():
    image, label = _scene()
    aug = train_augment(0, flip_prob=0.0, affine_prob=0.0, intensity_prob=1.0)
    outs = [aug({"image": image, "label": label}) for _ in range(5)]
    assert all(o["image"].dtype == np.uint8 and np.array_equal(o["label"], label) for o in outs)
    assert any(not np.array_equal(o["image"], image) for o in outs)


def test_translation_is_a_fraction_of_each_slice_size_and_runs_under_bf16_autocast():
    """``translate`` shifts by up to that fraction of the slice's own height and width (MONAI's range is
    in pixels, so it is set per slice), and augmenting inside a bf16 training step still works."""
    import torch

    image, label = _scene()
    aug = train_augment(0, translate=0.25, flip_prob=0.0, affine_prob=1.0, intensity_prob=0.0,
                        rotate_deg=0.0, scale=0.0)
    shifts = []
    for seed in range(12):
        aug.reseed(seed)
        with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
            img, lab = aug.apply(image, label)
        moved = np.argwhere(lab == 1).min(0) - np.argwhere(label == 1).min(0)
        assert abs(int((lab == 1).sum()) - int((label == 1).sum())) < 0.15 * (label == 1).sum()  # a shift
        assert np.mean(np.abs(img[lab == 1].astype(int) - 130) < 40) > 0.9  # image moved with the mask
        shifts.append(moved)
    shifts = np.abs(np.array(shifts))
    assert shifts.max(0)[0] <= 0.25 * 64 + 1 and shifts.max(0)[1] <= 0.25 * 80 + 1
    assert shifts.max(0)[1] > 0.25 * 64  # wider than the height's bound: the range follows each axis
    untouched = train_augment(0, flip_prob=0.0, affine_prob=1.0, intensity_prob=0.0, rotate_deg=0.0, scale=0.0)
    assert np.array_equal(untouched.apply(image, label)[1], label)  # translate defaults to 0
