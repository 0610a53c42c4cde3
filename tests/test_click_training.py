"""``fit --prompt click``: training objects get the box plus corrective clicks simulated from the errors
of the prediction so far (the challenge's rule), and the loss is on the decode with all of them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medadapt.adapt.recipes import RecipeConfig, apply_recipe
from medadapt.data.slices import SliceSample
from medadapt.engine.sam_task import SamSegmentationTask, SamTaskSettings
from medadapt.models.registry import build_model, get_sam_spec


def _sample(key: str, offset: int) -> SliceSample:
    image = np.zeros((64, 64), dtype=np.uint8)
    label = np.zeros((64, 64), dtype=np.int64)
    image[10 + offset : 40 + offset, 12:44] = 200
    label[10 + offset : 40 + offset, 12:44] = 1
    label[48:60, 40:60] = 2
    image[48:60, 40:60] = 90
    return SliceSample(key, 0, None, image, label, (1.0, 1.0), (64, 64))


@pytest.fixture(scope="module")
def task():
    torch.manual_seed(0)
    model = build_model("litemedsam", pretrained=False)
    recipe = RecipeConfig(name="decoder")
    applied = apply_recipe(model, recipe)
    settings = SamTaskSettings(prompt="click", classes=(1, 2), batch_size=2, max_clicks=3, seed=0)
    samples = [_sample("a", 0), _sample("b", 6)]
    return SamSegmentationTask(model, get_sam_spec("litemedsam"), recipe, applied.encoder_trainable,
                               samples, samples[:1], settings)


def _recorded_decodes(task, monkeypatch, batch):
    calls = []
    decode = task.sam.decode

    def spy(emb, points=None, boxes=None, **kw):
        calls.append((torch.is_grad_enabled(), points, boxes))
        return decode(emb, points=points, boxes=boxes, **kw)

    monkeypatch.setattr(task.sam, "decode", spy)
    loss, info = task.training_step(batch)
    return calls, loss, info


def test_clicks_follow_the_errors_and_the_loss_sees_them(task, monkeypatch):
    seen_points = 0
    for index in range(6):
        calls, loss, info = _recorded_decodes(task, monkeypatch, (0, index, [0, 1]))
        assert info["objects"] == 4.0  # two classes on each of the two slices
        assert torch.isfinite(loss) and loss.requires_grad
        graded = [c for c in calls if c[0]]
        assert sum(len(c[2]) for c in graded) == 4  # every object once in the loss, always with its box
        for _, points, boxes in calls:
            assert boxes is not None
            if points is None:
                continue
            coords, labels = points
            assert coords.shape[:2] == labels.shape and coords.shape[1] <= 3
            seen_points += int(labels.numel())
            # a positive click lies on its object (targets of slice a/b: class 1 rectangle or class 2)
            for obj in range(coords.shape[0]):
                for (x, y), lab in zip(coords[obj].tolist(), labels[obj].tolist(), strict=True):
                    assert 0 <= x < 256 and 0 <= y < 256
                    assert lab in (0, 1)
        # the no-gradient decodes come first: they produce the clicks the final decode uses
        assert all(not c[0] for c in calls[: len(calls) - len(graded)])
    assert seen_points > 0


def test_positive_clicks_land_on_object_pixels(task, monkeypatch):
    item = task.train_items[0]
    for index in range(6):
        calls, _, _ = _recorded_decodes(task, monkeypatch, (1, index, [0]))
        for graded, points, _boxes in calls:
            if not graded or points is None:
                continue
            coords, labels = points
            for obj in range(coords.shape[0]):
                for (x, y), lab in zip(coords[obj].tolist(), labels[obj].tolist(), strict=True):
                    if lab == 1:  # a positive click is on a missed pixel of an object, never on background
                        assert int(item.target[int(y), int(x)]) != 0


def test_validation_prompts_with_the_box_alone(task, monkeypatch):
    calls = []
    decode = task.sam.decode

    def spy(emb, points=None, boxes=None, **kw):
        calls.append((points, boxes))
        return decode(emb, points=points, boxes=boxes, **kw)

    monkeypatch.setattr(task.sam, "decode", spy)
    metrics = task.validate()
    assert calls and all(p is None and b is not None for p, b in calls)
    assert 0.0 <= metrics["val_dsc"] <= 1.0
