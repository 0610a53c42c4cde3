"""CVPR 2024 "MedSAM on Laptop" challenge cases (``.npz``).

Inputs hold ``imgs`` (2D: ``H×W×3`` uint8; 3D: ``D×H×W`` uint8, already windowed to 0..255),
``boxes`` (2D: ``N×4`` ``x0,y0,x1,y1``; 3D: ``N×6`` ``x0,y0,z0,x1,y1,z1`` with z the first array axis),
``spacing`` (3D) and, in training / ground-truth files, ``gts``. Box ``i`` (from 0) prompts object
``i + 1`` of the output ``segs``. The reader checks all of that up front so that a malformed case fails
with its file name instead of deep inside inference.

``spacing`` is returned as stored. The official evaluation pairs ``spacing[i]`` with array axis ``i``,
although MedSAM's preparation script stored SimpleITK's ``x, y, z`` order there; for volumes whose
through-plane spacing differs from the in-plane one the two readings differ, so it is not reordered here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medadapt.errors import MedadaptError
from medadapt.io.atomic import atomic_path
from medadapt.io.images import check_pixels, require_file


@dataclass(eq=False)
class Cvpr24Case:
    """One challenge case. Field names follow the npz keys."""

    path: Path
    ndim: int  # 2 or 3: spatial dimensionality
    imgs: np.ndarray  # 2D: (H, W, 3) uint8; 3D: (D, H, W) uint8
    boxes: np.ndarray | None  # 2D: (N, 4); 3D: (N, 6); float64
    spacing: tuple[float, ...] | None  # 3D: as stored (official evaluation: array-axis order)
    gts: np.ndarray | None  # spatial shape of imgs, integer object ids

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return self.imgs.shape[:2] if self.ndim == 2 else self.imgs.shape


def _fail(path: Path, what: str, fix: str | None = None) -> MedadaptError:
    return MedadaptError(
        what,
        path=path,
        fix=fix or "see the CVPR24 'MedSAM on Laptop' npz layout: imgs, boxes, spacing (3D), gts.",
    )


def read_cvpr24(path: str | Path, *, require_boxes: bool = True) -> Cvpr24Case:
    """Load and validate a challenge ``.npz``.

    The case is 3D when its name starts with ``3D_`` (the challenge naming) or its boxes have 6 columns,
    2D for ``2D_`` or 4 columns. A 2D grey ``H×W`` image is repeated to 3 channels, as the official
    inference does. ``require_boxes=False`` accepts training files that only hold ``imgs`` and ``gts``.
    """
    path = require_file(path, "CVPR24 case")
    try:
        with np.load(path, allow_pickle=False) as npz:
            data = {k: npz[k] for k in npz.files}
    except Exception as err:
        if isinstance(err, ValueError) and "pickle" in str(err):  # object arrays: never unpickle user files
            raise _fail(
                path, "holds Python objects, which are not loaded for safety.", "save plain numeric arrays."
            ) from err
        raise _fail(
            path,
            f"is not a readable .npz archive ({type(err).__name__}: {err}).",
            "re-save it with numpy.savez_compressed.",
        ) from err
    found = ", ".join(sorted(data)) or "nothing"
    if "imgs" not in data:
        raise _fail(path, f"has no 'imgs' array (found: {found}).")
    if require_boxes and "boxes" not in data:
        raise _fail(
            path,
            f"has no 'boxes' array (found: {found}).",
            "add the prompts as 'boxes' (N×4 for 2D, N×6 for 3D).",
        )

    imgs = check_pixels(np.asarray(data["imgs"]), path, "'imgs' array")
    boxes = data.get("boxes")
    ndim = _dimensionality(path, imgs, boxes, "spacing" in data)
    imgs = _check_imgs(path, imgs, ndim)
    spatial = imgs.shape[:2] if ndim == 2 else imgs.shape
    spacing = _check_spacing(path, data.get("spacing"), ndim)
    if boxes is not None:
        boxes = _check_boxes(path, boxes, ndim, spatial)
    gts = data.get("gts")
    if gts is not None:
        gts = _check_gts(path, gts, spatial)
    return Cvpr24Case(path, ndim, imgs, boxes, spacing, gts)


def _dimensionality(path: Path, imgs: np.ndarray, boxes: np.ndarray | None, has_spacing: bool) -> int:
    name = path.name.upper()
    by_name = 2 if name.startswith("2D_") else 3 if name.startswith("3D_") else None
    by_boxes = None
    if boxes is not None:
        b = np.asarray(boxes)
        width = b.shape[-1] if b.ndim in (1, 2) and b.size else None
        by_boxes = {4: 2, 6: 3}.get(width)
        if by_boxes is None:
            raise _fail(
                path,
                f"'boxes' has shape {b.shape}; expected N×4 (2D, x0,y0,x1,y1) or N×6 (3D, x0,y0,z0,x1,y1,z1) with N ≥ 1.",
            )
    if by_name and by_boxes and by_name != by_boxes:
        raise _fail(
            path,
            f"is named as a {by_name}D case but its boxes have {4 if by_boxes == 2 else 6} columns ({by_boxes}D).",
        )
    if by_name or by_boxes:
        return by_name or by_boxes
    return 2 if imgs.ndim == 2 or (imgs.ndim == 3 and imgs.shape[-1] == 3 and not has_spacing) else 3


def _check_imgs(path: Path, imgs: np.ndarray, ndim: int) -> np.ndarray:
    if ndim == 2 and imgs.ndim == 2:
        imgs = np.repeat(imgs[:, :, None], 3, axis=-1)
    expected = "H×W×3" if ndim == 2 else "D×H×W"
    if imgs.ndim != 3 or (ndim == 2 and imgs.shape[-1] != 3):
        raise _fail(path, f"'imgs' has shape {imgs.shape}; a {ndim}D case needs {expected}.")
    if imgs.dtype != np.uint8:
        if (
            imgs.dtype.kind not in "iuf"
            or imgs.min() < 0
            or imgs.max() > 255
            or (imgs != np.round(imgs)).any()
        ):
            raise _fail(
                path,
                f"'imgs' is {imgs.dtype} with values {imgs.min():g}..{imgs.max():g}; the challenge format holds 0..255 integers.",
                "normalise intensities first (medadapt.data.intensity.normalise_for_sam) and store uint8.",
            )
        imgs = imgs.astype(np.uint8)
    return imgs


def _check_spacing(path: Path, spacing, ndim: int) -> tuple[float, ...] | None:
    if spacing is None:
        if ndim == 3:
            raise _fail(
                path,
                "is a 3D case without 'spacing'.",
                "add 'spacing' (3 values in mm, array-axis order z, y, x).",
            )
        return None
    sp = np.asarray(spacing, dtype=np.float64).ravel()
    if len(sp) not in (ndim, 3) or not (np.isfinite(sp).all() and (sp > 0).all()):
        raise _fail(path, f"'spacing' is {sp.tolist()}; expected {ndim} positive values in mm.")
    return tuple(float(s) for s in sp)


def _check_boxes(path: Path, boxes, ndim: int, spatial: tuple[int, ...]) -> np.ndarray:
    width = 2 * ndim
    b = np.asarray(boxes)
    if b.ndim == 1:
        b = b[None]
    if b.dtype.kind not in "iuf" or b.ndim != 2 or b.shape[1] != width or len(b) == 0:
        raise _fail(
            path,
            f"'boxes' has shape {np.shape(boxes)} ({b.dtype}); a {ndim}D case needs N×{width} numbers with N ≥ 1.",
        )
    b = b.astype(np.float64)
    if not np.isfinite(b).all():
        raise _fail(path, "'boxes' holds NaN or infinite values.")
    # limits per column: x ≤ W, y ≤ H (, z ≤ D); 3D spatial is (D, H, W)
    limit = np.array(spatial[::-1], dtype=np.float64)  # (W, H[, D]): spatial is (H, W) or (D, H, W)
    lo, hi = b[:, :ndim], b[:, ndim:]
    names = "xyz"[:ndim]
    for i in range(len(b)):
        for a, n in enumerate(names):
            if hi[i, a] < lo[i, a]:
                raise _fail(
                    path,
                    f"box {i} has {n}1={hi[i, a]:g} < {n}0={lo[i, a]:g}.",
                    "boxes are x0,y0[,z0],x1,y1[,z1] with x0 ≤ x1.",
                )
            if lo[i, a] < 0 or hi[i, a] > limit[a]:
                raise _fail(
                    path,
                    f"box {i} ({b[i].tolist()}) reaches outside the image along {n} (0..{limit[a]:g}).",
                    "box coordinates are pixel indices of this image (z is the first array axis); check their order and scale.",
                )
    return b


def _check_gts(path: Path, gts, spatial: tuple[int, ...]) -> np.ndarray:
    g = np.asarray(gts)
    if g.shape != tuple(spatial):
        raise _fail(path, f"'gts' has shape {g.shape} but the image's spatial shape is {tuple(spatial)}.")
    if g.dtype.kind not in "biuf" or (g.dtype.kind == "f" and (g != np.round(g)).any()) or g.min() < 0:
        raise _fail(path, "'gts' does not hold non-negative integer object ids.")
    if g.dtype.kind in "bf":
        g = g.astype(np.uint16 if g.max() > 255 else np.uint8)
    return g


def write_cvpr24_segs(path: str | Path, segs: np.ndarray) -> None:
    """Save a prediction as ``segs`` (uint16, so more than 255 objects fit) with ``np.savez_compressed``, atomically."""
    path = Path(path)
    if path.suffix.lower() != ".npz":
        raise MedadaptError(
            "CVPR24 results are .npz files.", path=path, fix="give an output name ending in .npz."
        )
    s = np.asarray(segs)
    if s.ndim not in (2, 3) or s.size == 0:
        raise MedadaptError(f"'segs' must be a non-empty 2D or 3D array, got shape {s.shape}.", path=path)
    if s.dtype.kind not in "biuf":
        raise MedadaptError(f"'segs' has dtype {s.dtype}; integer object ids are needed.", path=path)
    if s.dtype.kind == "f" and not (np.isfinite(s).all() and (s == np.round(s)).all()):
        raise MedadaptError(
            "'segs' holds non-integer values.", path=path, fix="threshold / round the prediction first."
        )
    if s.dtype != bool and (s.min() < 0 or s.max() > 65535):
        raise MedadaptError(
            f"'segs' holds values {s.min():g}..{s.max():g}; object ids must be 0..65535.", path=path
        )
    with atomic_path(path) as tmp, open(tmp, "wb") as f:  # a file object: numpy adds no second ".npz"
        np.savez_compressed(f, segs=s.astype(np.uint16))
