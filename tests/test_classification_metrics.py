"""Classification metrics equal scikit-learn's; bootstrap CIs; per-image CSV; summary.json."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score, roc_auc_score

from medadapt.errors import MedadaptError
from medadapt.evaluate.classification import (
    bootstrap_auroc_ci,
    classification_metrics,
    evaluate_scores,
    scores_from_logits,
    weighted_auroc,
    write_scores_csv,
    write_summary,
)

# Fixed example with ties across classes (scores rounded to one decimal).
Y = np.array([[1, 0], [0, 0], [1, 1], [0, 1], [1, 0], [0, 0], [0, 1], [1, 1]])
S = np.array([[0.9, 0.2], [0.3, 0.2], [0.6, 0.7], [0.6, 0.4], [0.4, 0.9], [0.1, 0.1], [0.2, 0.7], [0.8, 0.6]])


def test_auroc_equals_sklearn_on_fixed_example():
    m = classification_metrics(Y, S, "multilabel", class_names=["a", "b"])
    # by hand: 16 (positive, negative) pairs, 14 ordered right, one tie (0.6 vs 0.6) -> 14.5 / 16
    assert m["per_class"]["a"]["auroc"] == roc_auc_score(Y[:, 0], S[:, 0]) == 0.90625
    assert m["per_class"]["b"]["auroc"] == roc_auc_score(Y[:, 1], S[:, 1])
    assert m["auroc"] == pytest.approx(roc_auc_score(Y, S, average="macro"))
    assert m["per_class"]["a"]["n_pos"] == 4 and m["n"] == 8


def test_binary_and_multiclass_match_sklearn():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    p = np.clip(0.3 * y + rng.random(200) * 0.7, 0, 1)
    m = classification_metrics(y.reshape(-1, 1), p.reshape(-1, 1), "binary", class_names=["normal", "pneumonia"])
    assert list(m["per_class"]) == ["pneumonia"]
    assert m["auroc"] == roc_auc_score(y, p)
    assert m["accuracy"] == np.mean((p >= 0.5) == y)
    assert m["balanced_accuracy"] == balanced_accuracy_score(y, p >= 0.5)

    yc = rng.integers(0, 4, 300)
    logits = rng.normal(size=(300, 4)) + 1.5 * np.eye(4)[yc]
    probs = scores_from_logits(logits, "multiclass")
    np.testing.assert_allclose(probs.sum(1), 1.0)
    m = classification_metrics(yc, probs, "multiclass")
    assert m["auroc"] == pytest.approx(roc_auc_score(yc, probs, multi_class="ovr", average="macro"))
    assert m["accuracy"] == np.mean(probs.argmax(1) == yc)
    assert m["balanced_accuracy"] == balanced_accuracy_score(yc, probs.argmax(1))


def test_unknown_labels_are_excluded_and_single_class_is_nan():
    known = np.ones_like(Y, bool)
    known[[0, 2], 0] = False
    m = classification_metrics(Y, S, "multilabel", known=known)
    keep = known[:, 0]
    assert m["per_class"]["0"]["auroc"] == roc_auc_score(Y[keep, 0], S[keep, 0])
    only_neg = np.zeros((4, 1))
    m = classification_metrics(only_neg, np.array([[0.1], [0.2], [0.3], [0.4]]), "binary")
    assert math.isnan(m["auroc"]) and math.isnan(m["balanced_accuracy"]) and m["accuracy"] == 1.0


def test_weighted_auroc_is_sklearn_on_resampled_data():
    rng = np.random.default_rng(1)
    y = rng.random(60) < 0.4
    s = np.round(rng.random(60) + 0.3 * y, 1)  # many ties
    w = rng.integers(0, 3, size=(5, 60))
    got = weighted_auroc(y, s, w)
    for b in range(5):
        rep = np.repeat(np.arange(60), w[b])
        assert got[b] == pytest.approx(roc_auc_score(y[rep], s[rep]), abs=1e-12)
    assert np.isnan(weighted_auroc(np.zeros(3, bool), np.arange(3.0), np.ones((1, 3))))[0]


def test_bootstrap_ci_is_seeded_and_brackets_the_estimate():
    rng = np.random.default_rng(2)
    y = (rng.random((400, 3)) < 0.3).astype(float)
    s = rng.random((400, 3)) + 0.4 * y
    point = classification_metrics(y, s, "multilabel")
    ci = bootstrap_auroc_ci(y, s, "multilabel", n_boot=300, seed=7)
    assert ci == bootstrap_auroc_ci(y, s, "multilabel", n_boot=300, seed=7)
    assert ci != bootstrap_auroc_ci(y, s, "multilabel", n_boot=300, seed=8)
    lo, hi = ci["auroc"]
    assert lo < point["auroc"] < hi and hi - lo < 0.15
    for j in range(3):
        lo, hi = ci["per_class"][str(j)]
        assert lo < point["per_class"][str(j)]["auroc"] < hi
    with pytest.raises(MedadaptError):
        bootstrap_auroc_ci(y, s, "multilabel", n_boot=0)


def test_reports_are_written(tmp_path):
    summary = evaluate_scores(Y, S, "multilabel", class_names=["a", "b"], n_boot=50)
    assert len(summary["auroc_ci"]) == 2 and summary["bootstrap"]["n_boot"] == 50
    summary["per_class"]["a"]["ap"] = float("nan")
    write_summary(tmp_path / "summary.json", summary)
    loaded = json.loads((tmp_path / "summary.json").read_text())  # strict JSON: NaN became null
    assert loaded["per_class"]["a"]["ap"] is None and loaded["auroc"] == pytest.approx(summary["auroc"])

    known = np.ones_like(Y, bool)
    known[1, 1] = False
    write_scores_csv(tmp_path / "scores.csv", [f"img{i}" for i in range(8)], Y, S, "multilabel",
                     class_names=["a", "b"], known=known)
    rows = list(csv.DictReader(open(tmp_path / "scores.csv")))
    assert len(rows) == 8 and rows[0]["id"] == "img0" and float(rows[0]["score_a"]) == 0.9
    assert rows[1]["true_b"] == "" and rows[2]["true_b"] == "1"
    assert not list(tmp_path.glob(".*tmp*"))  # atomic writes leave no temporary files

    with pytest.raises(MedadaptError, match="NaN"):
        classification_metrics(Y, np.full(S.shape, np.nan), "multilabel")
    with pytest.raises(MedadaptError, match="ids"):
        write_scores_csv(tmp_path / "x.csv", ["a"], Y, S, "multilabel")
