"""The CVPR 2025 click simulator and interactive metrics, on synthetic cases with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import integrate

from medadapt.metrics.interactive import (
    clicks_to_reach,
    farthest_point,
    interaction_auc,
    interactive_scores,
    largest_error_component,
    simulate_click,
)
from medadapt.metrics.segmentation import case_metrics


def square(shape, y0, x0, size):
    m = np.zeros(shape, dtype=bool)
    m[y0 : y0 + size, x0 : x0 + size] = True
    return m


def test_missed_object_gets_a_positive_click_at_its_centre():
    gt = square((32, 32), 5, 8, 11)  # rows 5..15, cols 8..18: centre (10, 13)
    click = simulate_click(gt, np.zeros_like(gt))
    assert click.index == (10, 13) and click.positive and click.error_voxels == 121


def test_extra_blob_gets_a_negative_click_and_the_largest_error_wins():
    gt = square((40, 40), 2, 2, 7)
    pred = gt.copy()
    pred[2:5, 2:9] = False  # 21 missed pixels (FN)
    pred |= square((40, 40), 25, 25, 9)  # 81 extra pixels (FP): the larger error
    click = simulate_click(gt, pred)
    assert click.index == (29, 29) and not click.positive and click.error_voxels == 81
    pred[25:34, 25:34] = False  # fixed: now the missed strip is the error
    click = simulate_click(gt, pred)
    assert click.positive and click.error_voxels == 21 and click.index[0] == 3


def test_missed_and_extra_pixels_that_touch_form_one_error_region():
    """The official error mask is pred != gt: a shifted mask's FN and FP sides are separate components
    only when they do not touch."""
    gt = square((20, 20), 5, 5, 6)
    pred = square((20, 20), 5, 6, 6)  # shifted right by one: FN column 5, FP column 11
    comp = largest_error_component(gt, pred)
    assert comp.sum() == 6  # two 6-pixel columns, not touching: the first in raster order wins
    assert comp[5:11, 5].all()
    pred = square((20, 20), 6, 6, 6)  # shifted diagonally: the two L-shaped sides touch at corners
    comp = largest_error_component(gt, pred)
    assert comp.sum() == 22  # 11 missed + 11 extra pixels, one region (8-connectivity, as 26 in 3D)


def test_image_edge_counts_as_border():
    gt = np.zeros((30, 20), dtype=bool)
    gt[0:5, :] = True  # a strip along the top edge
    click = simulate_click(gt, np.zeros_like(gt))
    assert click.index[0] == 2  # middle of the strip, not the edge row (plain EDT would pick row 0)


def test_ties_drawn_as_the_official_script():
    comp = square((16, 16), 3, 3, 6)  # even side: four equally deep centre pixels
    edt_best = [(5, 5), (5, 6), (6, 5), (6, 6)]
    np.random.seed(42)  # the official sample_coord: seed 42, then a uniform choice among the maxima
    expected = edt_best[np.random.choice(len(edt_best))]
    assert farthest_point(comp) == expected
    picks = {farthest_point(comp, seed=s) for s in range(20)}
    assert picks <= set(edt_best) and len(picks) > 1  # another seed may pick another of the four
    assert all(farthest_point(comp, seed=3) == farthest_point(comp, seed=3) for _ in range(3))


def test_perfect_prediction_needs_no_click():
    gt = square((10, 10), 2, 2, 4)
    assert simulate_click(gt, gt.copy()) is None


def test_3d_click_at_the_deepest_voxel_or_on_the_most_wrong_slice():
    gt = np.zeros((12, 20, 20), dtype=bool)
    gt[2:9, 4:11, 4:11] = True  # a 7-voxel cube: centre (5, 7, 7)
    click = simulate_click(gt, np.zeros_like(gt))
    assert click.index == (5, 7, 7) and click.positive
    # a wedge: the slice z=2 holds the most error voxels, the deepest voxel is elsewhere
    gt = np.zeros((12, 30, 30), dtype=bool)
    gt[2, 2:27, 2:27] = True  # a large thin plate
    gt[3:10, 10:17, 10:17] = True  # a cube attached below it
    click = simulate_click(gt, np.zeros_like(gt), plane="slice", slice_axis=0)
    assert click.index == (2, 14, 14)
    vol_click = simulate_click(gt, np.zeros_like(gt))
    assert vol_click.index[0] != 2
    # along another axis: slices are the last axis
    moved = np.moveaxis(gt, 0, 2)
    click_last = simulate_click(moved, np.zeros_like(moved), plane="slice", slice_axis=2)
    assert click_last.index == (14, 14, 2)


def test_auc_follows_the_official_trapezoid():
    dsc = [0.5, 0.6, 0.7, 0.8, 0.9, 1.0]  # box, then 5 clicks
    assert interaction_auc(dsc) == pytest.approx((0.6 + 1.0) / 2 + 0.7 + 0.8 + 0.9)  # 3.2
    official = integrate.cumulative_trapezoid(np.array(dsc[-5:]), np.arange(5))[-1]
    assert interaction_auc(dsc) == pytest.approx(official)
    assert interaction_auc(dsc, include_box=True) == pytest.approx((0.5 + 1.0) / 2 + 0.6 + 0.7 + 0.8 + 0.9)
    assert interaction_auc([0.7, 0.8]) == 0.0  # one click: a single point, no area


def test_curves_scored_by_hand():
    """DSC after each of three predictions of a 10x10 square, then AUC, final values and clicks to 0.9."""
    gt = square((20, 20), 5, 5, 10).astype(np.uint8)
    preds = [square((20, 20), 5, 5, 10) & (np.arange(20)[None, :] < 10),  # left half: 50 of 100
             square((20, 20), 5, 5, 10) & (np.arange(20)[None, :] < 13),  # 80 of 100
             square((20, 20), 5, 5, 10)]  # all
    dsc = [case_metrics(gt, p.astype(np.uint8), (1, 1), cvpr24=True)[0]["dsc"] for p in preds]
    assert dsc == pytest.approx([100 / 150, 160 / 180, 1.0])
    nsd = [case_metrics(gt, p.astype(np.uint8), (1, 1), cvpr24=True)[0]["nsd"] for p in preds]
    assert nsd[-1] == 1.0
    scores = interactive_scores(dsc, nsd)
    assert scores["dsc_auc"] == pytest.approx((160 / 180 + 1.0) / 2)
    assert scores["dsc_final"] == 1.0 and scores["nsd_final"] == 1.0
    assert clicks_to_reach(dsc, 0.85) == 1 and clicks_to_reach(dsc, 0.95) == 2
    assert clicks_to_reach([0.1, math.nan, 0.2], 0.9) is None
    with pytest.raises(ValueError):
        interactive_scores([0.1, 0.2], [0.1])
