"""Automatic-mode post-processing: keep a class's largest component only where validation says so."""

from __future__ import annotations

import numpy as np
import pytest

import medadapt.pipeline.postprocess as postprocess
from medadapt.metrics import dice
from medadapt.pipeline.postprocess import choose_keep_largest


class _Cases:
    """A dataset stand-in: two 3D cases with a label and a fixed 'prediction' each."""

    def __init__(self):
        self.labels, self.preds = {}, {}
        for key in ("a", "b"):
            label = np.zeros((8, 16, 16), np.uint16)
            label[2:6, 2:6, 2:6] = 1  # class 1: one blob
            label[2:6, 10:13, 2:5] = 2  # class 2: two real pieces
            label[2:6, 10:13, 10:13] = 2
            pred = label.copy()
            pred[7, 14:16, 14:16] = 1  # a stray class-1 island
            self.labels[key], self.preds[key] = label, pred

    def case(self, key):
        return key

    def load(self, key):
        return self.labels[key].astype(np.float32), self.labels[key], (1.0, 1.0, 1.0), 0


class _Predictor:
    keep_largest: list[int] = []


def test_keep_largest_is_chosen_per_class_on_validation(monkeypatch):
    cases = _Cases()
    monkeypatch.setattr(postprocess, "predict_loaded", lambda p, image, label, axis, mode: cases.preds[
        next(k for k, v in cases.labels.items() if v is label)])
    predictor = _Predictor()
    chosen, report = choose_keep_largest(predictor, cases, ["a", "b"], [1, 2])
    assert chosen == [1]  # removing the island helps class 1; class 2 would lose a real piece
    assert report["classes"]["1"]["dsc_largest_component"] == 1.0 > report["classes"]["1"]["dsc"]
    assert report["classes"]["2"]["dsc_largest_component"] < report["classes"]["2"]["dsc"] == 1.0


def test_keep_largest_is_chosen_without_post_processing():
    """The choice compares raw predictions with their largest components: a predictor that already
    post-processes is refused (it is built with ``PredictorSpec(keep_largest=())`` instead)."""
    predictor = _Predictor()
    predictor.keep_largest = [1]
    with pytest.raises(ValueError, match="without post-processing"):
        choose_keep_largest(predictor, _Cases(), ["a"], [1])


def test_predictor_applies_keep_largest():
    from medadapt.infer.predictor import SamPredictor

    labels = np.zeros((4, 10, 10), np.uint16)
    labels[1:3, 1:4, 1:4] = 1
    labels[3, 8, 8] = 1
    stub = SamPredictor.__new__(SamPredictor)
    stub.keep_largest = []
    np.testing.assert_array_equal(stub.postprocess_auto(labels), labels)
    stub.keep_largest = [1]
    out = stub.postprocess_auto(labels)
    assert out[3, 8, 8] == 0 and (out[1:3, 1:4, 1:4] == 1).all()


@pytest.mark.parametrize(("a", "b", "want"), [(0, 0, 1.0), (1, 0, 0.0), (1, 1, 1.0)])
def test_dice_edge_cases(a, b, want):
    """Choosing post-processing counts two empty masks as a match (``empty=1.0``)."""
    assert dice(np.full(3, bool(a)), np.full(3, bool(b)), empty=1.0) == want


def test_dice_of_two_empty_masks_is_nan_by_default():
    """The official convention: a class absent from both masks is not scored."""
    assert np.isnan(dice(np.zeros(3, bool), np.zeros(3, bool)))


def test_predictor_spec_sets_keep_largest_in_the_constructor():
    """``PredictorSpec.keep_largest`` replaces the run's own choice; None keeps it."""
    from pathlib import Path

    from medadapt.infer.factory import PredictorSpec, load_predictor

    run = Path(__file__).parent / "data" / "legacy_run" / "segment"  # automatic mode, keep_largest [1, 2]
    assert load_predictor(PredictorSpec(adapters=(run,))).keep_largest == [1, 2]
    assert load_predictor(PredictorSpec(adapters=(run,), keep_largest=())).keep_largest == []
    assert load_predictor(PredictorSpec(adapters=(run,), keep_largest=(2,))).keep_largest == [2]
