"""Per-case metrics: official conventions and the CVPR24 options, on hand-built label maps."""

from __future__ import annotations

import math

import numpy as np
import pytest

from medadapt.errors import MedadaptError
from medadapt.metrics.segmentation import case_metrics, dice
from medadapt.metrics.surface import hd95, nsd, surface_distances


def _labels(shape, boxes):
    out = np.zeros(shape, np.uint8)
    for label, lo, hi in boxes:
        out[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))] = label
    return out


def test_dice_conventions():
    a = np.zeros((4, 4), bool)
    b = a.copy()
    b[0, :2] = True
    assert math.isnan(dice(a, a))
    assert dice(a, b) == 0.0 == dice(b, a)
    c = b.copy()
    c[1, 0] = True
    assert dice(b, c) == pytest.approx(2 * 2 / 5)


def test_classes_default_missing_and_empty():
    shape = (16, 16, 6)
    gt = _labels(shape, [(1, (2, 2, 1), (8, 8, 5)), (3, (9, 9, 1), (14, 14, 5))])
    seg = _labels(shape, [(1, (3, 2, 1), (8, 8, 5))])  # class 2 empty in both, class 3 missed
    rows = case_metrics(gt, seg, (1.0, 1.0, 2.0))
    assert [r["class"] for r in rows] == [1, 2, 3]
    assert rows[0]["dsc"] == pytest.approx(2 * 5 / 11) and 0 < rows[0]["nsd"] <= 1 and rows[0]["hd95"] == 1.0
    assert all(math.isnan(rows[1][k]) for k in ("dsc", "nsd", "hd95"))
    assert rows[2] == {"class": 3, "dsc": 0.0, "nsd": 0.0, "hd95": math.inf}
    # a predicted class the GT lacks also scores 0 / inf; classes= picks and orders them
    rows = case_metrics(seg, gt, (1.0, 1.0, 2.0), classes=[3, 1])
    assert [r["class"] for r in rows] == [3, 1]
    assert rows[0] == {"class": 3, "dsc": 0.0, "nsd": 0.0, "hd95": math.inf}


def test_2d_is_evaluated_as_a_one_slice_volume():
    gt = _labels((20, 20), [(1, (3, 3), (12, 12))])
    seg = _labels((20, 20), [(1, (5, 4), (14, 12))])
    (row,) = case_metrics(gt, seg, (0.5, 2.0))
    sd = surface_distances(gt[..., None] == 1, seg[..., None] == 1, (0.5, 2.0, 1.0))
    assert row["nsd"] == nsd(sd, 2.0) and row["hd95"] == hd95(sd)
    # ... which is not DeepMind's 2D contour version
    assert row["nsd"] != nsd(surface_distances(gt == 1, seg == 1, (0.5, 2.0)), 2.0)


def test_cvpr24_2d_spacing_forced_to_one():
    gt = _labels((20, 20), [(1, (3, 3), (12, 12))])
    seg = _labels((20, 20), [(1, (5, 4), (14, 12))])
    (unit,) = case_metrics(gt, seg, (1.0, 1.0))
    (coarse,) = case_metrics(gt, seg, (3.0, 3.0))
    (challenge,) = case_metrics(gt, seg, (3.0, 3.0), cvpr24=True)
    assert coarse["nsd"] != unit["nsd"] and coarse["hd95"] != unit["hd95"]
    assert challenge == unit


def test_cvpr24_3d_spacing_kept():
    gt = _labels((16, 16, 6), [(1, (2, 2, 1), (10, 10, 5))])
    seg = _labels((16, 16, 6), [(1, (3, 2, 1), (11, 10, 5))])
    assert case_metrics(gt, seg, (2.0, 1.0, 3.0), cvpr24=True) == case_metrics(gt, seg, (2.0, 1.0, 3.0))


def test_cvpr24_nsd_only_above_dsc_02():
    shape = (24, 24, 6)
    gt = _labels(shape, [(1, (2, 2, 1), (10, 10, 5))])
    seg = _labels(shape, [(1, (9, 2, 1), (17, 10, 5))])  # overlap 1 of 8 rows: DSC 0.125
    (plain,) = case_metrics(gt, seg, (1.0, 1.0, 1.0))
    (rule,) = case_metrics(gt, seg, (1.0, 1.0, 1.0), cvpr24=True)
    assert plain["dsc"] == rule["dsc"] == pytest.approx(0.125)
    assert plain["nsd"] > 0 and rule["nsd"] == 0.0
    assert rule["hd95"] == plain["hd95"]

    # the rule is on the case DSC (mean over classes), as in the challenge: a perfect class 2 lifts
    # the case to 0.5625 > 0.2, so class 1 keeps its NSD
    gt2 = gt.copy()
    gt2[12:20, 12:20, 1:5] = 2
    seg2 = seg.copy()
    seg2[12:20, 12:20, 1:5] = 2
    rule2 = case_metrics(gt2, seg2, (1.0, 1.0, 1.0), cvpr24=True)
    assert rule2[0]["nsd"] == pytest.approx(plain["nsd"]) and rule2[1]["nsd"] == 1.0

    # exactly 0.2 is not above the threshold
    gt3 = _labels((10, 10, 3), [(1, (0, 0, 1), (10, 1, 2))])
    seg3 = _labels((10, 10, 3), [(1, (0, 0, 1), (2, 1, 2)), (1, (2, 5, 1), (10, 6, 2))])  # 2 of 10 overlap
    (edge,) = case_metrics(gt3, seg3, (1.0, 1.0, 1.0), cvpr24=True)
    assert edge["dsc"] == pytest.approx(0.2) and edge["nsd"] == 0.0


def test_tolerance_and_float_labels():
    gt = _labels((16, 16, 6), [(1, (2, 2, 1), (10, 10, 5))])
    seg = _labels((16, 16, 6), [(1, (5, 2, 1), (13, 10, 5))])  # shifted 3 voxels = 3 mm
    (tight,) = case_metrics(gt, seg, (1.0, 1.0, 1.0), tolerance_mm=1.0)
    (loose,) = case_metrics(gt.astype(np.float32), seg, (1.0, 1.0, 1.0), tolerance_mm=3.0)
    assert tight["nsd"] < loose["nsd"] == 1.0
    assert tight["dsc"] == loose["dsc"]


@pytest.mark.parametrize(
    "gt, seg, spacing",
    [
        (np.zeros((4, 4), np.uint8), np.zeros((4, 5), np.uint8), (1.0, 1.0)),
        (np.zeros((4, 4), np.uint8), np.zeros((4, 4), np.uint8), (1.0, 1.0, 1.0)),
        (np.full((4, 4), 0.5, np.float32), np.zeros((4, 4), np.uint8), (1.0, 1.0)),
        (np.zeros((4,), np.uint8), np.zeros((4,), np.uint8), (1.0,)),
    ],
)
def test_bad_inputs_raise(gt, seg, spacing):
    with pytest.raises(MedadaptError):
        case_metrics(gt, seg, spacing)
