"""A new user's folder: 5 labelled volumes (MSD layout) and 10 unlabelled ones in imagesTs.

The README recipe (``fit --test 0 --prompt auto ... --predict imagesTs``) trains on all 5 and writes
segmentations of the 10 with each input's geometry.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from medadapt.cli.main import app

runner = CliRunner()


def make_user_folder(shared: Path, root: Path, n_labelled: int = 5, n_new: int = 10) -> Path:
    """An MSD-layout folder with the ``n_labelled`` + ``n_new`` smallest hippocampus volumes."""
    src = shared / "data" / "hippocampus"
    meta = json.loads((src / "dataset.json").read_text())
    names = sorted((p.name for p in (src / "imagesTr").iterdir()), key=lambda n: (src / "imagesTr" / n).stat().st_size)
    labelled, new = sorted(names[:n_labelled]), sorted(names[n_labelled:n_labelled + n_new])
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (root / sub).mkdir(parents=True)
    for n in labelled:
        shutil.copy(src / "imagesTr" / n, root / "imagesTr" / n)
        shutil.copy(src / "labelsTr" / n, root / "labelsTr" / n)
    for n in new:
        shutil.copy(src / "imagesTr" / n, root / "imagesTs" / n)
    meta["numTraining"] = len(labelled)
    meta["training"] = [{"image": f"./imagesTr/{n}", "label": f"./labelsTr/{n}"} for n in labelled]
    meta["test"] = [f"./imagesTs/{n}" for n in new]
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


@pytest.fixture()
def user_folder(shared, tmp_path):
    return make_user_folder(shared, tmp_path / "mydata")


def test_too_few_cases_for_the_folds_exit_2_without_output(user_folder, tmp_path):
    run = tmp_path / "run"
    res = runner.invoke(app, ["fit", "--data", str(user_folder), "--test", "0", "--folds", "6", "--out", str(run)])
    assert res.exit_code == 2, res.output
    assert "--folds 6 needs at least 6 training cases" in res.output and "--folds 5 or fewer" in res.output
    assert not run.exists()
    res = runner.invoke(app, ["fit", "--data", str(user_folder), "--test", "0", "--predict",
                              str(user_folder / "imagesTs"), "--out", str(run)])
    assert res.exit_code == 2 and "--prompt auto" in res.output and not run.exists()


@pytest.mark.slow
def test_new_user_trains_on_all_five_and_segments_the_ten(user_folder, tmp_path, monkeypatch):
    monkeypatch.setenv("MEDADAPT_CACHE", str(tmp_path / "medadapt-cache"))
    run = tmp_path / "run"
    res = runner.invoke(app, [
        "fit", "--data", str(user_folder), "--test", "0", "--shots", "5", "--method", "decoder", "--prompt", "auto",
        "--out", str(run), "--predict", str(user_folder / "imagesTs"), "--max-steps", "3", "--batch-size", "2",
        "--threads", "2", "--no-progress",
    ])
    assert res.exit_code == 0, res.output
    split = json.loads((run / "split.json").read_text())
    labelled = sorted(p.name.removesuffix(".nii.gz") for p in (user_folder / "imagesTr").iterdir())
    assert sorted(split["train"]) == labelled and split["val"] == [] and split["test"] == []
    result = json.loads((run / "result.json").read_text())
    assert result["protocol"]["held_out_test"] is False and result["test_cases"] == []
    assert result["encoder_engine"].startswith("openvino:fp32")  # the default: the fastest exact encoder
    assert "no held-out test set" in res.output
    assert "no held-out test set" in (run / "report" / "index.html").read_text()

    inputs = sorted((user_folder / "imagesTs").iterdir())
    outputs = sorted((run / "predictions").iterdir())
    assert [p.name for p in outputs] == [p.name for p in inputs] and len(outputs) == 10
    for src, seg in zip(inputs, outputs, strict=True):
        a, b = nib.load(src), nib.load(seg)
        assert b.shape == a.shape and np.allclose(b.affine, a.affine)
        assert np.allclose(b.header.get_zooms(), a.header.get_zooms())
        assert set(np.unique(np.asarray(b.dataobj))) <= {0, 1, 2}
