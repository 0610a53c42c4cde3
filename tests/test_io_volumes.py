"""3D volumes: real hippocampus NIfTI (incl. the float32 label), header-preserving writes, ITK formats, DICOM series."""

from __future__ import annotations

import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from medadapt.errors import MedadaptError
from medadapt.io.volumes import Volume, VolumeMeta, check_pair, default_slice_axis, read_volume, write_like

HIPPO = "hippocampus"


def raises_for(path: Path, *fragments: str):
    pattern = re.escape(str(path)) + "".join(f"(?s:.*){re.escape(f)}" for f in fragments)
    return pytest.raises(MedadaptError, match=pattern)


def oblique_nifti(path: Path, data: np.ndarray, *, qform_shift=(1.5, -2.0, 0.25)) -> nib.Nifti1Image:
    """A NIfTI with a rotated, anisotropic affine; qform (code 1) = sform (code 2) moved by ``qform_shift``."""
    c, s = np.cos(0.3), np.sin(0.3)
    affine = np.array(
        [[0.8 * c, -0.8 * s, 0, -40.5], [0.8 * s, 0.8 * c, 0, 12.25], [0, 0, 2.5, 7.0], [0, 0, 0, 1]]
    )
    qform = affine.copy()
    qform[:3, 3] += qform_shift  # scanner and aligned spaces differ: both must survive a write
    img = nib.Nifti1Image(data, affine)
    img.set_qform(qform, code=1)
    img.set_sform(affine, code=2)
    img.header["descrip"] = b"medadapt test"
    img.header.set_xyzt_units("mm", "sec")
    nib.save(img, path)
    return img


# --------------------------------------------------------------------------- real data


def test_hippocampus_pair(data_dir: Path):
    image = read_volume(data_dir / HIPPO / "imagesTr/hippocampus_001.nii.gz")
    label = read_volume(data_dir / HIPPO / "labelsTr/hippocampus_001.nii.gz", label=True)
    ref = nib.load(data_dir / HIPPO / "imagesTr/hippocampus_001.nii.gz")
    assert image.array.shape == ref.shape == (35, 51, 35) and image.axes == "ijk"
    assert image.spacing == (1.0, 1.0, 1.0)
    np.testing.assert_array_equal(image.affine, ref.affine)
    assert label.array.dtype == np.uint8 and set(np.unique(label.array)) == {0, 1, 2}
    check_pair(image, label)
    assert default_slice_axis(image) == 2  # isotropic: k for NIfTI


def test_float32_label_rounds_exactly(data_dir: Path):
    path = data_dir / HIPPO / "labelsTr/hippocampus_003.nii.gz"
    assert nib.load(path).get_data_dtype() == np.float32  # the stored type this test is about
    label = read_volume(path, label=True)
    assert label.array.dtype == np.uint8
    np.testing.assert_array_equal(label.array, np.asarray(nib.load(path).dataobj).astype(np.uint8))
    assert set(np.unique(label.array)) == {0, 1, 2}


def test_real_label_round_trip_keeps_header(data_dir: Path, tmp_path: Path):
    image = read_volume(data_dir / HIPPO / "imagesTr/hippocampus_003.nii.gz")
    label = read_volume(data_dir / HIPPO / "labelsTr/hippocampus_003.nii.gz", label=True)
    write_like(tmp_path / "pred.nii.gz", label.array, image)
    out = nib.load(tmp_path / "pred.nii.gz")
    src = nib.load(data_dir / HIPPO / "imagesTr/hippocampus_003.nii.gz")
    assert out.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(out.affine, src.affine)
    for key in (
        "qform_code",
        "sform_code",
        "pixdim",
        "xyzt_units",
        "dim",
        "srow_x",
        "srow_y",
        "srow_z",
        "descrip",
    ):
        np.testing.assert_array_equal(out.header[key], src.header[key], err_msg=key)
    np.testing.assert_array_equal(np.asarray(out.dataobj), label.array)


# --------------------------------------------------------------------------- NIfTI writing


def test_oblique_round_trip_keeps_qform_sform(tmp_path: Path):
    data = np.random.default_rng(0).normal(size=(6, 7, 4)).astype(np.float32)
    src = oblique_nifti(tmp_path / "img.nii.gz", data)
    vol = read_volume(tmp_path / "img.nii.gz")
    assert vol.spacing == pytest.approx((0.8, 0.8, 2.5))
    assert default_slice_axis(vol) == 2
    seg = (data > 0).astype(np.int64) * 3
    write_like(tmp_path / "seg.nii", seg, vol)
    out = nib.load(tmp_path / "seg.nii")
    np.testing.assert_allclose(out.header.get_qform(), src.header.get_qform(), atol=1e-5)
    np.testing.assert_allclose(out.header.get_sform(), src.header.get_sform(), atol=1e-6)
    assert (int(out.header["qform_code"]), int(out.header["sform_code"])) == (1, 2)
    assert out.header["descrip"] == src.header["descrip"] and out.header.get_xyzt_units() == ("mm", "sec")
    assert out.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(np.asarray(out.dataobj), seg)
    check_pair(vol, read_volume(tmp_path / "seg.nii", label=True))


def test_more_than_255_labels_written_as_uint16(tmp_path: Path):
    oblique_nifti(tmp_path / "img.nii.gz", np.zeros((4, 4, 4), np.int16))
    vol = read_volume(tmp_path / "img.nii.gz")
    seg = np.arange(64).reshape(4, 4, 4) * 10  # up to 630
    write_like(tmp_path / "seg.nii.gz", seg, vol)
    out = nib.load(tmp_path / "seg.nii.gz")
    assert out.get_data_dtype() == np.uint16
    np.testing.assert_array_equal(np.asarray(out.dataobj), seg)
    back = read_volume(tmp_path / "seg.nii.gz", label=True)
    assert back.array.dtype == np.uint16 and int(back.array.max()) == 630


def test_scaled_image_header_does_not_scale_labels(tmp_path: Path):
    img = nib.Nifti1Image(np.zeros((3, 3, 3), np.int16), np.eye(4))
    img.header.set_slope_inter(2.0, -5.0)
    nib.save(img, tmp_path / "scaled.nii.gz")
    vol = read_volume(tmp_path / "scaled.nii.gz")
    assert float(vol.array.min()) == -5.0  # the image scaling is applied on read
    seg = np.ones((3, 3, 3), np.uint8)
    write_like(tmp_path / "seg.nii.gz", seg, vol)
    np.testing.assert_array_equal(read_volume(tmp_path / "seg.nii.gz", label=True).array, seg)


@pytest.mark.parametrize(
    ("array", "fragment"),
    [
        (np.zeros((4, 4, 3)), "shape"),
        (np.full((4, 4, 4), 0.5), "non-integer"),
        (np.full((4, 4, 4), -1), "negative"),
        (np.full((4, 4, 4), 70000), "65535"),
        (np.full((4, 4, 4), np.nan), "NaN"),
    ],
)
def test_write_like_refuses_bad_results_and_leaves_nothing(tmp_path: Path, array, fragment):
    oblique_nifti(tmp_path / "img.nii.gz", np.zeros((4, 4, 4), np.int16))
    vol = read_volume(tmp_path / "img.nii.gz")
    with raises_for(tmp_path / "out.nii.gz", fragment):
        write_like(tmp_path / "out.nii.gz", array, vol)
    assert {p.name for p in tmp_path.iterdir()} == {"img.nii.gz"}


def test_shape_mismatch_names_both_files(tmp_path: Path):
    oblique_nifti(tmp_path / "img.nii.gz", np.zeros((4, 4, 4), np.int16))
    vol = read_volume(tmp_path / "img.nii.gz")
    with raises_for(tmp_path / "out.nii.gz", str(tmp_path / "img.nii.gz"), "(4, 4, 4)"):
        write_like(tmp_path / "out.nii.gz", np.zeros((4, 4, 5)), vol)
    with raises_for(tmp_path / "out.mhd", ".mha"):
        write_like(tmp_path / "out.mhd", np.zeros((4, 4, 4)), vol)


# --------------------------------------------------------------------------- SimpleITK formats


def _itk_image(shape_zyx=(5, 6, 7)) -> sitk.Image:
    arr = np.random.default_rng(1).integers(-1000, 1000, shape_zyx).astype(np.int16)
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((0.7, 0.8, 3.0))
    img.SetOrigin((10.0, -20.0, 5.5))
    c, s = np.cos(0.2), np.sin(0.2)
    img.SetDirection((c, -s, 0, s, c, 0, 0, 0, 1))
    return img


@pytest.mark.parametrize("suffix", [".mha", ".nrrd"])
def test_itk_round_trip(tmp_path: Path, suffix: str):
    src = _itk_image()
    sitk.WriteImage(src, str(tmp_path / f"img{suffix}"))
    vol = read_volume(tmp_path / f"img{suffix}")
    assert vol.axes == "zyx" and vol.array.shape == (5, 6, 7)
    assert vol.spacing == pytest.approx((3.0, 0.8, 0.7))
    assert default_slice_axis(vol) == 0
    seg = (vol.array > 0).astype(np.uint8)
    write_like(tmp_path / f"seg{suffix}", seg, vol)
    out = sitk.ReadImage(str(tmp_path / f"seg{suffix}"))
    np.testing.assert_allclose(out.GetOrigin(), src.GetOrigin())
    np.testing.assert_allclose(out.GetDirection(), src.GetDirection(), atol=1e-12)
    np.testing.assert_allclose(out.GetSpacing(), src.GetSpacing())
    np.testing.assert_array_equal(sitk.GetArrayFromImage(out), seg)
    check_pair(vol, read_volume(tmp_path / f"seg{suffix}", label=True))


def test_itk_affine_matches_nibabel_view(tmp_path: Path):
    """Volume.affine of a SimpleITK read maps array indices to the same RAS points nibabel gives."""
    sitk.WriteImage(_itk_image(), str(tmp_path / "img.nii.gz"))
    sitk.WriteImage(_itk_image(), str(tmp_path / "img.mha"))
    itk_vol = read_volume(tmp_path / "img.mha")
    nib_vol = read_volume(tmp_path / "img.nii.gz")
    idx_zyx = np.array([2, 3, 4, 1.0])
    idx_ijk = np.array([4, 3, 2, 1.0])
    np.testing.assert_allclose(itk_vol.affine @ idx_zyx, nib_vol.affine @ idx_ijk, atol=1e-4)
    assert itk_vol.array[2, 3, 4] == nib_vol.array[4, 3, 2]


def test_nifti_reference_written_as_mha(tmp_path: Path):
    data = np.random.default_rng(3).integers(0, 3, (6, 7, 4)).astype(np.uint8)
    oblique_nifti(
        tmp_path / "img.nii.gz", data, qform_shift=(0, 0, 0)
    )  # ITK and nibabel differ in which form wins
    vol = read_volume(tmp_path / "img.nii.gz")
    write_like(tmp_path / "seg.mha", data, vol)
    ours, theirs = sitk.ReadImage(str(tmp_path / "seg.mha")), sitk.ReadImage(str(tmp_path / "img.nii.gz"))
    np.testing.assert_allclose(ours.GetOrigin(), theirs.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(ours.GetDirection(), theirs.GetDirection(), atol=1e-5)
    np.testing.assert_allclose(ours.GetSpacing(), theirs.GetSpacing(), atol=1e-5)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(ours), sitk.GetArrayFromImage(theirs))


def _dicom_series(folder: Path, pixels_zyx: np.ndarray, *, prefix: str = "im") -> None:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    study, series = generate_uid(), generate_uid()
    for z, plane in enumerate(pixels_zyx):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.Modality, ds.PatientID, ds.InstanceNumber = "CT", "X", z + 1
        ds.ImagePositionPatient = [-50.0, -60.0, 100.0 + 2.5 * z]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing, ds.SliceThickness = [0.5, 0.75], 2.5
        ds.Rows, ds.Columns = plane.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleSlope, ds.RescaleIntercept = "1", "-1024"
        ds.PixelData = plane.astype(np.uint16).tobytes()
        # shuffled file names: the reader must order slices by position
        ds.save_as(folder / f"{prefix}{(7 * z) % 11:03d}.dcm", enforce_file_format=True)


def test_dicom_series_folder(tmp_path: Path):
    stored = np.random.default_rng(4).integers(0, 3000, (4, 5, 6)).astype(np.uint16)
    _dicom_series(tmp_path / "series", stored)
    vol = read_volume(tmp_path / "series")
    assert vol.axes == "zyx" and vol.array.shape == (4, 5, 6)
    assert vol.spacing == pytest.approx((2.5, 0.5, 0.75))  # z, row spacing, column spacing
    np.testing.assert_array_equal(vol.array, stored.astype(np.int32) - 1024)
    np.testing.assert_allclose(vol.meta.origin, (-50.0, -60.0, 100.0))
    assert default_slice_axis(vol) == 0
    write_like(tmp_path / "seg.nii.gz", vol.array > 0, vol)
    assert sitk.ReadImage(str(tmp_path / "seg.nii.gz")).GetOrigin() == pytest.approx((-50.0, -60.0, 100.0))


def test_dicom_folder_errors(tmp_path: Path):
    (tmp_path / "empty").mkdir()
    with raises_for(tmp_path / "empty", "no DICOM series"):
        read_volume(tmp_path / "empty")
    _dicom_series(tmp_path / "two", np.zeros((2, 3, 3)), prefix="a")
    _dicom_series(tmp_path / "two", np.zeros((2, 3, 3)), prefix="b")
    with raises_for(tmp_path / "two", "2 DICOM series", "Fix:"):
        read_volume(tmp_path / "two")


# --------------------------------------------------------------------------- bad inputs


def test_bad_volume_files(data_dir: Path, tmp_path: Path):
    with raises_for(tmp_path / "missing.nii.gz", "does not exist"):
        read_volume(tmp_path / "missing.nii.gz")
    raw = (data_dir / HIPPO / "imagesTr/hippocampus_001.nii.gz").read_bytes()
    (tmp_path / "trunc.nii.gz").write_bytes(raw[: len(raw) // 2])
    with raises_for(tmp_path / "trunc.nii.gz", "cannot be read as a volume", "Fix:"):
        read_volume(tmp_path / "trunc.nii.gz")
    (tmp_path / "vol.vtk").write_text("x")
    with raises_for(tmp_path / "vol.vtk", "unsupported", ".nii.gz", ".mha"):
        read_volume(tmp_path / "vol.vtk")
    nib.save(nib.Nifti1Image(np.zeros((3, 3, 3, 2), np.float32), np.eye(4)), tmp_path / "4d.nii.gz")
    with raises_for(tmp_path / "4d.nii.gz", "(3, 3, 3, 2)", "Fix:"):
        read_volume(tmp_path / "4d.nii.gz")
    arr = np.zeros((3, 3, 3), np.float32)
    arr[1, 1, 1] = np.nan
    nib.save(nib.Nifti1Image(arr, np.eye(4)), tmp_path / "nan.nii.gz")
    with raises_for(tmp_path / "nan.nii.gz", "NaN"):
        read_volume(tmp_path / "nan.nii.gz")
    lab = np.zeros((3, 3, 3), np.float32)
    lab[0, 0, 0] = 1.4
    nib.save(nib.Nifti1Image(lab, np.eye(4)), tmp_path / "frac.nii.gz")
    with raises_for(tmp_path / "frac.nii.gz", "non-integer", "Fix:"):
        read_volume(tmp_path / "frac.nii.gz", label=True)
    assert read_volume(tmp_path / "frac.nii.gz").array.dtype == np.float32  # fine as an image


def test_check_pair_mismatches(tmp_path: Path):
    base = np.zeros((4, 5, 6), np.uint8)
    affine = np.diag([1.0, 1.0, 2.0, 1.0])
    nib.save(nib.Nifti1Image(base, affine), tmp_path / "img.nii.gz")
    near, far = affine.copy(), affine.copy()
    near[0, 3], far[0, 3] = 5e-4, 0.01
    nib.save(nib.Nifti1Image(base, near), tmp_path / "near.nii.gz")
    nib.save(nib.Nifti1Image(base, far), tmp_path / "far.nii.gz")
    nib.save(nib.Nifti1Image(base[:, :, :5], affine), tmp_path / "short.nii.gz")
    img = read_volume(tmp_path / "img.nii.gz")
    check_pair(img, read_volume(tmp_path / "near.nii.gz", label=True))  # within 1e-3 mm
    with raises_for(tmp_path / "far.nii.gz", "image " + str(tmp_path / "img.nii.gz"), "geometry", "Fix:"):
        check_pair(img, read_volume(tmp_path / "far.nii.gz", label=True))
    with raises_for(tmp_path / "short.nii.gz", str(tmp_path / "img.nii.gz"), "shapes"):
        check_pair(img, read_volume(tmp_path / "short.nii.gz", label=True))


def test_default_slice_axis_ties_and_anisotropy():
    def vol(spacing, backend):
        return Volume(np.zeros((2, 2, 2)), spacing, VolumeMeta(backend))

    assert default_slice_axis(vol((1.0, 1.0, 1.0), "nibabel")) == 2
    assert default_slice_axis(vol((1.0, 1.0, 1.0), "sitk")) == 0
    assert default_slice_axis(vol((3.0, 0.7, 0.7), "nibabel")) == 0
    assert default_slice_axis(vol((0.7, 0.7, 3.0), "sitk")) == 2
    assert default_slice_axis(vol((2.0, 2.0000001, 1.0), "nibabel")) == 1  # a float-noise tie
