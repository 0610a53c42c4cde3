"""3D volumes with the geometry needed to write results back in place.

A :class:`Volume` keeps the voxels in the order the file stores them — nibabel's ``i, j, k`` for NIfTI,
SimpleITK's ``z, y, x`` for everything else — with ``spacing`` in the same order, so nothing is silently
transposed. The header travels in a :class:`VolumeMeta`: :func:`write_like` writes a label volume that
overlays the input exactly in any viewer.

NIfTI goes through nibabel because SimpleITK rewrites qform/sform and refuses some oblique headers
that clinical converters produce; SimpleITK reads the rest (MHA/MHD/NRRD, DICOM series) and is the
fallback for NIfTI files nibabel rejects. Both are imported where used: together they add about a second
to the start of every command (2-core CPU), and most commands never read a volume.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from medadapt.errors import MedadaptError
from medadapt.io.atomic import atomic_path
from medadapt.io.images import check_pixels, file_suffix, require_file

_NIFTI = (".nii", ".nii.gz")
_SITK_READ = (".mha", ".mhd", ".nrrd", ".nhdr", ".dcm")
_WRITE = (".nii.gz", ".nii", ".mha", ".nrrd")
SUPPORTED_VOLUME_SUFFIXES = _NIFTI + _SITK_READ
AFFINE_TOL_MM = 1e-3
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


@dataclass(frozen=True)
class VolumeMeta:
    """Geometry of the file a volume came from.

    ``backend="nibabel"``: ``affine`` (4×4, voxel ``i,j,k`` → RAS mm) and the full NIfTI ``header``.
    ``backend="sitk"``: ITK ``origin``, ``direction`` (row-major 3×3) and ``itk_spacing``, all in ITK
    ``x, y, z`` order and LPS world coordinates.
    """

    backend: Literal["nibabel", "sitk"]
    affine: np.ndarray | None = None
    header: Any = None
    origin: tuple[float, ...] | None = None
    direction: tuple[float, ...] | None = None
    itk_spacing: tuple[float, ...] | None = None


@dataclass(eq=False)
class Volume:
    """Voxels (in stored axis order), spacing in mm (same order), geometry and the source path."""

    array: np.ndarray  # nibabel: (I, J, K); SimpleITK: (Z, Y, X)
    spacing: tuple[float, float, float]
    meta: VolumeMeta
    path: Path = field(default_factory=Path)

    @property
    def axes(self) -> str:
        return "ijk" if self.meta.backend == "nibabel" else "zyx"

    @property
    def affine(self) -> np.ndarray:
        """4×4 map from an index into ``array`` (its own axis order) to RAS world mm."""
        if self.meta.backend == "nibabel":
            return np.asarray(self.meta.affine, dtype=np.float64)
        d = np.asarray(self.meta.direction, dtype=np.float64).reshape(3, 3)
        lin = d @ np.diag(self.meta.itk_spacing) @ np.eye(3)[::-1]  # array (z,y,x) → ITK (x,y,z) → LPS
        out = np.eye(4)
        out[:3, :3] = _LPS_TO_RAS @ lin
        out[:3, 3] = _LPS_TO_RAS @ np.asarray(self.meta.origin, dtype=np.float64)
        return out


# --------------------------------------------------------------------------- reading


def read_volume(path: str | Path, *, label: bool = False, series_id: str | None = None) -> Volume:
    """Read a 3D image or label volume (NIfTI, MHA/MHD, NRRD, or a folder holding one DICOM series).

    With ``label=True`` the voxels become integer class indices (``uint8``, or ``uint16``/``int32``
    when needed); labels stored as float (some MSD hippocampus files) are rounded, and anything that is
    not a whole number is refused rather than truncated.
    """
    path = Path(path)
    what = "label volume" if label else "image volume"
    if path.is_dir():
        vol = _read_dicom_series(path, series_id)
    else:
        path = require_file(path, what)
        suffix = file_suffix(path)
        if suffix in _NIFTI:
            vol = _read_nifti(path)
        elif suffix in _SITK_READ:
            vol = _read_sitk(path)
        else:
            raise MedadaptError(
                f"unsupported volume type '{suffix or '(no extension)'}'.",
                path=path,
                fix=f"convert it to one of: {', '.join(SUPPORTED_VOLUME_SUFFIXES)}, or give a folder with one DICOM series.",
            )
    check_pixels(vol.array, path, what)
    if label:
        vol.array = _to_label(vol.array, path, "the label volume")
    return vol


def _unreadable(path: Path, err: Exception) -> MedadaptError:
    return MedadaptError(
        f"cannot be read as a volume ({type(err).__name__}: {err}).",
        path=path,
        fix="check that the file is complete (not truncated by a download or copy) and opens in a viewer such as ITK-SNAP or 3D Slicer.",
    )


def _as_3d(arr: np.ndarray, path: Path) -> np.ndarray:
    while arr.ndim > 3 and arr.shape[-1] == 1:  # NIfTI stores (I, J, K, 1) for some 3D files
        arr = arr[..., 0]
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3:
        raise MedadaptError(
            f"has shape {tuple(arr.shape)}; a 3D volume was expected.",
            path=path,
            fix="split multi-channel / time-series files into one 3D file per channel (nnU-Net's _0000, _0001 naming).",
        )
    return arr


def _read_nifti(path: Path) -> Volume:
    import nibabel as nib

    try:
        img = nib.load(path)
    except Exception as nib_err:  # a header nibabel rejects: SimpleITK may still read it
        try:
            return _read_sitk(path)
        except MedadaptError:
            raise _unreadable(path, nib_err) from nib_err
    try:
        arr = np.asanyarray(img.dataobj)  # applies scl_slope / scl_inter, keeps the stored dtype otherwise
    except Exception as err:  # truncated data: no fallback, SimpleITK would zero-fill it silently
        raise _unreadable(path, err) from err
    arr = _as_3d(arr, path)
    zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
    zooms = zooms + (1.0,) * (3 - len(zooms))
    meta = VolumeMeta("nibabel", affine=np.array(img.affine, dtype=np.float64), header=img.header.copy())
    return Volume(arr, zooms, meta, path)


def _from_sitk(img, path: Path) -> Volume:
    import SimpleITK as sitk

    if img.GetDimension() != 3 or img.GetNumberOfComponentsPerPixel() != 1:
        raise MedadaptError(
            f"is a {img.GetDimension()}D image with {img.GetNumberOfComponentsPerPixel()} component(s) per voxel; "
            "a 3D single-channel volume was expected.",
            path=path,
            fix="read 2D files with medadapt.io.images.read_image_2d; split multi-component volumes into one file per channel.",
        )
    arr = sitk.GetArrayFromImage(img)  # (z, y, x)
    meta = VolumeMeta(
        "sitk",
        origin=tuple(img.GetOrigin()),
        direction=tuple(img.GetDirection()),
        itk_spacing=tuple(img.GetSpacing()),
    )
    return Volume(arr, tuple(float(s) for s in img.GetSpacing()[::-1]), meta, path)


def _read_sitk(path: Path) -> Volume:
    import SimpleITK as sitk

    try:
        img = sitk.ReadImage(str(path))
    except Exception as err:
        raise _unreadable(path, err) from err
    return _from_sitk(img, path)


def _read_dicom_series(folder: Path, series_id: str | None) -> Volume:
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    ids = list(reader.GetGDCMSeriesIDs(str(folder)))
    if not ids:
        raise MedadaptError(
            "the folder holds no DICOM series.",
            path=folder,
            fix="give a volume file (.nii.gz, .mha, .nrrd) or a folder that contains the .dcm files of one series.",
        )
    if series_id is None and len(ids) > 1:
        raise MedadaptError(
            f"the folder holds {len(ids)} DICOM series ({', '.join(ids)}).",
            path=folder,
            fix="move each series into its own folder, or pass series_id.",
        )
    sid = series_id or ids[0]
    if sid not in ids:
        raise MedadaptError(
            f"DICOM series '{sid}' is not in the folder (found: {', '.join(ids)}).", path=folder
        )
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder), sid))
    try:
        img = reader.Execute()  # applies RescaleSlope / Intercept, orders slices by position
    except Exception as err:
        raise _unreadable(folder, err) from err
    return _from_sitk(img, folder)


def _to_label(arr: np.ndarray, path: Path, what: str) -> np.ndarray:
    """Integer class indices in the smallest unsigned dtype that holds them."""
    if arr.dtype == bool:
        return arr.astype(np.uint8)
    if arr.dtype.kind == "f":
        rounded = np.round(arr)
        worst = float(np.abs(arr - rounded).max())
        if worst > 1e-3:
            raise MedadaptError(
                f"{what} holds non-integer values (off by up to {worst:.3g} from a whole number).",
                path=path,
                fix="labels must be class indices; re-export them without interpolation (nearest neighbour) or as an integer type.",
            )
        arr = rounded
    elif arr.dtype.kind not in "iu":
        raise MedadaptError(f"{what} has voxel type {arr.dtype}, not class indices.", path=path)
    lo, hi = int(arr.min()), int(arr.max())
    if lo < 0:
        raise MedadaptError(
            f"{what} holds negative values (down to {lo}).",
            path=path,
            fix="classes are 0 (background), 1, 2, ...",
        )
    dtype = np.uint8 if hi <= 255 else np.uint16 if hi <= 65535 else np.int32
    if hi > np.iinfo(np.int32).max:
        raise MedadaptError(f"{what} holds class {hi}, too large for a label.", path=path)
    return arr.astype(dtype)


# --------------------------------------------------------------------------- writing


def write_like(path: str | Path, array: np.ndarray, ref: Volume) -> None:
    """Write a label volume with the geometry of ``ref`` (affine/header or ITK information), atomically.

    ``array`` must have ``ref.array``'s shape and axis order. NIfTI outputs of a nibabel reference keep
    its qform/sform and codes; the voxel type becomes uint8, or uint16 above 255 labels.
    """
    path = Path(path)
    array = np.asarray(array)
    if array.shape != ref.array.shape:
        raise MedadaptError(
            f"the result has shape {array.shape} but the reference {ref.path} has {ref.array.shape}.",
            path=path,
            fix="pass the array in the reference volume's own axis order (Volume.array), not transposed or resampled.",
        )
    suffix = file_suffix(path)
    if suffix not in _WRITE:
        raise MedadaptError(
            f"cannot write volumes of type '{suffix or '(no extension)'}'.",
            path=path,
            fix=f"use one of: {', '.join(_WRITE)} (.mhd/.nhdr are two files and cannot be written atomically).",
        )
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise MedadaptError("the result holds NaN or infinite values.", path=path)
    data = _to_label(array, path, "the result")
    if data.dtype == np.int32:
        raise MedadaptError(
            f"the result holds labels up to {int(data.max())}; at most 65535 can be written.", path=path
        )
    if ref.meta.backend == "nibabel" and suffix in _NIFTI:
        _write_nifti(path, data, ref.meta)
    else:
        _write_sitk(path, data, ref)


def _write_nifti(path: Path, data: np.ndarray, meta: VolumeMeta) -> None:
    import nibabel as nib

    hdr = meta.header.copy()
    klass = nib.Nifti2Image if isinstance(hdr, nib.Nifti2Header) else nib.Nifti1Image
    img = klass(data, meta.affine, header=hdr)
    img.set_data_dtype(data.dtype)
    img.header.set_slope_inter(1.0, 0.0)  # the image's intensity scaling must not touch class indices
    img.header["cal_min"], img.header["cal_max"] = 0, 0
    img.set_qform(hdr.get_qform(), code=int(hdr["qform_code"]))
    img.set_sform(hdr.get_sform(), code=int(hdr["sform_code"]))
    with atomic_path(path) as tmp:
        nib.save(img, tmp)


def _write_sitk(path: Path, data: np.ndarray, ref: Volume) -> None:
    import SimpleITK as sitk

    if ref.meta.backend == "sitk":
        img = sitk.GetImageFromArray(data)  # (z, y, x)
        img.SetOrigin(ref.meta.origin)
        img.SetSpacing(ref.meta.itk_spacing)
        img.SetDirection(ref.meta.direction)
    else:  # NIfTI reference, ITK output: (i, j, k) is ITK (x, y, z); RAS affine → LPS origin/direction
        lin = np.asarray(ref.meta.affine, dtype=np.float64)[:3, :3]
        spacing = np.linalg.norm(lin, axis=0)
        img = sitk.GetImageFromArray(np.ascontiguousarray(data.transpose(2, 1, 0)))
        img.SetSpacing(tuple(float(s) for s in spacing))
        img.SetDirection(tuple(float(v) for v in (_LPS_TO_RAS @ (lin / spacing)).ravel()))
        img.SetOrigin(tuple(float(v) for v in _LPS_TO_RAS @ np.asarray(ref.meta.affine)[:3, 3]))
    with atomic_path(path) as tmp:
        sitk.WriteImage(img, str(tmp), True)


# --------------------------------------------------------------------------- geometry checks


def default_slice_axis(vol: Volume) -> int:
    """The through-plane axis: largest spacing; on a tie the last axis for ``i,j,k`` (k), the first for ``z,y,x`` (z)."""
    sp = np.asarray(vol.spacing, dtype=np.float64)
    ties = np.flatnonzero(np.isclose(sp, sp.max(), rtol=1e-3, atol=0.0))
    return int(ties[-1] if vol.axes == "ijk" else ties[0])


def check_pair(image: Volume, label: Volume) -> None:
    """Refuse an image/label pair whose voxels do not overlay (shape or affine, tolerance 1e-3 mm)."""
    names = f"image {image.path} and label {label.path}"
    mixed = image.meta.backend != label.meta.backend
    hint = (
        " They were read with different libraries (nibabel vs SimpleITK), so their axis orders differ."
        if mixed
        else ""
    )
    if image.array.shape != label.array.shape:
        raise MedadaptError(
            f"{names} have different shapes {image.array.shape} vs {label.array.shape}.{hint}",
            path=label.path,
            fix="pair each image with its own label, or resample the label onto the image grid (nearest neighbour).",
        )
    diff = float(np.abs(image.affine - label.affine).max())
    if diff > AFFINE_TOL_MM:
        raise MedadaptError(
            f"{names} have different geometry (affines differ by up to {diff:.4g} mm).{hint}",
            path=label.path,
            fix="check that they belong to the same case; if they do, copy the image header onto the label "
            "(e.g. SimpleITK CopyInformation) after verifying the overlay in a viewer.",
        )
