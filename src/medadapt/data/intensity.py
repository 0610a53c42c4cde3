"""Intensity normalisation to the 0..255 images SAM-family models were trained on.

This is the CVPR24 "MedSAM on Laptop" / MedSAM data preparation (``pre_CT_MR.py``): CT is clipped to a
window and rescaled; MR, PET and other unbounded modalities are clipped to the 0.5 / 99.5 percentiles
of the foreground (voxels > 0) with background kept at 0. The final cast truncates (``np.uint8(x)``),
as the reference does, so prepared data match the challenge files value for value.

It is written out here rather than taken from MONAI's ``ScaleIntensityRange(Percentiles)`` because
those transforms have no foreground-only percentiles, no "background stays 0" rule and round differently.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import numpy as np

from medadapt.errors import MedadaptError


class Window(NamedTuple):
    """A CT display window in Hounsfield units."""

    level: float
    width: float


# Radiology presets (Radiopaedia "windowing (CT)"); "abdomen" is the MedSAM / CVPR24 default.
CT_WINDOWS: dict[str, Window] = {
    "abdomen": Window(40, 400),
    "soft_tissue": Window(50, 400),
    "liver": Window(30, 150),
    "mediastinum": Window(50, 350),
    "lung": Window(-600, 1500),
    "bone": Window(400, 1800),
    "brain": Window(40, 80),
    "subdural": Window(75, 215),
}
DEFAULT_CT_WINDOW = "abdomen"

_CT = {"ct"}
_PERCENTILE = {"mr", "mri", "pet", "spect"}
# Modalities stored as display images already (CVPR24 keeps them as they are when 8-bit).
_DISPLAY = set(
    "none xray x-ray cxr mammography us ultrasound endoscopy dermoscopy fundus oct microscopy histopathology rgb".split()
)
MODALITIES = sorted(_CT | _PERCENTILE | _DISPLAY)
_CHUNK = 1 << 24  # voxels per float64 block: bounds memory on large CT volumes


def _check(arr: np.ndarray) -> np.ndarray:
    arr = np.asarray(arr)
    if arr.size == 0:
        raise MedadaptError("cannot normalise an empty image.")
    if arr.dtype.kind not in "biuf":
        raise MedadaptError(f"cannot normalise an image of dtype {arr.dtype}.")
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise MedadaptError("the image holds NaN or infinite values.", fix="replace them before normalising.")
    return arr


def _rescale(arr: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """``uint8((clip(x, lo, hi) - lo) / (hi - lo) * 255)`` in float64 blocks, as the reference computes it."""
    out = np.zeros(arr.shape, dtype=np.uint8)
    if not hi > lo:  # constant image / degenerate window: no contrast to show
        return out
    flat_in, flat_out = arr.reshape(-1), out.reshape(-1)
    for start in range(0, flat_in.size, _CHUNK):
        block = np.clip(flat_in[start : start + _CHUNK].astype(np.float64), lo, hi)
        flat_out[start : start + _CHUNK] = (block - lo) / (hi - lo) * 255.0
    return out


def ct_window(
    arr: np.ndarray, level: float, width: float, *, rescale: Literal["window", "data"] = "window"
) -> np.ndarray:
    """Clip HU to ``level ± width/2`` and map to uint8 0..255 (same shape).

    ``rescale="data"`` maps the clipped image's own min..max instead, literally as ``pre_CT_MR.py``
    does; both agree whenever the image spans the window (any CT that holds air and bone).
    """
    arr = _check(arr)
    if not width > 0:
        raise MedadaptError(
            f"CT window width must be positive, got {width}.", fix="e.g. level 40, width 400 (abdomen)."
        )
    lo, hi = level - width / 2.0, level + width / 2.0
    if rescale == "data":
        lo, hi = max(lo, float(arr.min())), min(hi, float(arr.max()))
    elif rescale != "window":
        raise ValueError(f"rescale must be 'window' or 'data', got {rescale!r}")
    return _rescale(arr, lo, hi)


def mr_percentile(
    arr: np.ndarray, lower: float = 0.5, upper: float = 99.5, *, nonzero: bool = True
) -> np.ndarray:
    """Clip to the ``lower``/``upper`` percentiles and map to uint8 0..255 (same shape).

    With ``nonzero`` the percentiles are taken over voxels > 0 and voxels that were 0 stay 0, so the
    air / skull-stripped background of MR does not compress the tissue contrast. Constant images give 0.
    """
    arr = _check(arr)
    if not 0 <= lower < upper <= 100:
        raise MedadaptError(f"percentiles must satisfy 0 <= lower < upper <= 100, got {lower}, {upper}.")
    values = arr[arr > 0] if nonzero else arr.reshape(-1)
    if values.size == 0:
        return np.zeros(arr.shape, dtype=np.uint8)
    lo, hi = (float(v) for v in np.percentile(values, [lower, upper]))
    out = _rescale(arr, lo, hi)
    if nonzero:
        out[arr == 0] = 0
    return out


def normalise_for_sam(
    arr: np.ndarray,
    modality: str,
    window: str | tuple[float, float] | None = None,
    *,
    is_volume: bool | None = None,
) -> np.ndarray:
    """uint8 0..255 image for a SAM-family model, by modality (same shape as ``arr``).

    CT: a window, by preset name (:data:`CT_WINDOWS`) or ``(level, width)``, default abdomen W400 L40.
    MR / PET / SPECT: foreground percentiles 0.5..99.5. Photographic and projection modalities
    (X-ray, ultrasound, endoscopy, fundus, ...) and ``none``: 8-bit images pass through; others are
    min-max scaled. ``auto`` decides from the pixels: 8-bit 2D images were made for display and pass
    through; volumes (or non-8-bit images) are CT when they hold values <= -500 (Hounsfield units),
    MR otherwise. ``is_volume`` defaults to "3-D and not H×W×3".
    """
    key = modality.strip().lower()
    if is_volume is None:
        is_volume = arr.ndim == 3 and arr.shape[-1] != 3
    if key == "auto":
        if not is_volume and arr.dtype == np.uint8 and window is None:
            key = "none"
        elif window is not None or (arr.dtype.kind in "if" and arr.size and float(np.min(arr)) <= -500):
            key = "ct"
        else:
            key = "mr"
    if key not in _CT | _PERCENTILE | _DISPLAY:
        raise MedadaptError(f"unknown modality '{modality}'.", fix=f"use auto, none or one of: {', '.join(MODALITIES)}.")
    if window is not None and key not in _CT:
        raise MedadaptError(
            f"a CT window was given for modality '{modality}'.",
            fix="drop the window, or set the modality to CT.",
        )
    if key in _CT:
        level, width = _resolve_window(DEFAULT_CT_WINDOW if window is None else window)
        return ct_window(arr, level, width)
    if key in _PERCENTILE:
        return mr_percentile(arr)
    arr = _check(arr)
    if arr.dtype == np.uint8:
        return arr.copy()
    return mr_percentile(arr, 0.0, 100.0, nonzero=False)


def _resolve_window(window: str | tuple[float, float]) -> Window:
    if isinstance(window, str):
        name = window.strip().lower().replace("-", "_").replace(" ", "_")
        if name not in CT_WINDOWS:
            raise MedadaptError(
                f"unknown CT window '{window}'.",
                fix=f"use one of: {', '.join(CT_WINDOWS)}, or (level, width).",
            )
        return CT_WINDOWS[name]
    try:
        level, width = (float(v) for v in window)
    except (TypeError, ValueError) as err:
        raise MedadaptError(f"a CT window is a preset name or (level, width), got {window!r}.") from err
    return Window(level, width)
