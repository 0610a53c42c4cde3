"""2D samples for SAM-family models: the labelled slices of volumes, and 2D images as they are.

Every :class:`SliceSample` remembers its case (the volume or image it came from), the slice index and
the axis, so training can keep volumes apart and predictions can be put back with :func:`reassemble`.
Slices are taken with ``np.take`` along the axis, so the in-plane axes keep their array order.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from medadapt.data.datasets import Dataset


@dataclass(frozen=True, eq=False)
class SliceSample:
    """One 2D training / evaluation sample.

    ``axis`` is None (and ``index`` 0) for a 2D image. ``spacing`` is the in-plane spacing (2 values,
    in the order of the image axes). ``volume_shape`` is the shape of the case it came from.
    ``prompts`` is empty here; augmentation fills it with the prompts of the augmented label.
    """

    key: str
    index: int
    axis: int | None
    image: np.ndarray  # H×W or H×W×3 uint8 0..255
    label: np.ndarray  # H×W integer class map
    spacing: tuple[float, float]
    volume_shape: tuple[int, ...]
    prompts: tuple = ()


def iter_slices(
    dataset: Dataset,
    keys: Iterable[str],
    *,
    axis: int | None = None,
    classes: Sequence[int] | None = None,
    min_pixels: int = 1,
    include_empty: bool = False,
) -> Iterator[SliceSample]:
    """Yield the slices of the given cases that show at least ``min_pixels`` foreground pixels.

    ``axis`` overrides each volume's through-plane axis. ``classes`` keeps only those classes in the
    label (the others become background) and counts only them. ``include_empty`` yields every slice
    (for inference / reassembly). 2D images are yielded whole, with the same filter.
    """
    wanted = None if classes is None else np.asarray(sorted(set(int(c) for c in classes)))
    for key in keys:
        case = dataset.load(key)
        vol_axis = None
        if case.label.ndim == 3:
            vol_axis = case.slice_axis if axis is None else axis
            if not -3 <= vol_axis < 3:
                raise ValueError(f"axis {vol_axis} is not an axis of a 3D volume")
            vol_axis %= 3
        if vol_axis is None:
            items: Iterable[tuple[int, np.ndarray, np.ndarray]] = [(0, case.image, case.label)]
            spacing = tuple(case.spacing[:2])
        else:
            n = case.label.shape[vol_axis]
            items = (
                (i, np.take(case.image, i, axis=vol_axis), np.take(case.label, i, axis=vol_axis))
                for i in range(n)
            )
            spacing = tuple(s for a, s in enumerate(case.spacing) if a != vol_axis)
        for index, image, label in items:
            if wanted is not None:
                label = np.where(np.isin(label, wanted), label, 0).astype(label.dtype)
            if not include_empty and np.count_nonzero(label) < max(1, min_pixels):
                continue
            yield SliceSample(
                key=key,
                index=int(index),
                axis=vol_axis,
                image=np.ascontiguousarray(image),
                label=np.ascontiguousarray(label),
                spacing=spacing,
                volume_shape=tuple(case.label.shape),
            )


def with_empty_slices(samples: Sequence[SliceSample], ratio: float) -> list[SliceSample]:
    """Every slice that shows a class, plus up to ``ratio`` x as many slices that show none.

    Automatic (prompt-free) inference segments every slice of a volume, so its training must also
    see slices where the answer is "nothing"; in CT-sized volumes these would swamp the labelled
    ones, hence the cap. The empty slices kept are evenly spaced in the input order (deterministic).
    """
    shows = [bool(np.any(s.label)) for s in samples]
    empty = [i for i, has in enumerate(shows) if not has]
    n = min(len(empty), int(round(ratio * (len(samples) - len(empty)))))
    keep = {empty[int(j)] for j in np.linspace(0, len(empty) - 1, n).round()} if n else set()
    return [s for i, s in enumerate(samples) if shows[i] or i in keep]


def reassemble(
    predictions: Mapping[int, np.ndarray] | Iterable[tuple[int, np.ndarray]],
    shape: Sequence[int],
    axis: int,
    dtype=np.uint8,
) -> np.ndarray:
    """Put 2D predictions ``{slice index: H×W}`` back into a volume of ``shape``; missing slices are 0."""
    shape = tuple(int(s) for s in shape)
    out = np.zeros(shape, dtype=dtype)
    view = np.moveaxis(out, axis, 0)  # a view: writing into it fills ``out``
    items = predictions.items() if isinstance(predictions, Mapping) else predictions
    for index, pred in items:
        pred = np.asarray(pred)
        if pred.shape != view.shape[1:]:
            raise ValueError(f"slice {index}: prediction shape {pred.shape} != slice shape {view.shape[1:]}")
        if not 0 <= index < view.shape[0]:
            raise ValueError(f"slice index {index} outside 0..{view.shape[0] - 1}")
        view[index] = pred
    return out
