"""Classification for use: train on every labelled image, cross-validate, predict new images, score elsewhere."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from medadapt.cli.main import app

runner = CliRunner()


def _images(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Class 1 has a bright square in the centre: learnable in a few steps."""
    labels = np.arange(n) % 2
    imgs = rng.integers(0, 90, (n, 16, 16), dtype=np.uint8)
    imgs[labels == 1, 4:12, 4:12] += 120
    return imgs, labels[:, None].astype(np.uint8)


def _npz(path, seed: int, sizes=(("train", 24), ("val", 8), ("test", 12))):
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in sizes:
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = _images(rng, n)
    np.savez(path, **arrays)
    return path


@pytest.fixture()
def mine(tmp_path):
    return _npz(tmp_path / "mine.npz", 0)


@pytest.fixture()
def other(tmp_path):
    return _npz(tmp_path / "other.npz", 1)


def _fit(data, out, *extra):
    return runner.invoke(app, ["fit", "--task", "classify", "--data", str(data), "--out", str(out), "--model",
                               "cnn_small", "--method", "full", "--max-steps", "4", "--batch-size", "8", "--lr", "3e-3",
                               "--threads", "1", "--no-progress", "--set", "img_size=16", *extra])


def test_every_labelled_image_trains_then_new_images_are_classified(mine, other, tmp_path):
    run = tmp_path / "run"
    res = _fit(mine, run, "--test", "0")
    assert res.exit_code == 0, res.output
    split = json.loads((run / "split.json").read_text())
    assert split["format"] == "medadapt.split/1" and set(split) >= {"train", "val", "test", "info"}
    assert len(split["train"]) == 24 and split["val"] == [] and split["test"] == []
    result = json.loads((run / "result.json").read_text())
    assert result["protocol"]["held_out_test"] is False and result["best_metric"] is None
    assert "no held-out test set" in res.output

    # a folder of new images -> one CSV row of probabilities per image
    folder = tmp_path / "new"
    folder.mkdir()
    imgs, _ = _images(np.random.default_rng(5), 6)
    for i, img in enumerate(imgs):
        Image.fromarray(img).save(folder / f"img{i}.png")
    res = runner.invoke(app, ["predict", "--adapter", str(run), "--input", str(folder), "--out", str(tmp_path / "p")])
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader((tmp_path / "p" / "probabilities.csv").open()))
    assert [r["id"] for r in rows] == [f"img{i}.png" for i in range(6)]
    probs = [float(v) for r in rows for k, v in r.items() if k != "id"]
    assert len(probs) == 6 and all(0 <= p <= 1 for p in probs)
    # a MedMNIST .npz (its test split) and a CSV of image paths
    res = runner.invoke(app, ["predict", "--adapter", str(run), "--input", str(other), "--out", str(tmp_path / "q.csv")])
    assert res.exit_code == 0, res.output
    assert len(list(csv.DictReader((tmp_path / "q.csv").open()))) == 12
    (folder / "list.csv").write_text("image\n" + "".join(f"img{i}.png\n" for i in (2, 0)))
    res = runner.invoke(app, ["predict", "--adapter", str(run), "--input", str(folder / "list.csv"),
                              "--out", str(tmp_path / "r.csv")])
    assert res.exit_code == 0, res.output
    again = list(csv.DictReader((tmp_path / "r.csv").open()))
    assert [r["id"] for r in again] == ["img2.png", "img0.png"] and again[1] == {**rows[0], "id": "img0.png"}

    # another labelled dataset: its test images are scored
    res = runner.invoke(app, ["evaluate", "--task", "classify", "--data", str(other), "--adapter", str(run),
                              "--out", str(tmp_path / "ev"), "--bootstrap", "10"])
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "ev" / "summary.json").read_text())
    assert summary["settings"]["images"] == 12 and 0 <= summary["auroc"] <= 1


def test_folds_report_a_cross_validated_auroc_and_train_on_all(mine, tmp_path):
    run = tmp_path / "run"
    res = _fit(mine, run, "--test", "0", "--folds", "3", "--val-every", "2")
    assert res.exit_code == 0, res.output
    protocol = json.loads((run / "result.json").read_text())["protocol"]
    assert protocol["folds"] == 3 and protocol["chosen_step"] in (2, 4) and protocol["cv_metric"] == "AUROC"
    assert 0 <= protocol["cv_estimate"] <= 1
    folds = [json.loads((run / "folds" / f"fold{i}" / "split.json").read_text()) for i in range(3)]
    vals = [set(f["val"]) for f in folds]
    assert sum(map(len, vals)) == 24 and set.union(*vals) == set(json.loads((run / "split.json").read_text())["train"])
    assert json.loads((run / "result.json").read_text())["steps"] == protocol["chosen_step"]


def test_too_few_images_for_the_folds_exit_2_without_output(mine, tmp_path):
    run = tmp_path / "run"
    res = _fit(mine, run, "--test", "0", "--shots", "2", "--folds", "3")
    assert res.exit_code == 2, res.output
    assert "needs at least 3 training images of each class" in res.output and "--folds 2" in res.output
    assert not run.exists()
