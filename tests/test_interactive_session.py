"""InteractiveSession: cached embeddings, box start equal to CVPR24 propagation, clicks, replay, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from medadapt.data.clicks import array_sha256, load_clicks, save_clicks
from medadapt.errors import MedadaptError
from medadapt.infer.interactive import InteractiveSession
from medadapt.infer.predictor import SamPredictor
from medadapt.infer.volume import segment_volume_boxes3d
from medadapt.models.registry import build_model, get_sam_spec


@pytest.fixture(scope="module")
def predictor() -> SamPredictor:
    # an in-memory embedding cache: sessions on the same slices share their embeddings
    return SamPredictor(build_model("litemedsam"), get_sam_spec("litemedsam"), batch_size=1, use_cache=True)


def disk_volume(background: int = 30) -> np.ndarray:
    """Five 48x48 slices (slices on axis 2) of a bright disk whose radius grows then shrinks."""
    yy, xx = np.mgrid[:48, :48]
    vol = np.zeros((48, 48, 5), dtype=np.uint8)
    for z, r in enumerate((6, 9, 11, 10, 7)):
        vol[..., z] = np.where((yy - 22) ** 2 + (xx - 25) ** 2 <= r * r, 200, background)
    return vol


def test_box_start_equals_cvpr24_propagation_and_clicks_reuse_embeddings(predictor: SamPredictor):
    vol = disk_volume(background=31)  # slices no other test encodes
    box = np.array([13, 10, 0, 37, 34, 4])  # x0, y0, z0, x1, y1, z1 with z along axis 2
    calls = predictor.encoder_calls
    session = InteractiveSession(predictor, vol, slice_axis=2, name="disk", click_reach=0)  # the chain rule alone
    oid = session.add_box(box, value=1)
    assert predictor.encoder_calls - calls == 5  # every slice of the box encoded once (batch 1)
    assert sorted(session.decoded_slices) == [0, 1, 2, 3, 4] and session.slices_decoded == 5
    expected = segment_volume_boxes3d(predictor, vol, box[None], slice_axis=2)  # from the cache
    assert predictor.encoder_calls - calls == 5
    np.testing.assert_array_equal(session.labels(), expected)
    calls = predictor.encoder_calls
    # a negative click on slice 3 (above the middle slice 2): slice 3, then outwards only
    decoded = session.click(oid, x=25, y=22, z=3, positive=False)
    assert decoded[0] == 3 and all(z >= 3 for z in decoded)
    decoded = session.click(oid, x=25, y=22, z=2, positive=True)
    assert decoded[0] == 2
    assert predictor.encoder_calls == calls  # clicks only run the decoder
    obj = session.objects[oid]
    # the re-propagation left every unclicked slice decoded with the box its inner neighbour gives now
    for z in (0, 1, 4):
        np.testing.assert_array_equal(obj.frame_boxes[z], session._frame_box(obj, z))
    assert session.mask(oid).shape == vol.shape


def test_click_file_round_trip_and_replay(predictor: SamPredictor, tmp_path: Path):
    vol = disk_volume()
    session = InteractiveSession(predictor, vol, slice_axis=2, name="disk", mask_feedback=True)
    oid = session.add_box([13, 10, 0, 37, 34, 4], value=3)
    session.click(oid, 25, 22, 2, positive=False)
    session.click(oid, 20, 20, 1, positive=True)
    path = tmp_path / "disk.json"
    save_clicks(path, session.record())
    record = load_clicks(path)
    assert record.sha256 == array_sha256(vol) and record.shape == [48, 48, 5]
    assert [(c.x, c.y, c.z, c.positive) for c in record.objects[0].clicks] == [(25, 22, 2, False), (20, 20, 1, True)]
    again = InteractiveSession(predictor, vol, slice_axis=2, name="disk")
    again.replay(record, path=path)  # the file says the mask prompt was fed back: the replay does too
    assert record.mask_feedback and again.mask_feedback
    np.testing.assert_array_equal(again.labels(), session.labels())
    assert set(np.unique(again.labels())) <= {0, 3}
    # another image: refused (shape, then content)
    with pytest.raises(MedadaptError, match="shape"):
        InteractiveSession(predictor, vol[:, :, :4], slice_axis=2).replay(record, path=path)
    other = vol.copy()
    other[0, 0, 0] += 1
    with pytest.raises(MedadaptError, match="another image"):
        InteractiveSession(predictor, other, slice_axis=2).replay(record, path=path)
    # NaN coordinates in a file: a clear error naming the file
    raw = json.loads(path.read_text())
    raw["objects"][0]["clicks"][0]["x"] = float("nan")
    bad = tmp_path / "nan.json"
    bad.write_text(json.dumps(raw))  # Python writes NaN, as a careless tool would
    with pytest.raises(MedadaptError, match="nan.json.*finite"):
        load_clicks(bad)


def test_positive_clicks_in_the_missed_region_raise_dsc(predictor: SamPredictor, data_dir: Path):
    """A real prostate slice whose box prediction misses part of the gland: the simulated clicks fix it."""
    from medadapt.data.datasets import load_segmentation_dataset
    from medadapt.data.prompts import boxes_from_label
    from medadapt.metrics.interactive import simulate_click
    from medadapt.metrics.segmentation import dice

    image, label, _, _ = load_segmentation_dataset(data_dir / "prostate_mri_2d").load("BIDMC05_32")
    gt = label == 1
    calls = predictor.encoder_calls
    # the decoder's own answer to each click on the whole slice (no click window: its local square would keep
    # most of this slice's missed gland out of reach of the first clicks)
    session = InteractiveSession(predictor, image, name="BIDMC05_32", click_window=None)
    oid = session.add_box(boxes_from_label(label)[0].box)
    dscs = [dice(gt, session.mask(oid))]
    for _ in range(3):
        click = simulate_click(gt, session.mask(oid))
        assert click.positive  # the largest error is missed prostate
        session.click(oid, x=click.index[1], y=click.index[0], positive=True)
        dscs.append(dice(gt, session.mask(oid)))
    assert predictor.encoder_calls - calls == 1  # one image, encoded once
    assert dscs[1] > dscs[0] and dscs[3] > dscs[0] + 0.1, dscs  # measured: 0.628 -> 0.644 -> 0.694 -> 0.759


def test_bad_clicks_are_clear_errors(predictor: SamPredictor):
    vol = disk_volume()
    session = InteractiveSession(predictor, vol, slice_axis=2, name="disk")
    oid = session.add_box([13, 10, 1, 37, 34, 3])
    before = session.labels()
    for kwargs, needle in (
        (dict(x=60, y=20, z=2), "outside 'disk'"),
        (dict(x=-1, y=20, z=2), "outside 'disk'"),
        (dict(x=float("nan"), y=20, z=2), "finite"),
        (dict(x=20, y=20, z=4), "outside object 1's box range"),
        (dict(x=20, y=20, z=9), "slice 9 is outside"),
    ):
        with pytest.raises(MedadaptError, match=needle):
            session.click(oid, **kwargs)
    with pytest.raises(MedadaptError, match="no object 7"):
        session.click(7, 20, 20, 2)
    with pytest.raises(MedadaptError, match="outside"):
        session.add_box([13, 10, 0, 60, 34, 4])
    np.testing.assert_array_equal(session.labels(), before)  # nothing changed
    assert session.objects[oid].clicks == []


def test_automatic_start_is_the_automatic_prediction_and_clicks_stay_on_their_slice():
    from medadapt.adapt.class_prompts import attach_class_prompts
    from medadapt.infer.volume import segment_volume_auto

    net = build_model("litemedsam")
    attach_class_prompts(net, 1)  # untrained class prompt: the whole-image box token
    auto = SamPredictor(net.eval(), get_sam_spec("litemedsam"), batch_size=1, use_cache=True, classes=[2])
    vol = np.ascontiguousarray(disk_volume(background=32)[..., 1:4])  # three slices
    session = InteractiveSession(auto, vol, slice_axis=2, name="disk", click_reach=0)
    (oid,) = session.start_auto()
    assert session.objects[oid].value == 2
    np.testing.assert_array_equal(session.labels(), segment_volume_auto(auto, vol, slice_axis=2))
    before = session.labels()
    assert session.click(oid, x=25, y=22, z=1, positive=False) == [1]
    after = session.labels()
    np.testing.assert_array_equal(np.delete(after, 1, axis=2), np.delete(before, 1, axis=2))


def test_click_reach_carries_a_click_while_the_mask_is_wrong_there(predictor: SamPredictor, tmp_path: Path):
    vol = disk_volume(background=33)
    box = [13, 10, 0, 37, 34, 4]  # middle slice 2
    session = InteractiveSession(predictor, vol, slice_axis=2, name="disk", click_reach=1)
    oid = session.add_box(box, value=1)
    obj = session.objects[oid]
    assert obj.mask[:, 22, 25].all()  # the disk centre is object on every slice
    # a negative click on the centre of slice 2, reach 1: carried to slices 1 and 3 only
    decoded = session.click(oid, x=25, y=22, z=2, positive=False)
    assert sorted((c.z, c.positive) for c in obj.carried) == [(1, False), (3, False)]
    assert decoded[0] == 2 and {1, 3} <= set(decoded)
    assert [(c.x, c.y, c.z) for c in obj.clicks] == [(25, 22, 2)]  # only the click made is kept as such
    # every slice without a click of its own was decoded with the box its inner neighbour gives now
    for z in (0, 4):
        np.testing.assert_array_equal(obj.frame_boxes[z], session._frame_box(obj, z))
    # the record keeps the click made and the reach; a replay carries it again and gives the same masks
    record = session.record()
    assert record.click_reach == 1 and len(record.objects[0].clicks) == 1
    again = InteractiveSession(predictor, vol, slice_axis=2, name="disk", click_reach=0)
    again.replay(record)
    assert again.click_reach == 1
    np.testing.assert_array_equal(again.labels(), session.labels())


def test_click_reach_stops_at_the_first_slice_already_right_and_at_the_box_range(predictor: SamPredictor):
    vol = disk_volume(background=33)
    session = InteractiveSession(predictor, vol, slice_axis=2, name="disk", click_reach=3)
    oid = session.add_box([13, 10, 0, 37, 34, 3], value=1)  # slices 0..3; slice 4 is outside the box
    obj = session.objects[oid]
    obj.mask[:, 22, 25] = [False, False, False, True, False]  # object at (25, 22) on slice 3 only
    session.click(oid, x=25, y=22, z=1, positive=True)
    # up: slice 2 wrong (carried), slice 3 already object (stop); down: slice 0, then the range ends
    assert sorted(c.z for c in obj.carried) == [0, 2]
    # a positive click where the mask is object already is carried nowhere
    before = len(obj.carried)
    obj.mask[:, 30, 25] = True
    session.click(oid, x=25, y=30, z=1, positive=True)
    assert len(obj.carried) == before
    # a click far from the object (background on every slice): carried to the end of the box range only
    session.click(oid, x=2, y=2, z=2, positive=False)  # negative on background: right already, not carried
    assert len(obj.carried) == before
    session.click(oid, x=2, y=2, z=2, positive=True)
    assert sorted(c.z for c in obj.carried[before:]) == [0, 1, 3]


def test_click_reach_zero_corrects_the_clicked_slice_only(predictor: SamPredictor):
    vol = disk_volume(background=33)
    session = InteractiveSession(predictor, vol, slice_axis=2, name="disk", click_reach=0)
    oid = session.add_box([13, 10, 0, 37, 34, 4], value=1)
    decoded = session.click(oid, x=25, y=22, z=3, positive=False)
    assert session.objects[oid].carried == []
    assert decoded[0] == 3 and all(z >= 3 for z in decoded)  # the clicked slice, then outwards only
    with pytest.raises(MedadaptError, match="click_reach"):
        InteractiveSession(predictor, vol, slice_axis=2, click_reach=-1)


def test_default_click_reach_is_the_one_chosen_on_validation_volumes():
    """The session's default is the reach bench/bench_click_reach.py chose on validation volumes;
    without that sweep, clicks correct their own slice only."""
    from medadapt.infer.interactive import CLICK_REACH

    path = Path(__file__).resolve().parents[1] / "bench" / "results" / "interactive_hippocampus_val.json"
    if not path.is_file():
        assert CLICK_REACH == 0
        return
    selection = json.loads(path.read_text())["selection"]
    assert selection["click_reach"] == CLICK_REACH
    assert CLICK_REACH in selection["reaches"] and selection["cases"]


def test_click_window_changes_only_the_square_around_the_click(predictor: SamPredictor, tmp_path: Path):
    """With click_window=f the decoder's new mask is pasted only in a square of f x the box side around
    the click; outside it the slice keeps its mask. The setting is recorded and replayed."""
    vol = disk_volume(background=34)
    box = [13, 10, 0, 37, 34, 4]
    whole = InteractiveSession(predictor, vol, slice_axis=2, name="disk", click_window=None)
    local = InteractiveSession(predictor, vol, slice_axis=2, name="disk", click_window=0.5)
    a, b = whole.add_box(box, value=1), local.add_box(box, value=1)
    before = local.mask(b)[..., 2].copy()
    np.testing.assert_array_equal(before, whole.mask(a)[..., 2])
    whole.click(a, x=25, y=22, z=2, positive=False)
    local.click(b, x=25, y=22, z=2, positive=False)
    decoded, kept = whole.mask(a)[..., 2], local.mask(b)[..., 2]
    half = 0.5 * 24 / 2  # box side 24 px: a 12 px square around (25, 22)
    inside = np.zeros_like(before)
    inside[int(np.floor(22 - half)):int(np.ceil(22 + half)) + 1, int(np.floor(25 - half)):int(np.ceil(25 + half)) + 1] = True
    assert (decoded != before).any() and (decoded[~inside] != before[~inside]).any()  # the click redrew far pixels
    np.testing.assert_array_equal(kept[inside], decoded[inside])
    np.testing.assert_array_equal(kept[~inside], before[~inside])
    path = tmp_path / "w.json"
    save_clicks(path, local.record())
    again = InteractiveSession(predictor, vol, slice_axis=2, name="disk")
    again.replay(load_clicks(path), path=path)
    assert again.click_window == 0.5
    np.testing.assert_array_equal(again.labels(), local.labels())
    from medadapt.infer.interactive import check_click_window

    assert check_click_window("None") is None and check_click_window("0.5") == 0.5  # as the command line gives it
    for bad in (0, -1, float("nan"), "x"):
        with pytest.raises(MedadaptError, match="click_window"):
            InteractiveSession(predictor, vol, slice_axis=2, click_window=bad)


def test_default_click_window_is_the_one_chosen_on_validation_cases():
    """The session's default click window is bench/bench_click_reach.py's pooled choice over the
    validation sweeps of every dataset (interactive_*_window_val.json); without them it is None."""
    import sys

    from medadapt.infer.interactive import CLICK_WINDOW

    results = Path(__file__).resolve().parents[1] / "bench" / "results"
    files = sorted(results.glob("interactive_*_window_val.json"))
    if not files:
        assert CLICK_WINDOW is None
        return
    sys.path.insert(0, str(results.parents[0]))
    from bench_click_reach import pooled_choice

    reach, window = pooled_choice(files)
    assert window == CLICK_WINDOW and reach == 0  # the window sweeps keep the clicked slice only


def small_object_image() -> np.ndarray:
    """A 96x96 RGB image with an 11x9 bright ellipse near one corner (a small object on a large slice)."""
    yy, xx = np.mgrid[:96, :96]
    inside = ((yy - 70) / 4.5) ** 2 + ((xx - 24) / 5.5) ** 2 <= 1
    return np.repeat(np.where(inside, 210, 25).astype(np.uint8)[..., None], 3, axis=-1)


def test_zoom_in_session_starts_as_roi_prediction_and_clicks_reuse_the_crop(tmp_path: Path):
    from medadapt.data.prompts import Prompt

    roi = SamPredictor(build_model("litemedsam"), get_sam_spec("litemedsam"), batch_size=1, use_cache=True,
                       roi_margin=0.5)
    image, box = small_object_image(), np.array([17.0, 64.0, 31.0, 76.0])
    session = InteractiveSession(roi, image, name="dot", click_window=None)
    oid = session.add_box(box, value=1)
    crop = session.objects[oid].embeddings.get(0)[1].crop
    assert crop is not None and crop[2] - crop[0] < 96  # encoded in a crop around the box, not the whole image
    expected, _ = roi.segment(image, [Prompt(class_id=1, box=box)])  # predict's ROI path: the same crop
    np.testing.assert_array_equal(session.labels(), expected)
    calls = roi.encoder_calls
    session.click(oid, 24, 70, positive=True)
    assert roi.encoder_calls == calls  # the click is decoded on the cached crop
    x0, y0, x1, y1 = crop
    outside = np.ones((96, 96), dtype=bool)
    outside[y0:y1, x0:x1] = False
    assert not session.mask(oid)[outside].any()  # background outside the crop
    # the click file records the margin; a replay on whole slices is refused, one with the margin is equal
    path = tmp_path / "dot.json"
    save_clicks(path, session.record())
    record = load_clicks(path)
    assert record.roi_margin == 0.5
    whole = SamPredictor(build_model("litemedsam"), get_sam_spec("litemedsam"), batch_size=1)
    with pytest.raises(MedadaptError, match="ROI margin 0.5"):
        InteractiveSession(whole, image, name="dot").replay(record, path=path)
    again = InteractiveSession(roi, image, name="dot")
    again.replay(record, path=path)
    np.testing.assert_array_equal(again.labels(), session.labels())


def test_zoom_in_volume_encodes_each_slice_once_per_object_in_its_crop():
    roi = SamPredictor(build_model("litemedsam"), get_sam_spec("litemedsam"), batch_size=1, roi_margin=0.25)
    vol = np.zeros((96, 96, 5), dtype=np.uint8) + 20
    vol[40:52, 30:44, :] = 190  # a 14x12 block on every slice
    session = InteractiveSession(roi, vol, slice_axis=2, name="block", click_window=None)
    calls = roi.encoder_calls
    oid = session.add_box([29, 39, 0, 44, 52, 4], value=1)
    assert roi.encoder_calls - calls == 5  # each slice once, in the object's crop
    obj = session.objects[oid]
    assert all(obj.embeddings.get(z)[1].crop == obj.embeddings.get(0)[1].crop for z in range(5))
    calls = roi.encoder_calls
    session.click(oid, 36, 45, z=2, positive=True)
    assert roi.encoder_calls == calls
    mask = session.mask(oid)
    assert mask[40:52, 30:44, 2].mean() > 0.5 and not mask[:20].any()


def test_ensemble_session_starts_from_the_ensemble_and_decodes_clicks_with_its_sam_member(tmp_path: Path):
    from medadapt.adapt.class_prompts import attach_class_prompts
    from medadapt.infer.ensemble import EnsemblePredictor
    from medadapt.infer.volume import segment_volume_auto

    members = []
    for shift in (0.0, 0.3):  # two automatic-mode members whose class prompts differ
        net = build_model("litemedsam")
        attach_class_prompts(net, 1)
        with torch.no_grad():
            net.class_prompts.tokens.add_(shift)
        members.append(SamPredictor(net.eval(), get_sam_spec("litemedsam"), batch_size=1, use_cache=True, classes=[2]))
    ens = EnsemblePredictor(members, ["a", "b"])
    vol = np.ascontiguousarray(disk_volume(background=34)[..., 1:4])
    session = InteractiveSession(ens, vol, slice_axis=2, name="disk", click_window=None)
    assert session.predictor is members[0]  # the member that takes the clicks
    (oid,) = session.start_auto()
    np.testing.assert_array_equal(session.labels(), ens.segment_volume_auto(vol, slice_axis=2))
    assert (session.labels() != segment_volume_auto(members[0], vol, slice_axis=2)).any()  # not one member's
    before = session.labels()
    assert session.click(oid, x=25, y=22, z=1, positive=False) == [1]
    after = session.labels()
    np.testing.assert_array_equal(np.delete(after, 1, axis=2), np.delete(before, 1, axis=2))
    path = tmp_path / "disk.json"
    save_clicks(path, session.record())
    again = InteractiveSession(ens, vol, slice_axis=2, name="disk")
    again.replay(load_clicks(path), path=path)
    np.testing.assert_array_equal(again.labels(), after)
    with pytest.raises(MedadaptError, match="without prompts"):
        InteractiveSession(ens, vol, slice_axis=2).add_box([13, 10, 0, 37, 34, 2])


def test_clicks_reuse_each_slices_decoder_image(predictor: SamPredictor, monkeypatch):
    """Every slice's prompt-free decoder work is done once (at the start) and reused by the clicks that re-decode
    it; the session keeps it for a bounded number of slices."""
    vol = disk_volume(background=33)
    session = InteractiveSession(predictor, vol, slice_axis=2, name="disk", click_reach=0)
    made = []
    orig = predictor.model.decoder_image
    monkeypatch.setattr(predictor.model, "decoder_image", lambda emb: made.append(1) or orig(emb))
    oid = session.add_box(np.array([13, 10, 0, 37, 34, 4]), value=1)
    assert len(made) == 5 and set(session.embeddings._decoder_images) == set(range(5))
    decoded = session.click(oid, x=25, y=22, z=2, positive=True) + session.click(oid, x=25, y=23, z=3, positive=False)
    assert decoded and len(made) == 5  # clicks re-decode on the kept work
    monkeypatch.setattr(type(session.embeddings), "DECODER_IMAGES", 2)
    session.embeddings._decoder_images.clear()
    decoded = session.click(oid, x=26, y=22, z=2, positive=True)
    assert len(made) == 5 + len(set(decoded)) and len(session.embeddings._decoder_images) <= 2
