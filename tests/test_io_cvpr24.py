"""CVPR24 "MedSAM on Laptop" npz cases: reading, validation and writing ``segs``."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from medadapt.errors import MedadaptError
from medadapt.io.cvpr24 import read_cvpr24, write_cvpr24_segs


def raises_for(path: Path, *fragments: str):
    pattern = re.escape(str(path)) + "".join(f"(?s:.*){re.escape(f)}" for f in fragments)
    return pytest.raises(MedadaptError, match=pattern)


def case_2d(**over):
    data = {"imgs": np.zeros((20, 30, 3), np.uint8), "boxes": np.array([[2, 3, 10, 12], [0, 0, 30, 20]])}
    data.update(over)
    return {k: v for k, v in data.items() if v is not None}


def case_3d(**over):
    gts = np.zeros((8, 20, 30), np.uint8)
    gts[2:5, 4:9, 10:20] = 1
    data = {
        "imgs": np.zeros((8, 20, 30), np.uint8),
        "boxes": np.array([[10, 4, 2, 19, 8, 4]]),
        "spacing": np.array([2.5, 0.8, 0.8]),
        "gts": gts,
    }
    data.update(over)
    return {k: v for k, v in data.items() if v is not None}


def save(path: Path, data: dict) -> Path:
    np.savez_compressed(path, **data)
    return path


def test_read_2d_and_3d(tmp_path: Path):
    c2 = read_cvpr24(save(tmp_path / "2D_x.npz", case_2d()))
    assert c2.ndim == 2 and c2.imgs.shape == (20, 30, 3) and c2.boxes.shape == (2, 4)
    assert c2.spacing is None and c2.gts is None and c2.spatial_shape == (20, 30)
    c3 = read_cvpr24(save(tmp_path / "3D_y.npz", case_3d()))
    assert c3.ndim == 3 and c3.spatial_shape == (8, 20, 30)
    np.testing.assert_array_equal(c3.boxes, [[10, 4, 2, 19, 8, 4]])
    assert c3.spacing == (2.5, 0.8, 0.8) and c3.gts.sum() == 3 * 5 * 10


def test_dimensionality_without_prefix_and_grey_2d(tmp_path: Path):
    grey = read_cvpr24(save(tmp_path / "a.npz", case_2d(imgs=np.arange(600, dtype=np.uint8).reshape(20, 30))))
    assert grey.ndim == 2 and grey.imgs.shape == (20, 30, 3)
    np.testing.assert_array_equal(grey.imgs[..., 2], np.arange(600, dtype=np.uint8).reshape(20, 30))
    assert read_cvpr24(save(tmp_path / "b.npz", case_3d())).ndim == 3  # from the 6-column boxes
    train = read_cvpr24(save(tmp_path / "c.npz", case_3d(boxes=None)), require_boxes=False)
    assert train.ndim == 3 and train.boxes is None


def test_single_box_as_1d(tmp_path: Path):
    c = read_cvpr24(save(tmp_path / "2D_a.npz", case_2d(boxes=np.array([1, 2, 3, 4]))))
    assert c.boxes.shape == (1, 4)


@pytest.mark.parametrize(
    ("name", "data", "fragments"),
    [
        ("2D_noimg.npz", {"boxes": np.zeros((1, 4))}, ("no 'imgs'", "found: boxes")),
        ("2D_nobox.npz", {"imgs": np.zeros((4, 4, 3), np.uint8)}, ("no 'boxes'", "Fix:")),
        ("2D_w5.npz", case_2d(boxes=np.zeros((1, 5))), ("N×4",)),
        ("3D_w4.npz", case_3d(boxes=np.zeros((1, 4))), ("named as a 3D case",)),
        ("2D_emptybox.npz", case_2d(boxes=np.zeros((0, 4))), ("N ≥ 1",)),
        ("2D_flip.npz", case_2d(boxes=np.array([[10, 3, 2, 12]])), ("box 0", "x1=2 < x0=10")),
        ("2D_out.npz", case_2d(boxes=np.array([[2, 3, 31, 12]])), ("box 0", "outside", "along x (0..30)")),
        ("3D_outz.npz", case_3d(boxes=np.array([[1, 1, 2, 5, 5, 9]])), ("along z (0..8)",)),
        ("2D_nan.npz", case_2d(boxes=np.array([[np.nan, 0, 1, 1]])), ("NaN",)),
        ("2D_4ch.npz", case_2d(imgs=np.zeros((20, 30, 4), np.uint8)), ("H×W×3",)),
        ("3D_2d.npz", case_3d(imgs=np.zeros((20, 30), np.uint8), gts=None), ("D×H×W",)),
        ("3D_range.npz", case_3d(imgs=np.full((8, 20, 30), 1000, np.int16)), ("0..255", "Fix:")),
        ("3D_nosp.npz", case_3d(spacing=None), ("without 'spacing'",)),
        ("3D_negsp.npz", case_3d(spacing=np.array([1.0, -1.0, 1.0])), ("'spacing'",)),
        ("3D_gts.npz", case_3d(gts=np.zeros((8, 20, 29), np.uint8)), ("'gts' has shape (8, 20, 29)",)),
        ("3D_gtfrac.npz", case_3d(gts=np.full((8, 20, 30), 0.5)), ("'gts'", "integer")),
        (
            "2D_obj.npz",
            {"imgs": np.array([None, 1], dtype=object), "boxes": np.zeros((1, 4))},
            ("Python objects",),
        ),
    ],
)
def test_invalid_cases(tmp_path: Path, name, data, fragments):
    path = save(tmp_path / name, data)
    with raises_for(path, *fragments):
        read_cvpr24(path)


def test_not_an_npz(tmp_path: Path):
    (tmp_path / "2D_bad.npz").write_bytes(b"PK\x03\x04 not really a zip")
    with raises_for(tmp_path / "2D_bad.npz", "not a readable .npz"):
        read_cvpr24(tmp_path / "2D_bad.npz")
    with raises_for(tmp_path / "2D_missing.npz", "does not exist"):
        read_cvpr24(tmp_path / "2D_missing.npz")


def test_box_on_border_and_uint8_compatible_ints_accepted(tmp_path: Path):
    c = read_cvpr24(
        save(
            tmp_path / "2D_b.npz",
            case_2d(boxes=np.array([[0, 0, 30, 20]]), imgs=np.full((20, 30, 3), 7, np.int64)),
        )
    )
    assert c.imgs.dtype == np.uint8 and int(c.imgs.max()) == 7


def test_write_segs_uint16(tmp_path: Path):
    segs = np.zeros((3, 4, 5), np.int64)
    segs[0, 0, 0], segs[2, 3, 4] = 300, 7
    write_cvpr24_segs(tmp_path / "out" / "3D_y.npz", segs)
    with np.load(tmp_path / "out" / "3D_y.npz") as f:
        assert f.files == ["segs"]
        assert f["segs"].dtype == np.uint16
        np.testing.assert_array_equal(f["segs"], segs)
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["3D_y.npz"]


@pytest.mark.parametrize(
    ("segs", "name", "fragment"),
    [
        (np.full((2, 2), -1), "a.npz", "0..65535"),
        (np.full((2, 2), 70000), "a.npz", "0..65535"),
        (np.full((2, 2), 0.5), "a.npz", "non-integer"),
        (np.zeros(4), "a.npz", "2D or 3D"),
        (np.zeros((2, 2)), "a.npy", ".npz"),
    ],
)
def test_write_segs_refuses_and_leaves_nothing(tmp_path: Path, segs, name, fragment):
    with raises_for(tmp_path / name, fragment):
        write_cvpr24_segs(tmp_path / name, segs)
    assert list(tmp_path.iterdir()) == []


def test_npz_volume_is_cut_along_the_chosen_axis(tmp_path):
    """``predict`` on a 3D ``.npz`` honours ``--slice-axis`` (and so an adapter's trained axis); z by default."""
    from medadapt.infer.cases import PredictOptions, load_case
    from medadapt.io.discovery import Pair

    path = save(tmp_path / "case.npz", case_3d())
    pair = Pair("case", path, None)
    assert load_case(pair, PredictOptions()).slice_axis == 0
    assert load_case(pair, PredictOptions(slice_axis=2)).slice_axis == 2
    with raises_for(path, "--slice-axis 3", "use 0..2"):
        load_case(pair, PredictOptions(slice_axis=3))


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_npz_boxes_propagate_along_the_chosen_axis(tmp_path, monkeypatch, axis):
    """``--prompts file-boxes`` on a 3D ``.npz``: the stored boxes (z = axis 0) are re-expressed for the slice axis."""
    from medadapt.data.prompts import boxes3d_from_label
    from medadapt.infer import cases
    from medadapt.io.discovery import Pair

    data = case_3d()
    path = save(tmp_path / "case.npz", data)
    seen = {}

    def fake_propagation(predictor, image, boxes, *, slice_axis, progress=None, **kw):
        seen.update(boxes=np.asarray(boxes).tolist(), axis=slice_axis)
        return np.zeros(image.shape, np.uint16)

    monkeypatch.setattr(cases, "segment_volume_boxes3d", fake_propagation)
    options = cases.PredictOptions(prompts="file-boxes", slice_axis=axis)
    cases.predict_case(object(), cases.load_case(Pair("case", path, None), options), options)
    assert seen == {"axis": axis, "boxes": boxes3d_from_label(data["gts"], slice_axis=axis)[0].tolist()}
