"""``medadapt evaluate`` and ``medadapt simulate`` as library calls (the CLI commands only parse and print)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medadapt.errors import MedadaptError
from medadapt.evaluate.simulate import simulate_dataset
from medadapt.pipeline.evaluate import evaluate


def test_prediction_files_are_scored_into_csv_summary_and_report(tmp_path: Path):
    for folder in ("p", "g"):
        (tmp_path / folder).mkdir()
    gt = np.zeros((16, 16), np.uint8)
    gt[4:12, 4:12] = 1
    pred = np.zeros_like(gt)
    pred[4:12, 4:10] = 1
    Image.fromarray(gt).save(tmp_path / "g" / "a.png")
    Image.fromarray(pred).save(tmp_path / "p" / "a.png")
    seen = []
    result = evaluate(out=tmp_path / "ev", pred=tmp_path / "p", gt=tmp_path / "g", n_boot=10,
                      progress=lambda n, what: (seen.append((n, what)), lambda: seen.append("item"))[1])
    assert result.segmentation and seen == [(None, "evaluate"), "item"]
    dsc = result.summary["per_class"]["1"]["dsc"]["mean"]
    assert dsc == pytest.approx(2 * 48 / (64 + 48))
    assert json.loads((tmp_path / "ev" / "summary.json").read_text())["settings"]["pred"] == str(tmp_path / "p")
    assert (tmp_path / "ev" / "per_case.csv").is_file() and result.messages[-1].startswith("report: ")


@pytest.mark.parametrize(("kwargs", "expect"), [
    ({"task": "detect"}, "not one of segment, classify, volumetric"),
    ({"task": "classify"}, "evaluates a fitted run on a dataset"),
    ({"task": "volumetric", "data": "d", "adapters": [Path("a"), Path("b")]}, "evaluates one run"),
    ({"mirror": True}, "--mirror segments images"),
    ({}, "give --pred and --gt"),
])
def test_bad_evaluations_are_refused_before_writing(tmp_path: Path, kwargs, expect):
    with pytest.raises(MedadaptError, match=expect):
        evaluate(out=tmp_path / "ev", **kwargs)
    assert not (tmp_path / "ev").exists()


@pytest.mark.parametrize(("kwargs", "expect"), [({"start": "click"}, "--start 'click'"),
                                                ({"plane": "axial"}, "--plane 'axial'")])
def test_bad_simulations_are_refused_before_reading(tmp_path: Path, kwargs, expect):
    with pytest.raises(MedadaptError, match=expect):
        simulate_dataset(str(tmp_path / "missing"), tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()
