"""Prompts: boxes/points from hand-built labels, 3D boxes, prompt files and validation."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from medadapt.data.prompt_files import PromptFile, read_prompt_file
from medadapt.data.prompts import (
    Prompt,
    boxes3d_from_label,
    boxes_from_label,
    points_from_label,
    validate_prompts,
)
from medadapt.errors import MedadaptError


def raises_for(path: Path, *fragments: str):
    pattern = re.escape(str(path)) + "".join(f"(?s:.*){re.escape(f)}" for f in fragments)
    return pytest.raises(MedadaptError, match=pattern)


def two_class_label() -> np.ndarray:
    lab = np.zeros((10, 12), np.uint8)
    lab[2:5, 3:7] = 1  # rows 2..4, columns 3..6
    lab[7, 10] = 2  # a single pixel
    lab[8:10, 0:2] = 1  # a second blob of class 1, at the bottom-left corner
    return lab


# --------------------------------------------------------------------------- boxes from labels


def test_boxes_per_class_exact():
    prompts = boxes_from_label(two_class_label())
    assert [(p.class_id, p.object_id) for p in prompts] == [(1, 1), (2, 2)]
    assert prompts[0].box.tolist() == [0, 2, 6, 9]  # both class-1 blobs: x0=0, y0=2, x1=6, y1=9
    assert prompts[1].box.tolist() == [10, 7, 10, 7]  # one pixel: x1 == x0 (last-pixel convention)
    assert all(p.points is None for p in prompts)


def test_boxes_per_component_exact():
    prompts = boxes_from_label(two_class_label(), per="component")
    assert [p.box.tolist() for p in prompts] == [[3, 2, 6, 4], [0, 8, 1, 9], [10, 7, 10, 7]]
    assert [(p.class_id, p.object_id) for p in prompts] == [(1, 1), (1, 2), (2, 3)]


def test_component_connectivity():
    diag = np.eye(4, dtype=np.uint8)
    assert len(boxes_from_label(diag, per="component")) == 1  # 8-neighbour: one object
    assert [p.box.tolist() for p in boxes_from_label(diag, per="component", connectivity=1)] == [
        [0, 0, 0, 0],
        [1, 1, 1, 1],
        [2, 2, 2, 2],
        [3, 3, 3, 3],
    ]


def test_classes_filter_and_absent_classes():
    lab = two_class_label()
    assert [p.class_id for p in boxes_from_label(lab, classes=[2, 5, 1])] == [2, 1]
    assert boxes_from_label(np.zeros((4, 4), np.uint8)) == []


def test_jitter_bounds_and_clipping():
    lab = np.zeros((30, 40), np.uint8)
    lab[10:20, 15:25] = 1  # tight box [15, 10, 24, 19]
    rng = np.random.default_rng(0)
    boxes = np.array([boxes_from_label(lab, jitter=5, rng=rng)[0].box for _ in range(300)])
    shift = (boxes - [15, 10, 24, 19]) * [-1, -1, 1, 1]  # outward shift per side
    assert shift.min() == 0 and shift.max() == 5  # uniform 0..5 inclusive, both ends reached
    assert len(np.unique(shift[:, 0])) == 6
    edge = np.zeros((30, 40), np.uint8)
    edge[0:5, 36:40] = 1
    b = np.array([boxes_from_label(edge, jitter=8, rng=rng)[0].box for _ in range(50)])
    assert b[:, 1].min() == 0 and b[:, 2].max() == 39  # clipped to the last pixel
    assert (b >= 0).all() and (b[:, 2] <= 39).all() and (b[:, 3] <= 29).all()
    same = [boxes_from_label(lab, jitter=5, rng=7)[0].box.tolist() for _ in range(2)]
    assert same[0] == same[1]


# --------------------------------------------------------------------------- points from labels


def test_first_point_is_most_interior():
    lab = np.zeros((12, 12), np.uint8)
    lab[2:9, 3:10] = 1  # 7×7 square: centre at row 5, column 6
    p = points_from_label(lab, 1)
    assert p.points.tolist() == [[6, 5]] and p.point_labels.tolist() == [1]
    edge = np.zeros((9, 12), np.uint8)
    edge[:, :7] = 1  # touches three image borders: they count as outside
    assert points_from_label(edge, 1).points.tolist() == [[3, 3]]  # depth 4; first in raster order
    ring = np.zeros((21, 21), np.uint8)
    ring[2:19, 2:19] = 3
    ring[6:15, 6:15] = 0  # a thick ring: the centroid (10, 10) lies in the hole
    q = points_from_label(ring, 3)
    x, y = q.points[0].astype(int)
    assert ring[y, x] == 3
    np.testing.assert_array_equal(
        points_from_label(ring, 3, n_pos=3, n_neg=2).points,
        points_from_label(ring, 3, n_pos=3, n_neg=2).points,
    )


def test_random_points_inside_and_outside():
    lab = two_class_label()
    p = points_from_label(lab, 1, n_pos=4, n_neg=3, rng=np.random.default_rng(5))
    xy = p.points.astype(int)
    assert p.point_labels.tolist() == [1, 1, 1, 1, 0, 0, 0]
    assert (lab[xy[:4, 1], xy[:4, 0]] == 1).all() and (lab[xy[4:, 1], xy[4:, 0]] != 1).all()
    assert len({tuple(v) for v in xy}) == 7  # no repeats


def test_points_errors():
    with pytest.raises(MedadaptError, match="class 9 is not in the label"):
        points_from_label(two_class_label(), 9)
    with pytest.raises(ValueError, match="positive"):
        points_from_label(two_class_label(), 2, n_pos=2)


# --------------------------------------------------------------------------- 3D boxes


def test_boxes3d_exact_and_slice_axis():
    lab = np.zeros((8, 10, 12), np.uint8)  # (z, y, x)
    lab[2:5, 1:4, 5:7] = 1
    lab[6, 9, 11] = 4
    boxes, ids = boxes3d_from_label(lab)
    assert ids.tolist() == [1, 4] and boxes.dtype == np.int64
    assert boxes.tolist() == [[5, 1, 2, 6, 3, 4], [11, 9, 6, 11, 9, 6]]  # x0, y0, z0, x1, y1, z1
    moved = np.moveaxis(lab, 0, 2)  # the same volume stored as (y, x, z)
    assert boxes3d_from_label(moved, slice_axis=2)[0].tolist() == boxes.tolist()
    empty_boxes, empty_ids = boxes3d_from_label(np.zeros((3, 3, 3), np.uint8))
    assert empty_boxes.shape == (0, 6) and empty_ids.shape == (0,)


# --------------------------------------------------------------------------- prompt files


def test_json_prompt_file(tmp_path: Path):
    data = {
        "a.png": [
            {"box": [1, 2, 10, 12], "class": 1},
            {"points": [[3, 4], [5, 6]], "labels": [1, 0], "class": 2},
        ],
        "b.png": [{"box": [0, 0, 5, 5], "points": [[2, 2]], "object": 7}],
    }
    (tmp_path / "p.json").write_text(json.dumps(data))
    out = read_prompt_file(tmp_path / "p.json")
    assert list(out) == ["a.png", "b.png"]
    a0, a1 = out["a.png"]
    assert a0.box.tolist() == [1, 2, 10, 12] and a0.class_id == 1 and a0.object_id == 1 and a0.points is None
    assert a1.points.tolist() == [[3, 4], [5, 6]] and a1.point_labels.tolist() == [1, 0] and a1.class_id == 2
    (b,) = out["b.png"]
    assert b.class_id == 1 and b.object_id == 7 and b.point_labels.tolist() == [1]


def test_csv_prompt_file(tmp_path: Path):
    (tmp_path / "p.csv").write_text(
        "image,class,x0,y0,x1,y1,x,y,label\n"
        "a.png,1,1,2,10,12,,,\n"
        "a.png,1,20,20,30,30,,,\n"
        "a.png,2,,,,,3,4,1\n"
        "a.png,2,,,,,5,6,0\n"
        "b.png,1,,,,,7,8,\n"
    )
    out = read_prompt_file(tmp_path / "p.csv")
    boxes = [p.box.tolist() for p in out["a.png"] if p.box is not None]
    assert boxes == [[1, 2, 10, 12], [20, 20, 30, 30]]
    pts = [p for p in out["a.png"] if p.points is not None]
    assert len(pts) == 1 and pts[0].class_id == 2 and pts[0].points.tolist() == [[3, 4], [5, 6]]
    assert pts[0].point_labels.tolist() == [1, 0]
    assert [p.object_id for p in out["a.png"]] == [1, 2, 3]
    assert out["b.png"][0].point_labels.tolist() == [1]


def test_csv_object_column_combines_box_and_points(tmp_path: Path):
    (tmp_path / "p.csv").write_text(
        "\ufeffimage,class,object,x0,y0,x1,y1,x,y,label\na.png,3,5,1,1,9,9,,,\na.png,3,5,,,,,4,4,1\na.png,3,5,,,,,0,0,0\n"
    )
    (p,) = read_prompt_file(tmp_path / "p.csv")["a.png"]
    assert p.box.tolist() == [1, 1, 9, 9] and p.points.tolist() == [[4, 4], [0, 0]]
    assert p.point_labels.tolist() == [1, 0] and p.object_id == 5 and p.class_id == 3


def test_3d_boxes_in_prompt_files(tmp_path: Path):
    (tmp_path / "p.json").write_text(json.dumps({"v.nii.gz": [{"box": [1, 2, 3, 10, 12, 5], "class": 2}]}))
    (p,) = read_prompt_file(tmp_path / "p.json")["v.nii.gz"]
    assert p.is_3d and p.box.tolist() == [1, 2, 3, 10, 12, 5]
    (tmp_path / "p.csv").write_text(
        "image,class,x0,y0,z0,x1,y1,z1\nv.nii.gz,1,1,2,3,10,12,5\nw.png,1,1,2,,10,12,\n"
    )
    out = read_prompt_file(tmp_path / "p.csv")
    assert out["v.nii.gz"][0].box.tolist() == [1, 2, 3, 10, 12, 5]
    assert out["w.png"][0].box.tolist() == [1, 2, 10, 12] and not out["w.png"][0].is_3d


@pytest.mark.parametrize(
    ("name", "text", "fragments"),
    [
        ("bad.json", '{"a.png": [{"box": [1, 2, 3]', ("not valid JSON", "line 1")),
        ("list.json", "[1, 2]", ("keyed by image name",)),
        ("key.json", '{"a.png": [{"bbox": [1, 2, 3, 4]}]}', ("image 'a.png', prompt 0", "bbox", "Fix:")),
        ("three.json", '{"a.png": [{"box": [1, 2, 3]}]}', ("4 numbers",)),
        (
            "pts3d.json",
            '{"a.png": [{"box": [1, 2, 3, 4, 5, 6], "points": [[1, 1]]}]}',
            ("cannot be combined",),
        ),
        (
            "labels.json",
            '{"a.png": [{"points": [[1, 2]], "labels": [1, 0]}]}',
            ("1 points but 2 point labels",),
        ),
        ("lab2.json", '{"a.png": [{"points": [[1, 2]], "labels": [2]}]}', ("1 (foreground) or 0",)),
        ("cls.json", '{"a.png": [{"box": [1, 2, 3, 4], "class": 1.5}]}', ("class",)),
        ("clsbool.json", '{"a.png": [{"box": [1, 2, 3, 4], "class": true}]}', ("prompt 0", "class", "whole number")),
        ("obj.json", '{"a.png": [{"box": [1, 2, 3, 4], "object": [1]}]}', ("prompt 0", "object", "whole number")),
        ("entry.json", '{"a.png": [3]}', ("image 'a.png', prompt 0", "expected an object")),
        ("notlist.json", '{"a.png": {"box": [1, 2, 3, 4]}}', ("image 'a.png'", "expected a list of prompts")),
        ("twokeys.json", '{"a.png": [{"bbox": [1, 2, 3, 4], "cls": 1}]}', ("unknown key(s) bbox, cls",)),
        ("boxtext.json", '{"a.png": [{"box": [1, 2, "x", 4]}]}', ("image 'a.png', prompt 0", "box")),
        ("nothing.json", '{"a.png": [{"class": 1}]}', ("needs a box or points",)),
        ("emptylist.json", '{"a.png": []}', ("empty prompt list",)),
        ("none.json", "{}", ("lists no images",)),
        ("cols.csv", "image,foo\na.png,1\n", ("expected image,class,x0",)),
        ("num.csv", "image,class,x0,y0,x1,y1\na.png,1,1,2,three,4\n", ("row 2", "numbers")),
        ("part.csv", "image,class,x0,y0,x1,y1\na.png,1,1,2,,4\n", ("row 2", "filled in together")),
        ("zonly.csv", "image,x0,y0,z0,x1,y1,z1\na.png,,,1,,,2\n", ("row 2", "z0,z1 are filled in without")),
        ("blank.csv", "image,class,x,y\na.png,1,,\n", ("row 2", "neither a box")),
        ("noimg.csv", "image,class,x,y\n,1,2,3\n", ("row 2", "image name is empty")),
        ("prompts.yaml", "a: 1\n", ("unsupported", ".json or .csv")),
    ],
)
def test_bad_prompt_files(tmp_path: Path, name, text, fragments):
    (tmp_path / name).write_text(text)
    with raises_for(tmp_path / name, *fragments):
        read_prompt_file(tmp_path / name)


# --------------------------------------------------------------------------- validation


def test_validate_prompts(tmp_path: Path):
    src = tmp_path / "p.json"
    ok = [Prompt(1, box=[0, 0, 30, 20]), Prompt(2, points=[[29.5, 19], [0, 0]], point_labels=[1, 0])]
    validate_prompts(ok, (20, 30, 3), src)  # the border itself is allowed for boxes
    cases = [
        ([], "has no prompts"),
        ([Prompt(1, box=[5, 0, 4, 3])], "end before its start"),
        ([Prompt(1, box=[0, 0, 31, 5])], "outside the 30×20 (W×H)"),
        ([Prompt(1, box=[-1, 0, 3, 5])], "outside"),
        ([Prompt(1, box=[0, 0, 3, 21])], "outside"),
        ([Prompt(1, points=[[1, 1], [30, 5]])], "point [30.0, 5.0]"),
        ([Prompt(1, points=[[1, 20]])], "outside"),
        ([Prompt(1, box=[0, 0, 0, 3, 3, 3])], "3D boxes"),
    ]
    for prompts, fragment in cases:
        with raises_for(src, "image 'x.png'", fragment):
            validate_prompts(prompts, (20, 30), src, image="x.png")


def test_validate_3d_boxes(tmp_path: Path):
    src = tmp_path / "p.csv"
    validate_prompts([Prompt(1, box=[0, 0, 0, 30, 20, 8])], (8, 20, 30), src)  # (D, H, W)
    with raises_for(src, "outside the 30×20×8 (W×H×D)"):
        validate_prompts([Prompt(1, box=[0, 0, 0, 30, 20, 9])], (8, 20, 30), src)
    with raises_for(src, "end before its start"):
        validate_prompts([Prompt(1, box=[0, 0, 5, 3, 3, 4])], (8, 20, 30), src)
    with raises_for(src, "mixed with 2D prompts"):
        validate_prompts([Prompt(1, box=[0, 0, 0, 3, 3, 3]), Prompt(1, box=[0, 0, 3, 3])], (8, 20, 30), src)


def test_prompt_dataclass_checks():
    with pytest.raises(ValueError, match="finite"):
        Prompt(1, box=[0, np.nan, 1, 1])
    with pytest.raises(ValueError, match="without points"):
        Prompt(1, box=[0, 0, 1, 1], point_labels=[1])
    p = Prompt(np.int64(3), points=[[1, 2]])
    assert type(p.class_id) is int and p.point_labels.dtype == np.int64


def test_volume_frame_boxes_reframed_for_any_slice_axis():
    """CVPR24 boxes (z = axis 0) re-expressed for another slice axis equal the boxes cut along that axis."""
    from medadapt.data.prompts import reframe_boxes3d

    rng = np.random.default_rng(0)
    lab = np.zeros((9, 11, 13), np.uint8)
    for c in (1, 2, 3):
        lo = rng.integers(0, 5, size=3)
        hi = lo + rng.integers(1, 5, size=3)
        lab[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] = c
    stored, _ = boxes3d_from_label(lab, slice_axis=0)
    for axis in (0, 1, 2):
        assert reframe_boxes3d(stored, axis).tolist() == boxes3d_from_label(lab, slice_axis=axis)[0].tolist()


def test_json_form_is_a_pydantic_model():
    parsed = PromptFile.model_validate({"a.png": [{"box": [1, 2, 3, 4], "class": 2.0, "object": "3"}]})
    entry = parsed.root["a.png"][0]
    assert entry.class_id == 2 and entry.object_id == 3 and entry.box == [1, 2, 3, 4]
