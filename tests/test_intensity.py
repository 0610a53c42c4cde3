"""Intensity normalisation: exact values and equality with MedSAM's pre_CT_MR.py formulas."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medadapt.data.intensity import CT_WINDOWS, ct_window, mr_percentile, normalise_for_sam
from medadapt.errors import MedadaptError


def medsam_ct(image: np.ndarray, level: float = 40, width: float = 400) -> np.ndarray:
    """MedSAM pre_CT_MR.py, CT branch, as published."""
    lower, upper = level - width / 2, level + width / 2
    pre = np.clip(image, lower, upper)
    pre = (pre - np.min(pre)) / (np.max(pre) - np.min(pre)) * 255.0
    return np.uint8(pre)


def medsam_mr(image: np.ndarray) -> np.ndarray:
    """MedSAM pre_CT_MR.py, non-CT branch, as published."""
    lower, upper = np.percentile(image[image > 0], 0.5), np.percentile(image[image > 0], 99.5)
    pre = np.clip(image, lower, upper)
    pre = (pre - np.min(pre)) / (np.max(pre) - np.min(pre)) * 255.0
    pre[image == 0] = 0
    return np.uint8(pre)


def test_ct_window_exact_values():
    hu = np.array([-1000, -160, -159, 40, 239, 240, 3000], np.int16)
    out = ct_window(hu, 40, 400)
    assert out.dtype == np.uint8
    # (x + 160) / 400 * 255, truncated
    assert out.tolist() == [0, 0, 0, 127, 254, 255, 255]


def test_ct_window_matches_medsam_on_ct_like_volume():
    rng = np.random.default_rng(0)
    vol = rng.integers(-1024, 2000, (6, 32, 32)).astype(np.int16)  # spans the window: air and bone present
    np.testing.assert_array_equal(ct_window(vol, 40, 400), medsam_ct(vol))
    np.testing.assert_array_equal(ct_window(vol, 40, 400, rescale="data"), medsam_ct(vol))


def test_ct_window_data_rescale_differs_when_window_not_spanned():
    soft = np.array([0, 50, 100], np.int16)  # never reaches -160 or 240
    assert ct_window(soft, 40, 400).tolist() == [102, 133, 165]
    assert ct_window(soft, 40, 400, rescale="data").tolist() == medsam_ct(soft).tolist() == [0, 127, 255]


def test_mr_percentile_matches_medsam_on_real_hippocampus(data_dir: Path):
    image = np.asarray(nib.load(data_dir / "hippocampus/imagesTr/hippocampus_001.nii.gz").dataobj)
    out = mr_percentile(image)
    np.testing.assert_array_equal(out, medsam_mr(image))
    assert out.min() == 0 and out.max() == 255


def test_mr_percentile_background_and_clipping():
    rng = np.random.default_rng(1)
    img = rng.gamma(2.0, 100.0, (40, 40)).astype(np.float32)
    img[:10] = 0
    out = mr_percentile(img)
    np.testing.assert_array_equal(out, medsam_mr(img))
    assert (out[:10] == 0).all()
    lo, hi = np.percentile(img[img > 0], [0.5, 99.5])
    assert (out[img >= hi] == 255).all() and (out[(img > 0) & (img <= lo)] == 0).all()
    # nonzero=False: percentiles over all pixels, the background gets no special treatment
    allpix = mr_percentile(img, 0, 100, nonzero=False)
    assert allpix[img == img.max()].tolist() == [255] and (allpix[:10] == 0).all()


@pytest.mark.parametrize("value", [0.0, 7.0])
def test_constant_images_give_zeros(value):
    out = mr_percentile(np.full((5, 5), value, np.float32))
    assert out.dtype == np.uint8 and not out.any()
    assert not mr_percentile(np.full((5, 5), value), nonzero=False).any()


def test_presets():
    assert CT_WINDOWS["abdomen"] == (40, 400)
    assert CT_WINDOWS["lung"] == (-600, 1500)
    assert {"liver", "bone", "brain", "mediastinum", "soft_tissue"} <= set(CT_WINDOWS)
    for level, width in CT_WINDOWS.values():
        assert width > 0 and -1000 <= level <= 1000


def test_normalise_for_sam_dispatch():
    rng = np.random.default_rng(2)
    ct = rng.integers(-1024, 2000, (16, 16)).astype(np.int16)
    np.testing.assert_array_equal(normalise_for_sam(ct, "CT"), ct_window(ct, 40, 400))
    np.testing.assert_array_equal(normalise_for_sam(ct, "ct", window="lung"), ct_window(ct, -600, 1500))
    np.testing.assert_array_equal(normalise_for_sam(ct, "CT", window=(300, 1000)), ct_window(ct, 300, 1000))
    mr = rng.gamma(2.0, 50.0, (16, 16))
    np.testing.assert_array_equal(normalise_for_sam(mr, "MRI"), mr_percentile(mr))
    photo = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    np.testing.assert_array_equal(normalise_for_sam(photo, "fundus"), photo)
    xray16 = np.array([[1000, 2000], [3000, 5000]], np.uint16)
    assert normalise_for_sam(xray16, "xray").tolist() == [[0, 63], [127, 255]]


@pytest.mark.parametrize(
    ("call", "fragment"),
    [
        (lambda: normalise_for_sam(np.zeros((2, 2)), "sonar"), "unknown modality"),
        (lambda: normalise_for_sam(np.zeros((2, 2)), "MR", window="lung"), "CT window"),
        (lambda: normalise_for_sam(np.zeros((2, 2)), "CT", window="elbow"), "unknown CT window"),
        (lambda: ct_window(np.zeros((2, 2)), 40, 0), "width must be positive"),
        (lambda: ct_window(np.array([[np.nan, 1.0]]), 40, 400), "NaN"),
        (lambda: mr_percentile(np.zeros((0, 3))), "empty"),
        (lambda: mr_percentile(np.ones((2, 2)), 60, 40), "percentiles"),
    ],
)
def test_bad_arguments(call, fragment):
    with pytest.raises(MedadaptError, match=fragment):
        call()
