"""2D image / mask reading and writing: real PNG, TIFF, GIF files, hand-made DICOM and NIfTI slices."""

from __future__ import annotations

import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import tifffile
from PIL import Image

from medadapt.errors import MedadaptError
from medadapt.io.images import SUPPORTED_2D_SUFFIXES, read_image_2d, read_label_2d, write_mask_png

PROSTATE_IMG = "prostate_mri_2d/images/patient5/study5/volumn5/BIDMC05_32.png"
PROSTATE_MASK = "prostate_mri_2d/masks/BIDMC05_32.png"


def raises_for(path: Path, *fragments: str):
    """MedadaptError whose message names the file and contains each fragment."""
    pattern = re.escape(str(path)) + "".join(f"(?s:.*){re.escape(f)}" for f in fragments)
    return pytest.raises(MedadaptError, match=pattern)


def only_files(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


# --------------------------------------------------------------------------- real data


def test_prostate_png_and_viewing_mask(data_dir: Path):
    img = read_image_2d(data_dir / PROSTATE_IMG)
    mask = read_label_2d(data_dir / PROSTATE_MASK)
    raw = np.asarray(Image.open(data_dir / PROSTATE_MASK))
    assert img.shape == (384, 384) and img.dtype == np.uint8
    assert mask.dtype == np.uint8 and set(np.unique(mask)) == {0, 1}
    np.testing.assert_array_equal(mask, raw // 255)  # 0/255 → 0/1, pixel for pixel


def test_drive_tif_and_gif(data_dir: Path):
    img = read_image_2d(data_dir / "drive/training/images/21_training.tif")
    vessels = read_label_2d(data_dir / "drive/training/1st_manual/21_manual1.gif")
    assert img.shape == (584, 565, 3) and img.dtype == np.uint8
    assert vessels.shape == (584, 565) and set(np.unique(vessels)) == {0, 1}
    assert 0.05 < vessels.mean() < 0.2  # vessels are a small fraction of the image
    np.testing.assert_array_equal(
        img, np.asarray(Image.open(data_dir / "drive/training/images/21_training.tif"))
    )


# --------------------------------------------------------------------------- formats and dtypes


def test_rgba_png_drops_alpha(tmp_path: Path):
    rgba = np.random.default_rng(0).integers(0, 256, (6, 7, 4), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    out = read_image_2d(tmp_path / "a.png")
    np.testing.assert_array_equal(out, rgba[..., :3])


def test_16bit_grey_and_colour_png_kept(tmp_path: Path):
    import cv2

    grey = np.arange(12 * 10, dtype=np.uint16).reshape(12, 10) * 500
    cv2.imwrite(str(tmp_path / "g.png"), grey)
    rgb = np.random.default_rng(1).integers(0, 65535, (5, 6, 3), dtype=np.uint16)
    cv2.imwrite(str(tmp_path / "c.png"), rgb[..., ::-1])  # OpenCV writes BGR
    g = read_image_2d(tmp_path / "g.png")
    c = read_image_2d(tmp_path / "c.png")
    assert g.dtype == np.uint16 and c.dtype == np.uint16
    np.testing.assert_array_equal(g, grey)
    np.testing.assert_array_equal(c, rgb)


def test_float_and_planar_tiff(tmp_path: Path):
    f = np.linspace(-3.5, 7.25, 30, dtype=np.float32).reshape(5, 6)
    tifffile.imwrite(tmp_path / "f.tif", f)
    planar = np.random.default_rng(2).integers(0, 256, (3, 8, 9), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "p.tiff", planar, photometric="rgb", planarconfig="separate")
    np.testing.assert_array_equal(read_image_2d(tmp_path / "f.tif"), f)
    np.testing.assert_array_equal(read_image_2d(tmp_path / "p.tiff"), np.moveaxis(planar, 0, -1))


def test_bmp_jpg_and_palette_label(tmp_path: Path):
    arr = np.zeros((8, 8, 3), np.uint8)
    arr[2:5, 2:5] = (200, 10, 10)
    Image.fromarray(arr).save(tmp_path / "x.bmp")
    np.testing.assert_array_equal(read_image_2d(tmp_path / "x.bmp"), arr)
    Image.fromarray(arr).save(tmp_path / "x.jpg", quality=95)
    assert read_image_2d(tmp_path / "x.jpg").shape == (8, 8, 3)
    # VOC-style colour palette mask: the palette index is the class
    idx = np.zeros((6, 6), np.uint8)
    idx[1:3, 1:4], idx[4, 4] = 1, 2
    pal = Image.fromarray(idx, "P")
    pal.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0] + [0] * 759)
    pal.save(tmp_path / "voc.png")
    np.testing.assert_array_equal(read_label_2d(tmp_path / "voc.png"), idx)


def _dicom(path: Path, pixels: np.ndarray, **tags) -> None:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
    ds.Modality = "CT"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, tags.pop("photometric", "MONOCHROME2")
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    ds.PixelRepresentation = 0
    for k, v in tags.items():
        setattr(ds, k, v)
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)


def test_dicom_rescale_and_monochrome1(tmp_path: Path):
    stored = np.array([[0, 1000], [1024, 3000]], np.uint16)
    _dicom(tmp_path / "ct.dcm", stored, RescaleSlope="1", RescaleIntercept="-1024")
    hu = read_image_2d(tmp_path / "ct.dcm")
    np.testing.assert_array_equal(hu, stored.astype(np.float32) - 1024)
    _dicom(tmp_path / "scaled", stored, RescaleSlope="0.5", RescaleIntercept="10")  # no extension
    np.testing.assert_allclose(read_image_2d(tmp_path / "scaled"), stored * 0.5 + 10)
    _dicom(tmp_path / "m1.dcm", stored, photometric="MONOCHROME1")
    inv = read_image_2d(tmp_path / "m1.dcm")
    np.testing.assert_array_equal(inv, np.array([[3000, 2000], [1976, 0]]))  # flipped within 0..3000


def test_single_slice_volumes(tmp_path: Path):
    import SimpleITK as sitk

    img = np.arange(20, dtype=np.int16).reshape(4, 5)  # H×W
    sitk.WriteImage(sitk.GetImageFromArray(img[None]), str(tmp_path / "s.nii.gz"))  # nnU-Net 2D layout
    sitk.WriteImage(sitk.GetImageFromArray(img[None]), str(tmp_path / "s.mha"))
    np.testing.assert_array_equal(read_image_2d(tmp_path / "s.nii.gz"), img)
    np.testing.assert_array_equal(read_image_2d(tmp_path / "s.mha"), img)
    nib.save(nib.Nifti1Image(np.zeros((4, 5, 3), np.float32), np.eye(4)), tmp_path / "vol.nii.gz")
    with raises_for(tmp_path / "vol.nii.gz", "(4, 5, 3)", "not a single 2D slice", "Fix:"):
        read_image_2d(tmp_path / "vol.nii.gz")


# --------------------------------------------------------------------------- labels


def test_label_rgb_identical_channels_collapse(tmp_path: Path):
    m = np.zeros((5, 5), np.uint8)
    m[1:3, 1:3] = 2
    Image.fromarray(np.repeat(m[..., None], 3, -1)).save(tmp_path / "rgb.png")
    np.testing.assert_array_equal(read_label_2d(tmp_path / "rgb.png"), m)


@pytest.mark.parametrize(
    ("name", "make", "fragment"),
    [
        (
            "colour.png",
            lambda p: Image.fromarray(
                np.dstack([np.eye(4, dtype=np.uint8)] * 2 + [np.zeros((4, 4), np.uint8)]) * 9
            ).save(p),
            "channels differ",
        ),
        ("big.tif", lambda p: tifffile.imwrite(p, np.array([[0, 300]], np.uint16)), "0..255"),
        ("frac.tif", lambda p: tifffile.imwrite(p, np.array([[0, 0.5]], np.float32)), "non-integer"),
        ("neg.tif", lambda p: tifffile.imwrite(p, np.array([[0, -1]], np.int16)), "0..255"),
    ],
)
def test_bad_labels(tmp_path: Path, name, make, fragment):
    make(tmp_path / name)
    with raises_for(tmp_path / name, fragment, "Fix:"):
        read_label_2d(tmp_path / name)


def test_float_label_with_whole_values_is_accepted(tmp_path: Path):
    tifffile.imwrite(tmp_path / "ok.tif", np.array([[0, 1], [2, 3]], np.float32))
    out = read_label_2d(tmp_path / "ok.tif")
    assert out.dtype == np.uint8 and out.tolist() == [[0, 1], [2, 3]]


# --------------------------------------------------------------------------- bad inputs


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom warns about the garbage file
def test_missing_empty_corrupt_unsupported(tmp_path: Path):
    with raises_for(tmp_path / "nope.png", "does not exist"):
        read_image_2d(tmp_path / "nope.png")
    (tmp_path / "zero.png").write_bytes(b"")
    with raises_for(tmp_path / "zero.png", "empty (0 bytes)"):
        read_image_2d(tmp_path / "zero.png")
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    with raises_for(tmp_path / "bad.png", "cannot be read", "Fix:"):
        read_image_2d(tmp_path / "bad.png")
    good = tmp_path / "good.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)).save(good)
    (tmp_path / "trunc.png").write_bytes(good.read_bytes()[:200])
    with raises_for(tmp_path / "trunc.png", "cannot be read"):
        read_image_2d(tmp_path / "trunc.png")
    (tmp_path / "bad.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\xff" * 50)
    with raises_for(tmp_path / "bad.dcm", "not a valid DICOM"):
        read_image_2d(tmp_path / "bad.dcm")
    (tmp_path / "img.webp").write_bytes(b"RIFF0000WEBP")
    with raises_for(tmp_path / "img.webp", "unsupported", *SUPPORTED_2D_SUFFIXES[:3]):
        read_image_2d(tmp_path / "img.webp")
    with raises_for(tmp_path, "folder"):
        read_image_2d(tmp_path)


def test_nan_and_empty_image(tmp_path: Path):
    tifffile.imwrite(tmp_path / "nan.tif", np.array([[1.0, np.nan], [np.inf, 0]], np.float32))
    with raises_for(tmp_path / "nan.tif", "2 NaN or infinite"):
        read_image_2d(tmp_path / "nan.tif")
    nib.save(nib.Nifti1Image(np.zeros((0, 4, 1), np.float32), np.eye(4)), tmp_path / "e.nii.gz")
    with raises_for(tmp_path / "e.nii.gz", "no pixels"):
        read_image_2d(tmp_path / "e.nii.gz")


def test_multiframe_and_dicom_without_pixels(tmp_path: Path):
    tifffile.imwrite(tmp_path / "stack.tif", np.zeros((4, 6, 7), np.uint8), photometric="minisblack")
    with raises_for(tmp_path / "stack.tif", "stack", "Fix:"):
        read_image_2d(tmp_path / "stack.tif")
    frames = [Image.fromarray(np.full((4, 4), v, np.uint8)) for v in (0, 255)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    with raises_for(tmp_path / "anim.gif", "2 frames"):
        read_image_2d(tmp_path / "anim.gif")
    _dicom(tmp_path / "nopix.dcm", np.zeros((2, 2)))
    import pydicom

    ds = pydicom.dcmread(tmp_path / "nopix.dcm")
    del ds.PixelData
    ds.save_as(tmp_path / "nopix.dcm")
    with raises_for(tmp_path / "nopix.dcm", "without pixel data"):
        read_image_2d(tmp_path / "nopix.dcm")


# --------------------------------------------------------------------------- writing


def test_write_mask_png_round_trip(tmp_path: Path):
    m = np.zeros((7, 9), np.int64)
    m[1:4, 2:6], m[5, 7] = 3, 200
    write_mask_png(tmp_path / "out" / "m.png", m)
    np.testing.assert_array_equal(read_label_2d(tmp_path / "out" / "m.png"), m)
    b = m > 0
    write_mask_png(tmp_path / "b.png", b, binary_255=True)
    assert set(np.unique(np.asarray(Image.open(tmp_path / "b.png")))) == {0, 255}
    np.testing.assert_array_equal(read_label_2d(tmp_path / "b.png"), b.astype(np.uint8))
    assert only_files(tmp_path) == {"out", "b.png"}


@pytest.mark.parametrize(
    ("mask", "kw", "fragment"),
    [
        (np.array([[0, 256]]), {}, "0..255"),
        (np.array([[0, 1.5]]), {}, "non-integer"),
        (np.zeros((2, 2, 2)), {}, "H×W"),
        (np.array([[0, 2]]), {"binary_255": True}, "binary_255"),
    ],
)
def test_write_mask_png_refuses_bad_masks_and_leaves_nothing(tmp_path: Path, mask, kw, fragment):
    with raises_for(tmp_path / "m.png", fragment):
        write_mask_png(tmp_path / "m.png", mask, **kw)
    assert only_files(tmp_path) == set()


def test_write_mask_png_needs_png_suffix(tmp_path: Path):
    with raises_for(tmp_path / "m.jpg", ".png"):
        write_mask_png(tmp_path / "m.jpg", np.zeros((2, 2), np.uint8))
    assert only_files(tmp_path) == set()
