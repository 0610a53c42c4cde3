"""The studio's "next case" suggestion: list order without an adapter; under an adapter, the unlabelled case
with the highest mean entropy, scored in the background and cached per adapter."""

from __future__ import annotations

import time

import nibabel as nib
import numpy as np
import pytest
from fastapi.testclient import TestClient

from medadapt.data.synthetic import make_synthetic_dataset
from medadapt.infer.predictor import SamPredictor
from medadapt.models.registry import build_model, get_sam_spec
from medadapt.studio.app import create_app
from medadapt.studio.cases import CaseFolder
from medadapt.studio.state import Studio
from medadapt.studio.suggest import binary_entropy, uncertainty

BASE = "http://127.0.0.1"


@pytest.fixture(scope="module")
def predictor(tmp_path_factory) -> SamPredictor:
    """With an embedding cache, as the studio's predictor: a second scoring pass encodes nothing."""
    return SamPredictor(build_model("litemedsam"), get_sam_spec("litemedsam"), batch_size=4,
                        cache_dir=tmp_path_factory.mktemp("embeddings"))


def client(root, predictor, adapter=None) -> tuple[Studio, TestClient]:
    studio = Studio(CaseFolder(root), lambda: predictor, adapter=adapter)
    app = create_app(studio)
    app.state.suggester.slices = 2  # the test's CPU time; the scoring is the same for any number
    return studio, TestClient(app, base_url=BASE)


def test_entropy_and_the_region_it_is_averaged_over():
    assert binary_entropy(np.array([0.5]))[0] == pytest.approx(1.0)
    assert binary_entropy(np.array([0.0, 1.0])).max() < 1e-5
    probs = np.zeros((1, 10, 10))
    probs[0, :2, :5] = 0.5  # 10 uncertain pixels, the rest confidently background
    assert uncertainty(probs) == pytest.approx(1.0)  # the region: the predicted object and its margin only
    probs[0, :2, 5:] = 0.99
    assert uncertainty(probs) == pytest.approx((1.0 + binary_entropy(np.array([0.99]))[0]) / 2)
    two = np.stack([probs[0], np.full((10, 10), 0.001)])
    assert uncertainty(two) == pytest.approx(uncertainty(probs))  # a pixel counts with its least certain class
    assert uncertainty(np.zeros((1, 4, 4))) < 1e-5  # nothing predicted: the whole image


def wait_complete(c: TestClient) -> dict:
    deadline = time.monotonic() + 300
    while not (s := c.get("/api/suggest").json())["complete"]:
        assert time.monotonic() < deadline, s
        time.sleep(0.2)
    return s


def test_suggestion_by_list_order_then_by_entropy_per_adapter(tmp_path, predictor):
    root = tmp_path / "data"
    make_synthetic_dataset(root, n_cases=4)
    for i in (1, 2, 3):
        (root / f"labelsTr/synth_{i:03d}.nii.gz").unlink()
    studio, c = client(root, predictor)
    app = c.app
    # the zero-shot model: nothing learnt from this folder yet, the first unlabelled case in list order
    assert c.get("/api/suggest").json() == {"adapter": None, "total": 3, "case": "synth_001", "method": "list order",
                                            "score": None, "scored": 0, "complete": True}
    studio.switch(predictor, "studio adapter 001")  # a box-prompt adapter (here: the base weights)
    first = c.get("/api/suggest").json()  # starts the scoring, answers at once
    assert first["adapter"] == "studio adapter 001" and first["total"] == 3
    s = wait_complete(c)
    scores = app.state.suggester.scores["studio adapter 001"]
    assert sorted(scores) == ["synth_001", "synth_002", "synth_003"]  # the labelled case is not scored
    assert all(0 <= v <= 1 for v in scores.values()) and len(set(scores.values())) == 3
    assert s["method"] == "entropy" and s["case"] == max(scores, key=scores.get) and s["scored"] == 3
    assert s["score"] == pytest.approx(scores[s["case"]], abs=1e-4)
    # the score is what score_case computes with the box where the saved label lies
    sug = app.state.suggester
    assert scores["synth_002"] == pytest.approx(sug.score_case("synth_002", predictor, sug._label_box()), abs=1e-3)
    box = sug._label_box()
    label = np.moveaxis(np.asarray(nib.load(root / "labelsTr/synth_000.nii.gz").dataobj), 2, 0)
    idx = np.argwhere(label)
    np.testing.assert_allclose(box, [*(idx.min(0) / label.shape), *((idx.max(0) + 1) / label.shape)])
    # once the suggested case is labelled, the next best one is suggested, without scoring again
    best = s["case"]
    c.post(f"/api/cases/{best}/box", json={"corner0": [10, 10, 16], "corner1": [30, 30, 16], "space": "voxel"})
    assert c.put(f"/api/cases/{best}/label").status_code == 200
    after = c.get("/api/suggest").json()
    rest = {k: v for k, v in scores.items() if k != best}
    assert after["case"] == max(rest, key=rest.get) and after["complete"] and after["total"] == 2
    # another adapter: scored afresh; the first adapter's scores stay cached
    studio.switch(predictor, "studio adapter 002")
    assert c.get("/api/suggest").json()["adapter"] == "studio adapter 002"
    wait_complete(c)
    assert sorted(sug.scores) == ["studio adapter 001", "studio adapter 002"]
    assert sorted(sug.scores["studio adapter 002"]) == sorted(rest)


def test_interactions_answer_while_cases_are_scored(tmp_path, predictor):
    root = tmp_path / "data"
    make_synthetic_dataset(root, n_cases=4)
    for i in (1, 2, 3):
        (root / f"labelsTr/synth_{i:03d}.nii.gz").unlink()
    _, c = client(root, predictor, "studio adapter 001")
    c.get("/api/cases/synth_003")
    c.get("/api/suggest")
    r = c.post("/api/cases/synth_003/box", json={"corner0": [10, 10, 16], "corner1": [30, 30, 16], "space": "voxel"})
    assert r.status_code == 200, r.text
    assert wait_complete(c)["scored"] == 3


def test_scores_survive_a_restart_until_the_image_changes(tmp_path, predictor):
    root = tmp_path / "data"
    make_synthetic_dataset(root, n_cases=3)
    for i in (1, 2):
        (root / f"labelsTr/synth_{i:03d}.nii.gz").unlink()
    _, c = client(root, predictor, "studio adapter 001")
    c.get("/api/suggest")
    first = wait_complete(c)
    scores = dict(c.app.state.suggester.scores["studio adapter 001"])
    assert sorted(scores) == ["synth_001", "synth_002"]
    assert (root / ".medadapt-studio" / "suggestions.json").is_file()
    # a restarted studio answers from the store at once: complete, nothing to score
    _, c2 = client(root, predictor, "studio adapter 001")
    again = c2.get("/api/suggest").json()
    assert again == first and again["complete"]
    assert c2.app.state.suggester._thread is None
    # an image replaced on disk is scored afresh; the other case keeps its stored score
    image = root / "imagesTr" / "synth_002_0000.nii.gz"
    if not image.exists():
        image = next((root / "imagesTr").glob("synth_002*"))
    nib.save(nib.load(image), image)
    _, c3 = client(root, predictor, "studio adapter 001")
    partial = c3.get("/api/suggest").json()
    assert partial["scored"] == 1 and not partial["complete"]
    assert c3.app.state.suggester.scores["studio adapter 001"] == {"synth_001": scores["synth_001"]}
    wait_complete(c3)
    # a damaged store is a cache: ignored, the cases are scored again
    (root / ".medadapt-studio" / "suggestions.json").write_text("{not json")
    _, c4 = client(root, predictor, "studio adapter 001")
    assert c4.get("/api/suggest").json()["scored"] == 0
    assert wait_complete(c4)["scored"] == 2
