"""2D images and label masks from the files users bring.

One entry point per intent: :func:`read_image_2d` for pixels a model looks at, :func:`read_label_2d`
for class masks, :func:`write_mask_png` for results. Each format goes through the library that reads it
faithfully: tifffile for TIFF (16-bit, float, planar), pydicom for DICOM (rescale, MONOCHROME1),
nibabel / SimpleITK for single-slice volumes, OpenCV for 16-bit colour PNG (Pillow silently drops it to
8 bits) and Pillow for the rest. Every problem a user can fix becomes a :class:`MedadaptError` that
names the file, says what is wrong and how to fix it. nibabel and SimpleITK are imported where used,
as in :mod:`medadapt.io.volumes` (start-up time).

Single-slice volumes are returned with rows = second voxel axis (y) and columns = first (x), the
SimpleITK / nnU-Net view, so a PNG converted to NIfTI by nnU-Net reads back as the same H×W image.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pydicom
import tifffile
from PIL import Image
from pydicom.pixels import apply_modality_lut

from medadapt.errors import MedadaptError
from medadapt.io.atomic import atomic_path

_PIL_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
_TIFF_SUFFIXES = (".tif", ".tiff")
_DICOM_SUFFIXES = (".dcm", ".dicom")
_NIFTI_SUFFIXES = (".nii.gz", ".nii")
_SITK_SUFFIXES = (".mha", ".mhd", ".nrrd", ".nhdr")
SUPPORTED_2D_SUFFIXES = _PIL_SUFFIXES + _TIFF_SUFFIXES + _DICOM_SUFFIXES + _NIFTI_SUFFIXES + _SITK_SUFFIXES


# --------------------------------------------------------------------------- checks shared by readers


def require_file(path: str | Path, what: str = "file") -> Path:
    """The path as a ``Path`` if it is a non-empty file, else a MedadaptError saying which."""
    path = Path(path)
    if not path.exists():
        raise MedadaptError(f"the {what} does not exist.", path=path, fix="check the path and its spelling.")
    if not path.is_file():
        raise MedadaptError(f"the {what} is a folder, not a file.", path=path, fix="give the path of a file.")
    if path.stat().st_size == 0:
        raise MedadaptError(
            f"the {what} is empty (0 bytes).",
            path=path,
            fix="re-export or re-copy the file; it was not written completely.",
        )
    return path


def check_pixels(arr: np.ndarray, path: str | Path, what: str = "image") -> np.ndarray:
    """Reject arrays no model can use: zero pixels, or NaN / Inf intensities."""
    if arr.size == 0:
        raise MedadaptError(
            f"the {what} holds no pixels (shape {tuple(arr.shape)}).",
            path=path,
            fix="check that the file was exported correctly.",
        )
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        n_bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
        raise MedadaptError(
            f"the {what} contains {n_bad} NaN or infinite values.",
            path=path,
            fix="replace them (e.g. with the background value) before using the file.",
        )
    return arr


def file_suffix(path: str | Path) -> str:
    """Lower-case format suffix with ``.nii.gz`` as one suffix."""
    name = Path(path).name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else Path(name).suffix


def _is_dicom(path: Path) -> bool:
    if file_suffix(path) in _DICOM_SUFFIXES:
        return True
    with open(path, "rb") as f:  # extension-less DICOM: "DICM" after the 128-byte preamble
        f.seek(128)
        return f.read(4) == b"DICM"


def _unreadable(path: Path, kind: str, err: Exception) -> MedadaptError:
    return MedadaptError(
        f"cannot be read as {kind} ({type(err).__name__}: {err}).",
        path=path,
        fix="check that the file is not corrupt or truncated (open it in an image viewer) and that its extension matches its content.",
    )


# --------------------------------------------------------------------------- format readers (raw pixels)


def _read_pil(path: Path, label: bool) -> np.ndarray:
    try:
        with Image.open(path) as img:
            if getattr(img, "n_frames", 1) > 1:
                raise MedadaptError(
                    f"holds {img.n_frames} frames; a single 2D image was expected.",
                    path=path,
                    fix="save one frame per file, or store the stack as a 3D volume (NIfTI).",
                )
            img.load()
            return _pil_to_array(img, label)
    except MedadaptError:
        raise
    except Exception as err:  # PIL raises many types for corrupt files
        raise _unreadable(path, "an image", err) from err


def _pil_to_array(img, label: bool) -> np.ndarray:
    mode = img.mode
    if mode == "1":  # bilevel: 0/1 as a label, 0/255 as an image
        arr = np.asarray(img, dtype=np.uint8)
        return arr if label else arr * np.uint8(255)
    if mode == "P":
        palette = np.asarray(img.getpalette() or [], dtype=np.uint8).reshape(-1, 3)
        idx = np.asarray(img)
        used = palette[np.unique(idx)] if len(palette) else palette
        grey = len(used) > 0 and bool((used == used[:, :1]).all())
        if label and not grey:  # colour-coded palette masks (VOC style): the index is the class
            return idx
        img = img.convert("L" if grey else ("RGBA" if "transparency" in img.info else "RGB"))
        mode = img.mode
    if mode in ("L", "I", "F") or mode.startswith("I;16"):
        arr = np.asarray(img)
        return arr.astype(arr.dtype.newbyteorder("="), copy=False)
    if mode == "LA":
        return np.asarray(img)[..., 0]
    if mode == "RGBA":
        return np.asarray(img)[..., :3]
    return np.asarray(img.convert("RGB"))


def _png_header(path: Path) -> tuple[int, int] | None:
    """(bit depth, colour type) from the PNG IHDR chunk, or None for a non-PNG file."""
    with open(path, "rb") as f:
        head = f.read(26)
    return (head[24], head[25]) if len(head) == 26 and head[:8] == b"\x89PNG\r\n\x1a\n" else None


def _read_png16_cv2(path: Path, colour_type: int) -> np.ndarray:
    arr = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if arr is None:
        raise _unreadable(path, "a PNG image", ValueError("OpenCV could not decode it"))
    if arr.ndim == 3:  # OpenCV gives BGR(A); grey+alpha (colour type 4) comes back as BGRA too
        arr = arr[..., 0].copy() if colour_type in (0, 4) else arr[..., :3][..., ::-1].copy()
    return arr


def _read_tiff(path: Path, label: bool) -> np.ndarray:
    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            arr, axes = series.asarray(), series.axes
    except Exception as err:  # e.g. a codec tifffile lacks: Pillow may still decode it
        try:
            return _read_pil(path, label)
        except MedadaptError:
            raise _unreadable(path, "a TIFF image", err) from err
    keep = [i for i, (n, a) in enumerate(zip(arr.shape, axes, strict=True)) if n != 1 or a in "YX"]
    arr, axes = arr.reshape([arr.shape[i] for i in keep]), "".join(axes[i] for i in keep)
    if arr.ndim == 3 and axes[0] in "SC" and arr.shape[0] in (2, 3, 4):  # planar → channels last
        arr, axes = np.moveaxis(arr, 0, -1), axes[1:] + axes[0]
    if arr.ndim == 3 and arr.shape[-1] in (2, 3, 4) and axes[-1] in "SC":
        arr = arr[..., 0] if arr.shape[-1] == 2 else arr[..., :3]  # grey+alpha / RGBA → drop alpha
    elif arr.ndim != 2:
        raise MedadaptError(
            f"is a TIFF stack of shape {tuple(arr.shape)} (axes {axes}); a single 2D image was expected.",
            path=path,
            fix="save one slice per file, or convert the stack to a 3D volume (NIfTI) and use it as a volume.",
        )
    return arr.astype(arr.dtype.newbyteorder("="), copy=False)


def _read_dicom(path: Path) -> np.ndarray:
    try:
        ds = pydicom.dcmread(path)
    except Exception as err:
        raise _unreadable(path, "DICOM", err) from err
    if "PixelData" not in ds and "SOPClassUID" not in ds:
        raise MedadaptError(
            "is not a valid DICOM file (no recognisable elements).",
            path=path,
            fix="check that the file is not corrupt or truncated and opens in a DICOM viewer.",
        )
    if "PixelData" not in ds:
        raise MedadaptError(
            "is a DICOM file without pixel data (a report, structured set or presentation state?).",
            path=path,
            fix="point to the image files of the series.",
        )
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    if frames > 1:
        raise MedadaptError(
            f"is a multi-frame DICOM ({frames} frames); a single 2D image was expected.",
            path=path,
            fix="read it as a volume, or export the frame you want as its own file.",
        )
    try:
        stored = ds.pixel_array
    except Exception as err:  # compressed transfer syntax without a decoder, truncated pixel data...
        raise MedadaptError(
            f"DICOM pixel data cannot be decoded ({type(err).__name__}: {err}).",
            path=path,
            fix="install a decoder (pip install pylibjpeg pylibjpeg-libjpeg, or python-gdcm) or decompress the file (gdcmconv --raw).",
        ) from err
    arr = stored
    if int(getattr(ds, "SamplesPerPixel", 1)) == 1:
        slope = float(getattr(ds, "RescaleSlope", 1) or 1)
        intercept = float(getattr(ds, "RescaleIntercept", 0) or 0)
        if "ModalityLUTSequence" in ds or (slope, intercept) != (1.0, 0.0):
            arr = apply_modality_lut(stored, ds).astype(np.float32)  # e.g. CT stored values → HU
        if str(getattr(ds, "PhotometricInterpretation", "")).upper() == "MONOCHROME1":
            lo, hi = arr.min(), arr.max()  # high values are dark: flip within the value range
            arr = (hi - arr) + lo
    return np.asarray(arr)


def _read_nifti_slice(path: Path) -> np.ndarray:
    import nibabel as nib

    try:
        arr = np.asanyarray(nib.load(path).dataobj)
    except Exception as err:
        raise _unreadable(path, "NIfTI", err) from err
    arr = _squeeze_slice(arr, path)
    return arr.T  # (i, j) → rows j, columns i: the SimpleITK view


def _read_sitk_slice(path: Path) -> np.ndarray:
    import SimpleITK as sitk

    try:
        img = sitk.ReadImage(str(path))
    except Exception as err:
        raise _unreadable(path, "an ITK image", err) from err
    arr = sitk.GetArrayFromImage(img)  # (z, y, x[, c])
    if img.GetNumberOfComponentsPerPixel() in (3, 4) and arr.ndim >= 3:
        spatial = _squeeze_slice(arr[..., 0], path)
        return arr.reshape(*spatial.shape, arr.shape[-1])[..., :3]
    return _squeeze_slice(arr, path)


def _squeeze_slice(arr: np.ndarray, path: Path) -> np.ndarray:
    check_pixels(arr, path)  # a zero-sized axis must be reported as such, not as a shape problem
    out = arr.squeeze()
    if out.ndim != 2:
        raise MedadaptError(
            f"has shape {tuple(arr.shape)}, which is not a single 2D slice.",
            path=path,
            fix="read it as a 3D volume (medadapt.io.volumes.read_volume), or save the slice you need as its own file.",
        )
    return out


def _read_raw(path: str | Path, label: bool) -> tuple[Path, np.ndarray]:
    path = require_file(path, "label" if label else "image")
    suffix = file_suffix(path)
    if suffix in _TIFF_SUFFIXES:
        arr = _read_tiff(path, label)
    elif suffix == ".png" and (_png_header(path) or (0, 0))[0] == 16:
        arr = _read_png16_cv2(path, _png_header(path)[1])
    elif suffix in _PIL_SUFFIXES:
        arr = _read_pil(path, label)
    elif suffix in _NIFTI_SUFFIXES:
        arr = _read_nifti_slice(path)
    elif suffix in _SITK_SUFFIXES:
        arr = _read_sitk_slice(path)
    elif _is_dicom(path):
        arr = _read_dicom(path)
    else:
        raise MedadaptError(
            f"unsupported file type '{suffix or '(no extension)'}'.",
            path=path,
            fix=f"convert it to one of: {', '.join(SUPPORTED_2D_SUFFIXES)}.",
        )
    return path, check_pixels(np.ascontiguousarray(arr), path, "label" if label else "image")


# --------------------------------------------------------------------------- public API


def read_image_2d(path: str | Path) -> np.ndarray:
    """Pixels of a 2D image: ``H×W`` or ``H×W×3`` in the file's own dtype (16-bit and float kept).

    RGBA drops alpha; DICOM gets its modality rescale (e.g. HU for CT) and MONOCHROME1 is inverted so
    that bright means high signal; a volume file is accepted when it holds exactly one slice.
    """
    _, arr = _read_raw(path, label=False)
    return arr


def read_label_2d(path: str | Path, *, binary: bool | None = None) -> np.ndarray:
    """Class indices of a 2D mask as ``uint8`` ``H×W``.

    Masks saved for viewing become 0/1: with ``binary=None`` that is any mask holding 0 plus only
    values >= 128 (0/255, and lossy exports that leave 254 beside 255, as some of the prostate
    masks do); ``binary=True`` makes every nonzero pixel class 1, ``binary=False`` keeps the raw values.
    RGB masks whose channels are identical collapse to one.
    Colour-coded RGB masks, negative or fractional values and more than 255 classes are refused,
    because guessing a class mapping would silently train on wrong labels.
    """
    path, arr = _read_raw(path, label=True)
    if arr.ndim == 3:
        if not (arr == arr[..., :1]).all():
            raise MedadaptError(
                "is a colour (RGB) mask whose channels differ; class indices cannot be read from colours.",
                path=path,
                fix="save the mask as a single-channel image whose pixel values are the class indices (0 = background).",
            )
        arr = arr[..., 0]
    arr = _as_class_indices(arr, path)
    if binary or (binary is None and is_viewing_mask(arr)):
        arr = (arr > 0).astype(np.uint8)
    return arr


def is_viewing_mask(label: np.ndarray) -> bool:
    """0 plus only values >= 128: a mask drawn for display, not class indices."""
    values = np.unique(label)
    return len(values) > 1 and int(values[0]) == 0 and int(values[1]) >= 128


def _as_class_indices(arr: np.ndarray, path: Path) -> np.ndarray:
    if arr.dtype == bool:
        return arr.astype(np.uint8)
    if arr.dtype.kind == "f":
        rounded = np.round(arr)
        if np.abs(arr - rounded).max() > 1e-3:
            raise MedadaptError(
                "holds non-integer values; a label mask must hold whole class indices.",
                path=path,
                fix="save the mask with integer class values (0 = background, 1, 2, ...), not probabilities or an interpolated image.",
            )
        arr = rounded
    lo, hi = arr.min(), arr.max()
    if lo < 0 or hi > 255:
        raise MedadaptError(
            f"holds values from {lo:g} to {hi:g}; 2D label masks must hold class indices 0..255.",
            path=path,
            fix="renumber the classes to 0..255 (0 = background).",
        )
    values = np.unique(arr)
    if hi == 255 and set(values.tolist()) <= {0, 255}:
        arr = arr // 255  # a viewing mask: 255 means foreground
    return arr.astype(np.uint8)


def write_mask_png(path: str | Path, mask: np.ndarray, *, binary_255: bool = False) -> None:
    """Save a class mask as an 8-bit PNG, atomically.

    ``binary_255=True`` stores a 0/1 mask as 0/255 so that it is visible in an image viewer;
    :func:`read_label_2d` maps it back to 0/1.
    """
    path = Path(path)
    if file_suffix(path) != ".png":
        raise MedadaptError("masks are written as PNG.", path=path, fix="give an output name ending in .png.")
    mask = np.asarray(mask)
    if mask.ndim != 2 or mask.size == 0:
        raise MedadaptError(
            f"cannot write a mask of shape {mask.shape}; a non-empty H×W array is needed.", path=path
        )
    if mask.dtype.kind not in "biuf":
        raise MedadaptError(
            f"cannot write a mask of dtype {mask.dtype}.", path=path, fix="pass integer class indices."
        )
    if mask.dtype.kind == "f" and not (np.isfinite(mask).all() and (mask == np.round(mask)).all()):
        raise MedadaptError(
            "the mask holds non-integer values.", path=path, fix="threshold or round it before saving."
        )
    lo, hi = (int(mask.min()), int(mask.max())) if mask.dtype != bool else (0, 1)
    if lo < 0 or hi > 255:
        raise MedadaptError(
            f"the mask holds values {lo}..{hi}; an 8-bit PNG holds 0..255.",
            path=path,
            fix="write more than 255 classes as NIfTI (medadapt.io.volumes.write_like) or as CVPR24 npz.",
        )
    out = mask.astype(np.uint8)
    if binary_255:
        if hi > 1:
            raise MedadaptError(
                f"binary_255 needs a 0/1 mask, but it holds values up to {hi}.",
                path=path,
                fix="drop binary_255.",
            )
        out = out * np.uint8(255)
    with atomic_path(path) as tmp:
        Image.fromarray(out).save(tmp, format="PNG")
