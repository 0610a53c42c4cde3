"""ROI ("zoom-in") inference and the resize choice: exact crop/paste geometry, official path unchanged."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from medadapt.cli.main import app
from medadapt.data.prompts import Prompt
from medadapt.infer.predictor import SamPredictor
from medadapt.infer.volume import segment_volume_boxes3d, segment_volume_from_labels
from medadapt.models.preprocess import (
    OUTSIDE_LOGIT,
    postprocess_logits,
    preprocess_image,
    roi_window,
)
from medadapt.models.registry import get_sam_spec

LITE = get_sam_spec("litemedsam")
SAM = get_sam_spec("sam_vit_b")


def _contains(window, box) -> bool:
    x0, y0, x1, y1 = window
    return x0 <= box[0] and y0 <= box[1] and box[2] < x1 and box[3] < y1


# ----------------------------------------------------------------------------- window geometry
def test_roi_window_grows_box_by_margin_and_squares_it():
    # box pixels 100..139 x 200..219 (40 x 20): margin 0.5 -> 80 wide, 40 high -> an 80 x 80 square
    window = roi_window([100, 200, 139, 219], (512, 512), margin=0.5, min_margin=0)
    x0, y0, x1, y1 = window
    assert (x1 - x0, y1 - y0) == (80, 80)
    assert (x0, x1) == (80, 160)  # centred on the box
    assert (y0 + y1) / 2 == pytest.approx(210, abs=0.5)
    assert _contains(window, [100, 200, 139, 219])


def test_roi_window_minimum_margin_in_pixels():
    x0, y0, x1, y1 = roi_window([50, 50, 52, 52], (512, 512), margin=0.1, min_margin=8)
    assert (x1 - x0, y1 - y0) == (3 + 16, 3 + 16)
    assert (x0, y0) == (42, 42)  # 8 px on each side of pixels 50..52


@pytest.mark.parametrize("box", [[0, 0, 9, 9], [500, 300, 511, 319], [0, 310, 5, 319], [200, 0, 260, 3]])
def test_roi_window_at_image_borders_stays_on_image_and_holds_the_box(box):
    h, w = 320, 512
    window = roi_window(box, (h, w), margin=1.0, min_margin=8)
    x0, y0, x1, y1 = window
    assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
    assert _contains(window, box)
    free = roi_window([250, 150, 250 + box[2] - box[0], 150 + box[3] - box[1]], (h, w), margin=1.0, min_margin=8)
    assert (x1 - x0, y1 - y0) == (free[2] - free[0], free[3] - free[1])  # moved onto the image, not shrunk


def test_roi_window_larger_than_the_image_is_the_image():
    assert roi_window([2, 3, 30, 20], (35, 50), margin=0.5) == (0, 0, 50, 35)


# ----------------------------------------------------------------------------- crop / paste
def test_crop_equals_preprocessing_the_cropped_image():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (300, 420), dtype=np.uint8)
    crop = (37, 61, 137, 141)
    for spec in (LITE, SAM):
        x, tf = preprocess_image(image, spec, crop=crop)
        ref, ref_tf = preprocess_image(image[61:141, 37:137], spec)
        assert torch.equal(x, ref)
        assert tf.original_hw == (300, 420) and tf.input_hw == (80, 100) and tf.resized_hw == ref_tf.resized_hw
        box = np.array([[50.0, 70.0, 90.5, 120.0]])
        # a box moved into crop coordinates: the cropped image's own transform of the shifted box
        shifted = box - np.array([37, 61, 37, 61])
        assert np.array_equal(tf.apply_boxes(box), ref_tf.apply_boxes(shifted))
        assert np.array_equal(tf.scale_boxes(box), ref_tf.scale_boxes(shifted))
        pts = np.array([[[40.0, 65.0], [136.0, 140.0]]])
        assert np.array_equal(tf.apply_points(pts), ref_tf.apply_points(pts - np.array([37, 61])))
        mask = np.zeros((300, 420), np.uint8)
        mask[70:120, 50:90] = 1
        assert np.array_equal(tf.mask_to_model(mask), ref_tf.mask_to_model(mask[61:141, 37:137]))


def test_logits_are_pasted_into_the_window():
    image = np.zeros((400, 600), np.uint8)
    crop = (123, 45, 379, 301)  # 256 x 256: the model frame is the crop, pixel for pixel
    _, tf = preprocess_image(image, LITE, crop=crop)
    assert tf.resized_hw == (256, 256)
    low = torch.full((1, 1, 256, 256), -5.0)
    low[..., 10:30, 100:140] = 5.0
    full = postprocess_logits(low, tf)
    assert full.shape == (1, 1, 400, 600)
    mask = full[0, 0].numpy() > 0
    expect = np.zeros((400, 600), bool)
    expect[45 + 10 : 45 + 30, 123 + 100 : 123 + 140] = True
    assert np.array_equal(mask, expect)
    outside = np.ones((400, 600), bool)
    outside[45:301, 123:379] = False
    assert (full[0, 0].numpy()[outside] == OUTSIDE_LOGIT).all()


def test_crop_must_lie_on_the_image():
    with pytest.raises(ValueError, match="window"):
        preprocess_image(np.zeros((50, 60)), LITE, crop=(10, 10, 70, 20))


# ----------------------------------------------------------------------------- resize
def test_official_and_area_are_the_default_bit_for_bit():
    rng = np.random.default_rng(1)
    small = rng.random((35, 50)).astype(np.float32) * 255
    small_u8 = rng.integers(0, 256, (35, 50), dtype=np.uint8)  # the official code resizes 8-bit images in uint8
    for image in (small, small_u8):
        default, _ = preprocess_image(image, LITE)
        for name in ("official", "area"):
            assert torch.equal(preprocess_image(image, LITE, resize=name)[0], default)
    assert torch.equal(preprocess_image(small, SAM, resize="official")[0], preprocess_image(small, SAM)[0])


def test_zero_shot_models_enlarge_bilinearly_and_adapted_runs_keep_what_fit_trained_with():
    from medadapt.infer.factory import PredictorSpec, build_predictor

    assert PredictorSpec().resize_for(adapted=False) == "bilinear"
    assert PredictorSpec().resize_for(adapted=True) == "official"
    assert PredictorSpec(resize="cubic").resize_for(adapted=True) == "cubic"
    assert build_predictor("litemedsam").resize == "bilinear"
    assert build_predictor("litemedsam", resize="official").resize == "official"


def test_bilinear_enlarges_smoothly_and_leaves_shrinking_alone():
    rng = np.random.default_rng(2)
    small = rng.integers(0, 256, (35, 50), dtype=np.uint8)
    area, tf = preprocess_image(small, LITE)
    bilinear, tf_b = preprocess_image(small, LITE, resize="bilinear")
    assert tf == tf_b
    assert not torch.equal(area, bilinear)
    h, w = tf.resized_hw
    # INTER_AREA enlarges by copying pixels (one value per source pixel along a row); bilinear blends them
    assert len(torch.unique(bilinear[0, 0, :w])) > 3 * len(torch.unique(area[0, 0, :w]))
    assert float(bilinear[0, :h, :w].min()) == 0.0 and float(bilinear[0, :h, :w].max()) == 1.0
    cubic, _ = preprocess_image(small, LITE, resize="cubic")
    assert float(cubic.min()) == 0.0 and float(cubic.max()) == 1.0
    big = rng.integers(0, 256, (1100, 1030), dtype=np.uint8)  # larger than both models' inputs (256, 1024)
    for name in ("bilinear", "cubic", "area"):
        assert torch.equal(preprocess_image(big, LITE, resize=name)[0], preprocess_image(big, LITE)[0])
        assert torch.equal(preprocess_image(big, SAM, resize=name)[0], preprocess_image(big, SAM)[0])
    assert not torch.equal(preprocess_image(small, SAM, resize="bilinear")[0], preprocess_image(small, SAM)[0])
    with pytest.raises(ValueError, match="resize"):
        preprocess_image(small, LITE, resize="nearest")


# ----------------------------------------------------------------------------- predictor with a stand-in model
class BoxEcho(torch.nn.Module):
    """Decodes a box prompt into positive logits inside the box (model frame): checks geometry, not learning."""

    def __init__(self, size: int = 256):
        super().__init__()
        self.size = size
        self.boxes_seen: list[np.ndarray] = []

    def encode(self, images):
        return torch.zeros(images.shape[0], 256, 64, 64)

    def decode(self, embedding, points=None, boxes=None, multimask_output=False):
        n = boxes.shape[0]
        low = torch.full((n, 1, self.size, self.size), -10.0)
        for i, (x0, y0, x1, y1) in enumerate(boxes.tolist()):
            self.boxes_seen.append(np.array([x0, y0, x1, y1]))
            low[i, 0, int(y0) : int(y1) + 1, int(x0) : int(x1) + 1] = 10.0
        return low, torch.ones(n, 1)


def _bbox(mask):
    ys, xs = np.nonzero(mask)
    return xs.min(), ys.min(), xs.max(), ys.max()


def test_roi_masks_land_where_the_box_is():
    image = np.zeros((512, 640), np.uint8)
    box = np.array([400.0, 100.0, 419.0, 111.0])
    plain = SamPredictor(BoxEcho(), LITE)
    roi = SamPredictor(BoxEcho(), LITE, roi_margin=0.5)
    seg_plain, _ = plain.segment(image, [Prompt(class_id=3, box=box)])
    seg_roi, results = roi.segment(image, [Prompt(class_id=3, box=box)])
    assert results[0].mask.shape == (512, 640)
    assert set(np.unique(seg_roi)) == {0, 3}
    x0, y0, x1, y1 = _bbox(seg_roi == 3)
    assert abs(x0 - 400) <= 1 and abs(y0 - 100) <= 1 and abs(x1 - 419) <= 1 and abs(y1 - 111) <= 1
    assert (seg_roi[100:111, 400:419] == 3).all()  # (LiteMedSAM truncates box corners into the frame)
    # zoomed in: the box covers many more model-frame pixels than on the whole image
    width = lambda b: b[2] - b[0]  # noqa: E731
    assert width(roi.model.boxes_seen[0]) > 5 * width(plain.model.boxes_seen[0])
    px, py, qx, qy = _bbox(seg_plain == 3)  # the whole-image path puts it in the same place, more coarsely
    assert abs(px - 400) <= 3 and abs(qx - 419) <= 3


def test_roi_keeps_prompt_order_and_point_prompts_use_the_whole_image():
    image = np.zeros((300, 300), np.uint8)
    roi = SamPredictor(BoxEcho(), LITE, roi_margin=0.25)
    prompts = [Prompt(class_id=1, box=[10, 10, 40, 40]), Prompt(class_id=2, box=[200, 220, 230, 260])]
    seg, results = roi.segment(image, prompts)
    assert [r.prompt.class_id for r in results] == [1, 2]
    assert (seg[10:40, 10:40] == 1).all() and (seg[220:260, 200:230] == 2).all()
    assert roi.images_encoded == 2  # one crop per box


def test_roi_volume_propagation_stays_in_full_slice_pixels():
    vol = np.zeros((9, 400, 500), np.uint8)
    label = np.zeros(vol.shape, np.uint8)
    label[2:7, 300:321, 60:76] = 1
    box3d = np.array([[60, 300, 2, 75, 320, 6]], dtype=np.float64)
    roi = SamPredictor(BoxEcho(), LITE, roi_margin=0.5)
    seg = segment_volume_boxes3d(roi, vol, box3d)
    assert seg.shape == vol.shape
    assert not seg[:2].any() and not seg[7:].any()
    for z in range(2, 7):
        assert (seg[z][300:320, 60:75] == 1).all()  # every slice covers the object
        x0, y0, x1, y1 = _bbox(seg[z] == 1)
        assert x0 >= 60 - 6 and y0 >= 300 - 6 and x1 <= 75 + 6 and y1 <= 320 + 6  # grows only by the +3 px frame margin
    seg2 = segment_volume_from_labels(roi, vol, label)
    for z in range(2, 7):
        assert (seg2[z][300:320, 60:75] == 1).all()
        x0, y0, x1, y1 = _bbox(seg2[z] == 1)
        assert abs(x0 - 60) <= 1 and abs(x1 - 75) <= 1 and abs(y0 - 300) <= 1 and abs(y1 - 320) <= 1


# ----------------------------------------------------------------------------- the real model
def test_roi_segments_a_small_object_in_a_large_image():
    """LiteMedSAM, zero-shot: a 12 px disc in a 512 x 512 image is found inside its box with ROI on."""
    from medadapt.models.registry import build_model

    rng = np.random.default_rng(0)
    image = rng.normal(60, 8, (512, 512)).clip(0, 255)
    yy, xx = np.mgrid[:512, :512]
    disc = (yy - 301) ** 2 + (xx - 207) ** 2 <= 6**2
    image[disc] = 200
    image = image.astype(np.uint8)
    box = np.array([199, 293, 215, 309], dtype=np.float64)
    predictor = SamPredictor(build_model("litemedsam"), LITE, roi_margin=0.5, resize="bilinear")
    seg, _ = predictor.segment(image, [Prompt(class_id=1, box=box)])
    mask = seg == 1
    dice = 2 * (mask & disc).sum() / (mask.sum() + disc.sum())
    assert dice > 0.8, dice
    assert not mask[:250].any() and not mask[:, 300:].any()


# ----------------------------------------------------------------------------- command line
def test_predict_options_and_bad_values(tmp_path: Path):
    rng = np.random.default_rng(3)
    img_dir, lab_dir = tmp_path / "img", tmp_path / "lab"
    img_dir.mkdir()
    lab_dir.mkdir()
    image = rng.normal(50, 5, (300, 300)).clip(0, 255).astype(np.uint8)
    label = np.zeros((300, 300), np.uint8)
    label[140:160, 100:125] = 1
    image[label > 0] = 180
    Image.fromarray(image).save(img_dir / "a.png")
    Image.fromarray(label).save(lab_dir / "a.png")
    runner = CliRunner()

    def run(*extra):
        args = ["predict", "--input", img_dir, "--labels", lab_dir, "--out", tmp_path / "pred", "--engine", "torch",
                *extra]
        return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)

    res = run("--resize", "nearest")
    assert res.exit_code == 2 and "--resize" in res.output and "Traceback" not in res.output
    res = run("--roi-margin", "-1")
    assert res.exit_code == 2 and "--roi-margin" in res.output
    res = run("--resize", "bilinear", "--roi-margin", "0.5")
    assert res.exit_code == 0, res.output
    pred = np.array(Image.open(tmp_path / "pred" / "a.png")) > 0
    dice = 2 * (pred & (label > 0)).sum() / (pred.sum() + (label > 0).sum())
    assert dice > 0.8, dice


def test_evaluate_records_the_input_variant(tmp_path: Path):
    import json

    rng = np.random.default_rng(4)
    for sub in ("images", "masks"):
        (tmp_path / "data" / sub).mkdir(parents=True)
    for i in range(3):
        image = rng.normal(40, 4, (80, 90)).clip(0, 255).astype(np.uint8)
        label = np.zeros((80, 90), np.uint8)
        label[20 + i : 34 + i, 30:48] = 1
        image[label > 0] = 190
        Image.fromarray(image).save(tmp_path / "data" / "images" / f"c{i}.png")
        Image.fromarray(label).save(tmp_path / "data" / "masks" / f"c{i}.png")
    runner = CliRunner()
    out = tmp_path / "ev"
    res = runner.invoke(app, ["evaluate", "--data", str(tmp_path / "data"), "--model", "litemedsam", "--resize",
                              "bilinear", "--roi-margin", "0.5", "--bootstrap", "10", "--out", str(out)],
                        catch_exceptions=False)
    assert res.exit_code == 0, res.output
    settings = json.loads((out / "summary.json").read_text())["settings"]
    assert settings["resize"] == "bilinear" and settings["roi_margin"] == 0.5
    res = runner.invoke(app, ["evaluate", "--pred", str(tmp_path / "data" / "masks"), "--gt",
                              str(tmp_path / "data" / "masks"), "--resize", "bilinear", "--out", str(tmp_path / "e2")],
                        catch_exceptions=False)
    assert res.exit_code == 2 and "--data" in res.output
