"""Ground truth and prediction drawn over the image: a few slices per case, as one PNG.

For each chosen slice the figure shows three tiles: the ground truth, the prediction (class colours
blended over the image, with a one-pixel outline so thin structures stay visible) and the
disagreement (voxels the prediction missed, and voxels it added or gave the wrong class). Small
structures in a large field of view are shown zoomed (one window per case, the same on every slice).
Tiles are composed in numpy and laid out with matplotlib for titles and the legend.

Display conventions: a NIfTI volume (nibabel's ``i, j, k`` array order) is rotated by 90° so that a
slice looks as in a radiological viewer rather than lying on its side; anisotropic voxels keep their
physical aspect ratio. Small images are upsampled (nearest neighbour, voxels stay honest) before the
outline is drawn so the outline stays thin.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from scipy import ndimage

from medadapt.errors import MedadaptError
from medadapt.io.discovery import case_key, full_suffix, is_volume_file, stem
from medadapt.io.images import read_label_2d
from medadapt.io.volumes import read_volume
from medadapt.optional import require
from medadapt.report.figures import _COLORS, to_png

Figure = require("matplotlib.figure", extra="report", purpose="report figures").Figure
Patch = require("matplotlib.patches", extra="report", purpose="report figures").Patch

MISSED = (0, 215, 255)  # in the ground truth, not predicted (as that class)
EXTRA = (255, 40, 200)  # predicted, not in the ground truth (as that class)
_MIN_TILE = 192  # pixels: smaller slices are upsampled to at least this
ROWS = ("ground truth", "prediction", "errors")


def class_color(c: int) -> tuple[int, int, int]:
    h = _COLORS[(int(c) - 1) % len(_COLORS)].lstrip("#")
    return tuple(int(h[i : i + 2], 16) for i in (0, 2, 4))  # type: ignore[return-value]


def pick_slices(label: np.ndarray, pred: np.ndarray, axis: int, n: int = 4) -> list[int]:
    """``n`` slices evenly spread over those holding ground truth or prediction (the middle one if none)."""
    other = tuple(i for i in range(label.ndim) if i != axis)
    fg = np.flatnonzero(np.any((label > 0) | (pred > 0), axis=other))
    if fg.size == 0:
        return [label.shape[axis] // 2]
    q = (np.arange(n) + 1) / (n + 1)
    return sorted({int(fg[int(round(x * (fg.size - 1)))]) for x in q})


def _upsample(arr: np.ndarray, factor: int) -> np.ndarray:
    return arr if factor == 1 else np.repeat(np.repeat(arr, factor, axis=0), factor, axis=1)


def _base_rgb(image: np.ndarray | None, shape: tuple[int, int]) -> np.ndarray:
    if image is None:
        return np.zeros((*shape, 3), dtype=np.float32)
    img = image.astype(np.float32)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=-1)
    if img.max(initial=0) > 1.0:
        img = img / 255.0
    return img


def blend(base: np.ndarray, mask: np.ndarray, *, alpha: float = 0.45) -> np.ndarray:
    """Class colours over ``base`` (H×W×3 in 0..1) with an outline: uint8 H×W×3."""
    out = base.copy()
    for c in np.unique(mask):
        if c == 0:
            continue
        m = mask == c
        color = np.asarray(class_color(int(c)), dtype=np.float32) / 255.0
        out[m] = (1 - alpha) * out[m] + alpha * color
        out[m & ~ndimage.binary_erosion(m)] = color
    return (np.clip(out, 0, 1) * 255).round().astype(np.uint8)


def errors(base: np.ndarray, label: np.ndarray, pred: np.ndarray, *, alpha: float = 0.75) -> np.ndarray:
    """Missed (label voxels not predicted as their class) and extra (predicted voxels of another class)."""
    out = base * 0.6  # dim the image so the colours read
    missed = (label > 0) & (pred != label)
    extra = (pred > 0) & (pred != label)
    for m, color in ((missed, MISSED), (extra, EXTRA)):
        out[m] = (1 - alpha) * out[m] + alpha * np.asarray(color, dtype=np.float32) / 255.0
    return (np.clip(out, 0, 1) * 255).round().astype(np.uint8)


def crop_window(label: np.ndarray, pred: np.ndarray, axis: int | None, *, min_share: float = 0.36,
                margin: float = 0.5) -> tuple[slice, slice]:
    """In-plane window around every structure of the case (ground truth or prediction), with a margin of
    ``margin`` × its size; the whole plane when the structures already fill ``min_share`` of it."""
    union = (label > 0) | (pred > 0)
    plane = union if axis is None else union.any(axis=axis)  # [H, W] in slice order
    full = (slice(0, plane.shape[0]), slice(0, plane.shape[1]))
    if not plane.any():
        return full
    rows, cols = np.flatnonzero(plane.any(axis=1)), np.flatnonzero(plane.any(axis=0))
    r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    pad = max(8, int(margin * max(r1 - r0, c1 - c0)))
    r0, c0 = max(0, r0 - pad), max(0, c0 - pad)
    r1, c1 = min(plane.shape[0], r1 + pad), min(plane.shape[1], c1 + pad)
    if (r1 - r0) * (c1 - c0) >= min_share * plane.size:
        return full
    return slice(r0, r1), slice(c0, c1)


def _slice(arr: np.ndarray, axis: int | None, index: int, window: tuple[slice, slice], rotate: bool) -> np.ndarray:
    s = (arr if axis is None else np.take(arr, index, axis=axis))[window]
    return np.rot90(s) if rotate else s


def case_figure(
    image: np.ndarray,
    label: np.ndarray,
    pred: np.ndarray,
    *,
    slice_axis: int | None,
    spacing: Sequence[float] | None = None,
    title: str = "",
    n_slices: int = 4,
    rotate: bool = False,
    class_names: Mapping[int, str] | None = None,
) -> bytes:
    """PNG of ground truth / prediction / errors (rows) on ``n_slices`` slices (columns) of one case.

    ``image`` is uint8 (volume, ``H×W`` or ``H×W×3``), ``label`` / ``pred`` integer class maps of the
    same spatial shape, ``slice_axis`` the through-plane axis of a volume (None for 2D).
    """
    spatial = label.shape
    if pred.shape != spatial or image.shape[: len(spatial)] != spatial:
        raise MedadaptError(
            f"image {image.shape}, ground truth {label.shape} and prediction {pred.shape} differ in shape."
        )
    indices = pick_slices(label, pred, slice_axis, n_slices) if slice_axis is not None else [0]
    window = crop_window(label, pred, slice_axis)
    plane = label.shape if slice_axis is None else tuple(n for i, n in enumerate(label.shape) if i != slice_axis)
    zoomed = (window[0].stop - window[0].start, window[1].stop - window[1].start) != plane[:2]
    aspect = 1.0
    if spacing is not None and len(spacing) == label.ndim:
        rc = [spacing[i] for i in range(label.ndim) if i != slice_axis][:2]
        if rotate:
            rc = rc[::-1]
        aspect = float(rc[0]) / float(rc[1]) if rc[1] else 1.0
    columns = []
    for idx in indices:
        lab, prd, img = (_slice(a, slice_axis, idx, window, rotate) for a in (label, pred, image))
        factor = max(1, math.ceil(_MIN_TILE / max(lab.shape)))
        lab, prd, img = (_upsample(a, factor) for a in (lab, prd, img))
        base = _base_rgb(img, lab.shape)
        columns.append((idx, (blend(base, lab), blend(base, prd), errors(base, lab, prd))))

    one = len(columns) == 1  # a 2D image: the three tiles side by side
    nrows, ncols = (1, 3) if one else (3, len(columns))
    h, w = columns[0][1][0].shape[:2]
    tile_w = 3.4 if one else 2.3
    tile_h = min(3.2, tile_w * h * aspect / w)
    fig = Figure(figsize=(tile_w * ncols + 0.6, tile_h * nrows + 0.9), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for j, (idx, tiles) in enumerate(columns):
        for i, tile in enumerate(tiles):
            ax = axes[0, i] if one else axes[i, j]
            ax.imshow(tile, aspect=aspect, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            for side in ax.spines.values():
                side.set_visible(False)
            if one:
                ax.set_title(ROWS[i], fontsize=9)
            else:
                if i == 0:
                    ax.set_title(f"slice {idx}", fontsize=9)
                if j == 0:
                    ax.set_ylabel(ROWS[i], fontsize=9)
    classes = sorted(({int(c) for c in np.unique(label)} | {int(c) for c in np.unique(pred)}) - {0})
    handles = [Patch(color=np.asarray(class_color(c)) / 255, label=(class_names or {}).get(c, f"class {c}"))
               for c in classes]
    handles += [Patch(color=np.asarray(MISSED) / 255, label="missed"),
                Patch(color=np.asarray(EXTRA) / 255, label="extra / wrong class")]
    fig.legend(handles=handles, loc="outside lower center", ncols=min(6, len(handles)), fontsize=8, frameon=False)
    if title or zoomed:
        fig.suptitle(title + ("  (zoomed on the structures)" if zoomed else ""), fontsize=10)
    return to_png(fig)


# --------------------------------------------------------------------------- predictions on disk


def find_prediction(pred_dir: Path, image_path: Path, key: str) -> Path | None:
    """The prediction ``medadapt evaluate --save-predictions`` wrote for a case: same file name as the
    image (volumes, ``.npz``), or ``<stem>.png`` (2D images); else any file whose case key matches."""

    for cand in (pred_dir / image_path.name, pred_dir / f"{stem(image_path)}.png"):
        if cand.is_file():
            return cand
    for cand in sorted(pred_dir.iterdir()):
        if cand.is_file() and case_key(cand) == key:
            return cand
    return None


def read_prediction(path: Path) -> np.ndarray:
    """A prediction file as an integer class map (NIfTI / other volume, CVPR24 ``.npz`` ``segs``, 2D mask)."""

    if full_suffix(path) == ".npz":
        with np.load(path, allow_pickle=False) as z:
            if "segs" not in z:
                raise MedadaptError("this prediction .npz has no 'segs' array.", path=path)
            return np.asarray(z["segs"])
    if is_volume_file(path):
        return read_volume(path, label=True).array

    return read_label_2d(path)
