"""Surface distances: surfel areas against closed-form geometry, distances against a brute-force EDT."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from medadapt.errors import MedadaptError
from medadapt.metrics import surface
from medadapt.metrics.surface import hd95, nsd, robust_hausdorff, surface_distances


def _box(shape, lo, hi):
    m = np.zeros(shape, bool)
    m[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))] = True
    return m


@pytest.mark.parametrize("n, spacing", [(3, (1.0, 1.0, 1.0)), (5, (1.0, 2.0, 3.0)), (4, (2.5, 0.7, 0.8))])
def test_cube_surface_area_closed_form(n, spacing):
    """Marching-cubes surface of an n^3 voxel cube: flat faces, chamfered edges, corner triangles."""
    a, b, c = spacing
    m = _box((n + 4,) * 3, (2, 2, 2), (n + 2,) * 3)
    faces = 2 * (n - 1) ** 2 * (b * c + a * c + a * b)
    edges = 4 * (n - 1) * 0.5 * (a * math.hypot(b, c) + b * math.hypot(a, c) + c * math.hypot(a, b))
    corners = math.sqrt((b * c) ** 2 + (a * c) ** 2 + (a * b) ** 2)
    sd = surface_distances(m, m, spacing)
    assert sd.surfel_areas_gt.sum() == pytest.approx(faces + edges + corners, rel=1e-12)
    assert np.all(sd.distances_gt_to_pred == 0)


@pytest.mark.parametrize("spacing", [(1.0, 1.0), (2.0, 3.0)])
def test_square_contour_length_2d(spacing):
    n, (a, b) = 6, spacing
    m = _box((n + 4, n + 4), (2, 2), (n + 2, n + 2))
    sd = surface_distances(m, m, spacing)
    assert sd.surfel_areas_gt.sum() == pytest.approx(2 * (n - 1) * (a + b) + 2 * math.hypot(a, b), rel=1e-12)


def test_area_table_follows_spacing_axes():
    s0, s1, s2 = 0.5, 2.0, 7.0
    table = surface._surfel_area_table_3d((s0, s1, s2))
    # code 0b00001111: the four corners at x0 = 1 inside -> one plane normal to axis 0, area s1*s2.
    assert table[0b00001111] == pytest.approx(s1 * s2)
    assert table[0b00110011] == pytest.approx(s0 * s2)  # plane normal to axis 1
    assert table[0b01010101] == pytest.approx(s0 * s1)  # plane normal to axis 2
    assert table[0] == table[255] == 0


def test_distances_equal_full_edt_bit_for_bit():
    rng = np.random.default_rng(3)
    for spacing in [(0.7, 0.7, 2.5), (1.5, 0.8, 0.8)]:
        at = rng.random((17, 23, 11)) < 0.05
        to = rng.random((17, 23, 11)) < 0.02
        expected = ndimage.distance_transform_edt(~to, sampling=spacing)[at]
        np.testing.assert_array_equal(surface._distances(at, to=to, spacing=spacing), expected)


def test_shift_along_anisotropic_axis():
    """A slab shifted by one voxel along axis 2 (2.5 mm): faces move by 2.5 mm, the sides not at all."""
    spacing = (0.8, 0.8, 2.5)
    gt = _box((40, 40, 12), (5, 5, 3), (35, 35, 8))
    seg = np.roll(gt, 1, axis=2)
    sd = surface_distances(gt, seg, spacing)
    assert hd95(sd) == pytest.approx(2.5)
    assert nsd(sd, 2.5) == pytest.approx(1.0)
    assert nsd(sd, 2.0) < 1.0
    assert robust_hausdorff(sd, 0) == 0.0


def test_sorted_and_symmetric():
    rng = np.random.default_rng(0)
    gt = ndimage.binary_dilation(rng.random((20, 20, 10)) < 0.02, iterations=2)
    seg = ndimage.binary_dilation(rng.random((20, 20, 10)) < 0.02, iterations=2)
    sd, ds = surface_distances(gt, seg, (1.0, 1.2, 3.0)), surface_distances(seg, gt, (1.0, 1.2, 3.0))
    assert np.all(np.diff(sd.distances_gt_to_pred) >= 0)
    np.testing.assert_array_equal(sd.distances_gt_to_pred, ds.distances_pred_to_gt)
    np.testing.assert_array_equal(sd.surfel_areas_pred, ds.surfel_areas_gt)
    assert nsd(sd, 2.0) == nsd(ds, 2.0)
    assert hd95(sd) == hd95(ds)


def test_empty_masks():
    gt = _box((10, 10, 4), (2, 2, 1), (6, 6, 3))
    empty = np.zeros_like(gt)
    one = surface_distances(gt, empty, (1.0, 1.0, 1.0))
    assert np.all(np.isinf(one.distances_gt_to_pred)) and one.distances_pred_to_gt.size == 0
    assert nsd(one, 2.0) == 0.0 and hd95(one) == math.inf
    assert hd95(surface_distances(empty, gt, (1.0, 1.0, 1.0))) == math.inf
    both = surface_distances(empty, empty, (1.0, 1.0, 1.0))
    assert math.isnan(nsd(both, 2.0)) and math.isnan(hd95(both))


def test_object_touching_the_border_is_closed():
    """Masks touching the array edge still get a closed surface (zero padding past both ends)."""
    m = np.ones((3, 3, 3), bool)
    sd = surface_distances(m, m, (1.0, 1.0, 1.0))
    assert sd.surfel_areas_gt.sum() == pytest.approx(6 * 4 + 6 * math.sqrt(2) * 2 + math.sqrt(3))


@pytest.mark.parametrize(
    "shape_seg, spacing",
    [((10, 10, 4), (1.0, 1.0)), ((10, 10, 5), (1.0, 1.0, 1.0)), ((10, 10, 4), (1.0, 0.0, 1.0))],
)
def test_bad_inputs_raise(shape_seg, spacing):
    with pytest.raises(MedadaptError):
        surface_distances(np.zeros((10, 10, 4), bool), np.zeros(shape_seg, bool), spacing)
