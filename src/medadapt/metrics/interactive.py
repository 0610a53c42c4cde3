"""Click simulation and interactive metrics of the CVPR 2025 interactive 3D segmentation challenge.

Follows the official evaluation script ``CVPR25_iter_eval.py`` of github.com/JunMa11/CVPR-MedSegFMCompetition
("Foundation Models for Interactive 3D Biomedical Image Segmentation"), per object (class):

- **Where to click.** The error mask is ``pred != gt`` (missed and extra voxels together); its largest
  connected component (full connectivity: 26 in 3D, 8 in 2D; ties: the first in raster order) is the
  region to fix. The click goes to the voxel of that component farthest from its border (Euclidean
  distance transform of the component, the image edge counting as border, as the official padded crop
  does); among equally far voxels one is drawn with ``numpy.random.RandomState(seed)`` (the official
  code seeds 42 before every draw, which is the default here, so clicks equal the challenge's).
- **Which label.** Ground truth foreground at the click: a positive (foreground) click; background: a
  negative one.
- ``plane="slice"`` (3D only, not the official rule): the click is placed on the slice (along
  ``slice_axis``) where the largest error component holds most voxels, at the farthest point of its 2D
  cross-section there; for slice-wise 2D models that prefer the most wrong slice to the deepest voxel.
- **Metrics.** DSC and NSD (the CVPR24 functions of ``medadapt.metrics.segmentation``) after every
  prediction: index 0 is the initial (box or automatic) prediction, index ``k`` the one after click
  ``k``. ``DSC_AUC`` / ``NSD_AUC`` are the official ``scipy.integrate.cumulative_trapezoid(v[-N:],
  np.arange(N))[-1]``: the trapezoid rule with unit steps over the N predictions *after the clicks*
  (the box prediction is left out because the challenge's box prompt is optional), so the range is
  0..N-1. ``include_box=True`` integrates over all N+1 predictions (0..N) instead. Final DSC / NSD:
  the last values.

Written here because no library offers the challenge's click rule; scipy does the labelling, the
distance transform and the integration.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import integrate, ndimage

OFFICIAL_SEED = 42  # CVPR25_iter_eval.py: np.random.seed(42) before each draw among the farthest voxels


@dataclass(frozen=True)
class SimulatedClick:
    """A click at array index ``index`` (``(y, x)`` or ``(z, y, x)`` in the mask's axis order)."""

    index: tuple[int, ...]
    positive: bool  # True: the voxel is missed foreground (add it); False: extra foreground (remove it)
    error_voxels: int  # size of the error component the click fixes


def largest_error_component(gt: np.ndarray, pred: np.ndarray) -> np.ndarray | None:
    """Boolean mask of the largest connected component of ``gt != pred``; None when they agree."""
    gt, pred = np.asarray(gt, dtype=bool), np.asarray(pred, dtype=bool)
    if gt.shape != pred.shape:
        raise ValueError(f"ground truth shape {gt.shape} differs from prediction shape {pred.shape}")
    error = gt != pred
    if not error.any():
        return None
    labels, _ = ndimage.label(error, structure=ndimage.generate_binary_structure(error.ndim, error.ndim))
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(np.argmax(sizes))  # argmax: the first (raster order) of equal sizes


def farthest_point(component: np.ndarray, *, seed: int = OFFICIAL_SEED) -> tuple[int, ...]:
    """Index of the voxel of ``component`` farthest from its border (array edge included)."""
    coords = np.argwhere(component)
    lo, hi = coords.min(axis=0), coords.max(axis=0) + 1
    crop = component[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))]
    # One zero voxel around the bounding box makes the array edge count as border: the same distances
    # as the official crop padded by 25 %.
    edt = ndimage.distance_transform_edt(np.pad(crop, 1))[(slice(1, -1),) * crop.ndim]
    full = np.zeros(component.shape, dtype=edt.dtype)
    full[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))] = edt
    best = np.argwhere(full == full.max())  # raster order of the whole array, as the official argwhere
    return tuple(int(v) for v in best[np.random.RandomState(seed).choice(len(best))])


def simulate_click(
    gt: np.ndarray,
    pred: np.ndarray,
    *,
    seed: int = OFFICIAL_SEED,
    plane: Literal["volume", "slice"] = "volume",
    slice_axis: int = 0,
) -> SimulatedClick | None:
    """The next corrective click for one object (boolean ``gt`` / ``pred``, 2D or 3D); None if perfect."""
    gt = np.asarray(gt, dtype=bool)
    component = largest_error_component(gt, pred)
    if component is None:
        return None
    size = int(component.sum())
    if plane == "slice" and component.ndim == 3:
        per_slice = component.sum(axis=tuple(a for a in range(3) if a != slice_axis))
        z = int(np.argmax(per_slice))
        yx = farthest_point(np.take(component, z, axis=slice_axis), seed=seed)
        index = (*yx[:slice_axis], z, *yx[slice_axis:])
    elif plane in ("volume", "slice"):
        index = farthest_point(component, seed=seed)
    else:
        raise ValueError(f"plane must be 'volume' or 'slice', got {plane!r}")
    return SimulatedClick(index, bool(gt[index]), size)


def interaction_auc(values: Sequence[float], *, include_box: bool = False) -> float:
    """Area under a per-interaction curve (trapezoid rule, unit step), the official ``*_AUC``.

    ``values[0]`` is the initial prediction, ``values[k]`` the one after click ``k``. By default the
    initial prediction is left out, as the challenge does; one value gives 0.
    """
    v = np.asarray(values, dtype=np.float64)
    if not include_box:
        v = v[1:]
    if v.size < 2:
        return 0.0
    return float(integrate.trapezoid(v, dx=1.0))


def interactive_scores(dsc: Sequence[float], nsd: Sequence[float], *, include_box: bool = False) -> dict:
    """``dsc_auc``, ``nsd_auc``, ``dsc_final``, ``nsd_final`` of one object's curves (index 0: initial)."""
    if len(dsc) != len(nsd) or not len(dsc):
        raise ValueError(f"need equally long, non-empty DSC and NSD curves, got {len(dsc)} and {len(nsd)}")
    return {
        "dsc_auc": interaction_auc(dsc, include_box=include_box),
        "nsd_auc": interaction_auc(nsd, include_box=include_box),
        "dsc_final": float(dsc[-1]) if dsc[-1] is not None else math.nan,
        "nsd_final": float(nsd[-1]) if nsd[-1] is not None else math.nan,
    }


def clicks_to_reach(values: Sequence[float], threshold: float) -> int | None:
    """Interactions needed until ``values[k] >= threshold`` (0: the initial prediction); None if never."""
    for k, v in enumerate(values):
        if v is not None and not math.isnan(v) and v >= threshold:
            return k
    return None
