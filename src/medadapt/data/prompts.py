"""Prompts for SAM-family models: boxes and points derived from labels, and their validation.

Boxes follow the official MedSAM convention: ``x0, y0, x1, y1`` with ``x1``/``y1`` the *last* pixel
index of the object (not one past it), so a one-pixel object has ``x0 == x1``. Training-time jitter
moves each side outwards by a uniform random 0..``jitter`` px, as MedSAM's ``bbox_shift`` does, but
clipped to the last pixel so that boxes always lie on the image. 3D boxes use the CVPR24 order
``x0, y0, z0, x1, y1, z1`` with z the slice axis. Prompt files are read by :mod:`.prompt_files`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from scipy import ndimage

from medadapt.errors import MedadaptError


@dataclass(eq=False)
class Prompt:
    """One object to segment: a box, points, or both (3D: a box only)."""

    class_id: int
    box: np.ndarray | None = None  # (4,) x0, y0, x1, y1 or 3D (6,) x0, y0, z0, x1, y1, z1; float64 pixels
    points: np.ndarray | None = None  # (N, 2) x, y
    point_labels: np.ndarray | None = None  # (N,) 1 = foreground, 0 = background
    object_id: int | None = None

    def __post_init__(self) -> None:
        self.class_id = int(self.class_id)
        if self.box is not None:
            self.box = np.asarray(self.box, dtype=np.float64).reshape(-1)
            if self.box.shape not in ((4,), (6,)):
                raise ValueError(
                    f"a box has 4 numbers x0, y0, x1, y1 (3D: 6, x0, y0, z0, x1, y1, z1), got {self.box.size}"
                )
            if not np.isfinite(self.box).all():
                raise ValueError("box coordinates must be finite numbers")
        if self.points is not None:
            self.points = np.asarray(self.points, dtype=np.float64)
            if self.points.ndim != 2 or self.points.shape[1] != 2 or len(self.points) == 0:
                raise ValueError(
                    f"points must be a non-empty list of [x, y] pairs, got shape {self.points.shape}"
                )
            if not np.isfinite(self.points).all():
                raise ValueError("point coordinates must be finite numbers")
            labels = np.ones(len(self.points)) if self.point_labels is None else self.point_labels
            labels = np.asarray(labels, dtype=np.float64).reshape(-1)
            if len(labels) != len(self.points):
                raise ValueError(f"{len(self.points)} points but {len(labels)} point labels")
            if not np.isin(labels, (0, 1)).all():
                raise ValueError("point labels must be 1 (foreground) or 0 (background)")
            self.point_labels = labels.astype(np.int64)
        elif self.point_labels is not None:
            raise ValueError("point labels were given without points")
        if self.box is None and self.points is None:
            raise ValueError("a prompt needs a box or points")
        if self.is_3d and self.points is not None:
            raise ValueError("points are 2D [x, y]; a 3D box cannot be combined with them")

    @property
    def is_3d(self) -> bool:
        return self.box is not None and len(self.box) == 6


# --------------------------------------------------------------------------- prompts from labels


def mask_box(mask: np.ndarray, dtype=np.float64) -> np.ndarray:
    """Tight (x0, y0, x1, y1) box of a non-empty 2D mask, x1/y1 the last pixel (the prompts' convention)."""
    ys, xs = np.nonzero(mask)
    return np.array([xs.min(), ys.min(), xs.max(), ys.max()], dtype=dtype)


def _as_label(label: np.ndarray, ndim: int) -> np.ndarray:
    lab = np.asarray(label)
    if lab.ndim != ndim:
        raise ValueError(f"expected a {ndim}D label, got shape {lab.shape}")
    if lab.dtype.kind not in "biu":
        raise ValueError(f"labels must be integer class indices, got dtype {lab.dtype}")
    return lab.astype(np.uint8) if lab.dtype == bool else lab


def _classes(lab: np.ndarray, classes: Iterable[int] | None) -> list[int]:
    if classes is None:
        return [int(c) for c in np.unique(lab) if c != 0]
    return [int(c) for c in classes]


def boxes_from_label(
    label2d: np.ndarray,
    *,
    per: Literal["class", "component"] = "class",
    classes: Iterable[int] | None = None,
    jitter: int = 0,
    rng: np.random.Generator | int | None = None,
    connectivity: int = 2,
) -> list[Prompt]:
    """Tight box prompts of each class (or each connected component) in an ``H×W`` label.

    Classes absent from the label give no prompt. ``per="class"`` sets ``object_id = class_id``;
    ``per="component"`` numbers the objects 1..N (classes ascending, components in raster order) and
    uses ``connectivity`` 2 (8-neighbour) or 1 (4-neighbour). ``jitter > 0`` without ``rng`` draws
    from a fresh, unseeded generator.
    """
    if per not in ("class", "component"):
        raise ValueError(f"per must be 'class' or 'component', got {per!r}")
    lab = _as_label(label2d, 2)
    h, w = lab.shape
    gen = np.random.default_rng(rng) if jitter > 0 else None
    structure = ndimage.generate_binary_structure(2, connectivity)
    prompts: list[Prompt] = []
    for c in _classes(lab, classes):
        mask = lab == c
        if per == "class":
            found = ndimage.find_objects(mask.astype(np.uint8))
        else:
            comps, _ = ndimage.label(mask, structure=structure)
            found = ndimage.find_objects(comps)
        for sy, sx in (s for s in found if s is not None):
            box = np.array([sx.start, sy.start, sx.stop - 1, sy.stop - 1], dtype=np.float64)
            if gen is not None:
                shift = gen.integers(0, jitter + 1, size=4)  # outwards on each side
                box += shift * np.array([-1, -1, 1, 1])
                box = np.clip(box, 0, [w - 1, h - 1, w - 1, h - 1])
            oid = c if per == "class" else len(prompts) + 1
            prompts.append(Prompt(class_id=c, box=box, object_id=oid))
    return prompts


def points_from_label(
    label2d: np.ndarray,
    class_id: int,
    n_pos: int = 1,
    n_neg: int = 0,
    rng: np.random.Generator | int | None = None,
) -> Prompt:
    """Point prompt for one class: ``n_pos`` points inside it, then ``n_neg`` outside it.

    Without ``rng`` the result is deterministic: the first positive is the most interior pixel
    (maximum of the distance transform, image border counted as outside; first in raster order on a
    tie), the remaining points come from a generator seeded with 0. With ``rng`` all points are random.
    """
    lab = _as_label(label2d, 2)
    if n_pos < 0 or n_neg < 0 or n_pos + n_neg == 0:
        raise ValueError(f"need at least one point, got n_pos={n_pos}, n_neg={n_neg}")
    mask = lab == class_id
    inside, outside = np.flatnonzero(mask), np.flatnonzero(~mask)
    if len(inside) == 0:
        raise MedadaptError(f"class {class_id} is not in the label, so no point prompt can be placed on it.")
    if n_pos > len(inside) or n_neg > len(outside):
        raise ValueError(
            f"asked for {n_pos} positive / {n_neg} negative points, but the class covers {len(inside)} "
            f"pixels and the rest {len(outside)}"
        )
    gen = np.random.default_rng(0 if rng is None else rng)
    if rng is None and n_pos > 0:
        depth = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
        first = int(np.argmax(depth))
        rest = gen.choice(inside[inside != first], n_pos - 1, replace=False)
        pos = np.concatenate([[first], rest]).astype(np.int64)
    else:
        pos = gen.choice(inside, n_pos, replace=False)
    neg = gen.choice(outside, n_neg, replace=False)
    rows, cols = np.unravel_index(np.concatenate([pos, neg]).astype(np.int64), lab.shape)
    labels = np.r_[np.ones(n_pos, np.int64), np.zeros(n_neg, np.int64)]
    return Prompt(
        class_id=class_id, points=np.stack([cols, rows], axis=1), point_labels=labels, object_id=class_id
    )


def boxes3d_from_label(
    label3d: np.ndarray, slice_axis: int = 0, classes: Iterable[int] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """One tight 3D box per class: ``boxes`` (N, 6) ``x0, y0, z0, x1, y1, z1`` and ``class_ids`` (N,).

    Both int64, inclusive, classes ascending (absent classes skipped). Axes are those of
    ``np.moveaxis(label3d, slice_axis, 0)``: z = the slice axis, then y and x the remaining axes in
    their order; this is the frame of CVPR24 ``boxes`` and of slice-wise inference.
    """
    lab = np.moveaxis(_as_label(label3d, 3), slice_axis, 0)  # (z, y, x)
    boxes, ids = [], []
    for c in _classes(lab, classes):
        found = ndimage.find_objects((lab == c).astype(np.uint8))
        if found:
            sz, sy, sx = found[0]
            boxes.append([sx.start, sy.start, sz.start, sx.stop - 1, sy.stop - 1, sz.stop - 1])
            ids.append(c)
    return np.array(boxes, dtype=np.int64).reshape(-1, 6), np.array(ids, dtype=np.int64)


def reframe_boxes3d(boxes: np.ndarray, slice_axis: int) -> np.ndarray:
    """3D boxes of the volume frame (z = axis 0, as CVPR24 ``.npz`` store them) in the frame of ``slice_axis``.

    The same boxes as ``boxes3d_from_label(label, slice_axis)`` would give, so that box propagation
    can run along any axis of a challenge file.
    """
    boxes = np.asarray(boxes).reshape(-1, 6)
    lo = boxes[:, [2, 1, 0]]  # per volume axis 0, 1, 2: z0, y0, x0
    hi = boxes[:, [5, 4, 3]]
    order = [slice_axis] + [a for a in range(3) if a != slice_axis]  # (z', y', x') of the slice frame
    z, y, x = order
    return np.stack([lo[:, x], lo[:, y], lo[:, z], hi[:, x], hi[:, y], hi[:, z]], axis=1)


# --------------------------------------------------------------------------- validation


def validate_prompts(
    prompts: Sequence[Prompt],
    image_shape: Sequence[int],
    path: str | Path | None,
    *,
    image: str | None = None,
) -> None:
    """Refuse prompts that cannot apply to an image of ``image_shape``.

    ``image_shape`` is ``H, W[, C]`` for 2D prompts and ``D, H, W`` (slice axis first) for 3D boxes;
    a list must not mix the two. Box corners may lie on the image border (0..W, 0..H: both the
    last-pixel and the one-past-the-end conventions occur in prompt files); points must fall on a
    pixel (0 <= x < W, 0 <= y < H).
    """
    name = f"image '{image}'" if image else "the image"
    if len(prompts) == 0:
        raise MedadaptError(
            f"{name} has no prompts.", path=path, fix="give at least one box or point per image."
        )
    n3d = sum(p.is_3d for p in prompts)
    if n3d and (n3d != len(prompts) or len(image_shape) != 3):
        raise MedadaptError(
            f"{name}: 3D boxes (6 numbers) were given for a {len(image_shape)}D image of shape {tuple(image_shape)},"
            " or mixed with 2D prompts.",
            path=path,
            fix="use x0, y0, x1, y1 boxes for 2D images and x0, y0, z0, x1, y1, z1 boxes (only) for volumes.",
        )
    # extent per box axis: x ≤ W, y ≤ H (, z ≤ D)
    limits = (image_shape[2], image_shape[1], image_shape[0]) if n3d else (image_shape[1], image_shape[0])
    limits = np.array([int(v) for v in limits], dtype=np.float64)
    size = "×".join(str(int(v)) for v in limits) + (" (W×H×D)" if n3d else " (W×H)")
    for i, p in enumerate(prompts):
        where = f"{name}, prompt {i} (class {p.class_id})"
        if p.box is not None:
            k = len(p.box) // 2
            lo, hi = p.box[:k], p.box[k:]
            if (hi < lo).any():
                raise MedadaptError(
                    f"{where}: box {p.box.tolist()} has an end before its start (e.g. x1 < x0).",
                    path=path,
                    fix="boxes are x0, y0[, z0], x1, y1[, z1]: the start corner first.",
                )
            if (lo < 0).any() or (hi > limits).any():
                raise MedadaptError(
                    f"{where}: box {p.box.tolist()} lies outside the {size} image.",
                    path=path,
                    fix="box coordinates are pixels of the original image, x along the width; "
                    "check for swapped x/y or a resized image.",
                )
        if p.points is not None:
            w, h = limits[0], limits[1]
            xs, ys = p.points[:, 0], p.points[:, 1]
            bad = (xs < 0) | (xs >= w) | (ys < 0) | (ys >= h)
            if bad.any():
                j = int(np.argmax(bad))
                raise MedadaptError(
                    f"{where}: point {p.points[j].tolist()} lies outside the {size} image.",
                    path=path,
                    fix="points are [x, y] pixel positions of the original image; check for swapped x/y.",
                )
