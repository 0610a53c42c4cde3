"""Preprocessing equals the official pipelines on real images; postprocessing returns to them."""

from __future__ import annotations

import cv2
import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from medadapt.models.preprocess import (
    PIXEL_MEAN,
    PIXEL_STD,
    postprocess_logits,
    preprocess_image,
    preprocess_slices,
)
from medadapt.models.registry import get_sam_spec

LITE = get_sam_spec("litemedsam")
SAM = get_sam_spec("sam_vit_b")


# --- Transcription of the official CVPR24 LiteMedSAM inference code (CVPR24_LiteMedSAM_infer.py) ---
def official_resize_longest_side(image, target_length=256):
    oldh, oldw = image.shape[0], image.shape[1]
    scale = target_length * 1.0 / max(oldh, oldw)
    newh, neww = oldh * scale, oldw * scale
    neww, newh = int(neww + 0.5), int(newh + 0.5)
    return cv2.resize(image, (neww, newh), interpolation=cv2.INTER_AREA)


def official_pad_image(image, target_size=256):
    h, w = image.shape[0], image.shape[1]
    padh, padw = target_size - h, target_size - w
    if len(image.shape) == 3:
        return np.pad(image, ((0, padh), (0, padw), (0, 0)))
    return np.pad(image, ((0, padh), (0, padw)))


def official_resize_box_to_256(box, original_size):
    new_box = np.zeros_like(box)
    ratio = 256 / max(original_size)
    for i in range(len(box)):
        new_box[i] = int(box[i] * ratio)
    return new_box


def official_litemedsam_input(img_2d):
    img_3c = np.repeat(img_2d[:, :, None], 3, axis=-1)
    img_256 = official_resize_longest_side(img_3c, 256)
    img_256 = (img_256 - img_256.min()) / np.clip(img_256.max() - img_256.min(), a_min=1e-8, a_max=None)
    img_256 = official_pad_image(img_256, 256)
    return torch.tensor(img_256).float().permute(2, 0, 1), img_3c.shape[:2], img_256.shape


# --- Transcription of segment-anything's ResizeLongestSide + Sam.preprocess ---
def official_sam_input(image_rgb_uint8, target=1024):
    h, w = image_rgb_uint8.shape[:2]
    scale = target * 1.0 / max(h, w)
    newh, neww = int(h * scale + 0.5), int(w * scale + 0.5)
    pil = Image.fromarray(image_rgb_uint8, mode="RGB")  # torchvision to_pil_image
    resized = np.array(pil.resize((neww, newh), Image.BILINEAR))  # torchvision F_pil.resize
    x = torch.as_tensor(resized).permute(2, 0, 1).contiguous()[None]
    x = (x - torch.tensor(PIXEL_MEAN).view(-1, 1, 1)) / torch.tensor(PIXEL_STD).view(-1, 1, 1)
    x = torch.nn.functional.pad(x, (0, target - neww, 0, target - newh))
    return x[0], (newh, neww)


def official_sam_boxes(boxes, original_size, new_size):
    coords = boxes.reshape(-1, 2, 2).astype(float)
    coords[..., 0] = coords[..., 0] * (new_size[1] / original_size[1])
    coords[..., 1] = coords[..., 1] * (new_size[0] / original_size[0])
    return coords.reshape(-1, 4)


@pytest.fixture(scope="module")
def hippocampus_slices(data_dir):
    vol = nib.load(data_dir / "hippocampus" / "imagesTr" / "hippocampus_001.nii.gz")
    arr = np.asanyarray(vol.dataobj)
    lab = np.asanyarray(nib.load(data_dir / "hippocampus" / "labelsTr" / "hippocampus_001.nii.gz").dataobj)
    # axial-ish, sagittal-ish, and a uint8 copy: non-square, upsampled 5-7x
    return [
        (arr[:, :, 17].astype(np.float32), lab[:, :, 17]),
        (arr[12].astype(np.float32), lab[12]),
        (np.clip(arr[:, 25, :], 0, 255).astype(np.uint8), lab[:, 25, :]),
    ]


@pytest.fixture(scope="module")
def prostate(data_dir):
    root = data_dir / "prostate_mri_2d"
    image_rel, mask_rel = (root / "train_5shot.csv").read_text().splitlines()[0].split(",")
    image = np.array(Image.open(root / image_rel.removeprefix("MRI-Prostate/")))
    mask = np.array(Image.open(root / mask_rel.removeprefix("/").removeprefix("MRI-Prostate/")))
    return image, mask


def test_litemedsam_matches_official_hippocampus(hippocampus_slices):
    for image, _ in hippocampus_slices:
        ours, transform = preprocess_image(image, LITE)
        ref, original, _ = official_litemedsam_input(image)
        assert ours.dtype == torch.float32 and ours.shape == (3, 256, 256)
        assert torch.equal(ours, ref)
        assert transform.original_hw == original
        assert transform.resized_hw == official_resize_longest_side(image).shape[:2]


def test_litemedsam_matches_official_prostate(prostate):
    image, mask = prostate
    ours, transform = preprocess_image(image, LITE)
    ref, _, _ = official_litemedsam_input(image)
    assert torch.equal(ours, ref)
    ys, xs = np.nonzero(mask)
    box = np.array([xs.min(), ys.min(), xs.max(), ys.max()])
    np.testing.assert_array_equal(transform.apply_boxes(box[None])[0],
                                  official_resize_box_to_256(box, image.shape[:2]))
    # the truncation matters: float coordinates would differ
    assert not np.allclose(transform.apply_boxes(box[None].astype(float) + 0.7)[0], (box + 0.7) * 256 / 384)


def test_sam_matches_official_resize_longest_side(hippocampus_slices, prostate):
    for image in [hippocampus_slices[2][0], prostate[0]]:
        rgb = np.repeat(image[:, :, None], 3, axis=-1)
        ours, transform = preprocess_image(image, SAM)
        ref, new_size = official_sam_input(rgb)
        assert transform.resized_hw == new_size
        torch.testing.assert_close(ours, ref, rtol=0, atol=0)
        boxes = np.array([[3.0, 4.0, 20.0, 30.0], [0.0, 0.0, image.shape[1] - 1.0, image.shape[0] - 1.0]])
        np.testing.assert_allclose(transform.apply_boxes(boxes),
                                   official_sam_boxes(boxes, image.shape[:2], new_size), rtol=1e-6)


def test_sam_accepts_8bit_float_and_rescales_others():
    rng = np.random.default_rng(0)
    img8 = rng.integers(0, 256, size=(40, 30), dtype=np.uint8)
    a, _ = preprocess_image(img8, SAM)
    b, _ = preprocess_image(img8.astype(np.float32), SAM)
    assert torch.equal(a, b)
    c, _ = preprocess_image(img8.astype(np.float32) * 10 - 500, SAM)  # min-max back to 0..255
    assert torch.allclose(a, c, atol=0.05)


def test_batched_slices_equal_single(hippocampus_slices):
    vol = np.stack([hippocampus_slices[0][0], hippocampus_slices[0][0] * 3 + 7, hippocampus_slices[0][0][::-1]])
    batch, transform = preprocess_slices(vol, LITE)
    assert batch.shape == (3, 3, 256, 256)
    for i in range(3):
        single, t = preprocess_image(vol[i], LITE)
        assert torch.equal(batch[i], single) and t == transform


@pytest.mark.parametrize("spec", [LITE, SAM], ids=["litemedsam", "sam"])
def test_postprocess_returns_original_frame(hippocampus_slices, prostate, spec):
    """A mask pushed into the model frame and back as logits lands on itself, at the original size."""
    for image, label in [hippocampus_slices[0], (prostate[0], prostate[1])]:
        mask = (np.asarray(label) > 0).astype(np.uint8)
        _, transform = preprocess_image(image, spec)
        frame = transform.mask_to_model(mask, interpolation="nearest").astype(np.float32)  # [S, S]
        logits = torch.from_numpy(frame * 20 - 10)[None, None]
        low_res = torch.nn.functional.interpolate(logits, size=(256, 256), mode="bilinear")
        out = postprocess_logits(low_res.expand(2, 3, -1, -1), transform)
        assert out.shape == (2, 3, *image.shape[:2])
        pred = (out[0, 0] > 0).numpy()
        dice = 2 * (pred & (mask > 0)).sum() / (pred.sum() + (mask > 0).sum())
        assert dice > 0.9, dice


def test_mask_to_model_follows_official_propagation(hippocampus_slices):
    image, label = hippocampus_slices[0]
    mask = (np.asarray(label) == 1).astype(np.uint8)
    _, transform = preprocess_image(image, LITE)
    # CVPR24 code: pad_image(resize_longest_side(pre_seg)) -- INTER_AREA on the uint8 mask
    expected = official_pad_image(official_resize_longest_side(mask))
    np.testing.assert_array_equal(transform.mask_to_model(mask), expected)
    nearest = transform.mask_to_model(mask, interpolation="nearest")
    assert nearest.shape == (256, 256) and set(np.unique(nearest)) <= {0, 1}
    labels = transform.mask_to_model(np.asarray(label).astype(np.int64), interpolation="nearest")
    assert set(np.unique(labels)) == set(np.unique(label))
