"""Run folders written by an earlier medadapt still load, predict and evaluate the same.

``tests/data/legacy_run/`` holds the small files (JSON, metrics, adapter safetensors) of three tiny
runs fitted on the synthetic data before the run folder had one owner: a segment run in automatic
mode (post-processing stored inside ``adapter.json``), a classify run (its older ``split.json``
schema: ``data``/``train``/``val``/``train_class_counts``) and a volumetric run. The expected numbers
were produced by the code that wrote them.
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
from medadapt.data.synthetic import make_synthetic_dataset
from medadapt.run import ClassifyAdapterInfo, RunFolder, SegmentAdapterInfo, VolumetricAdapterInfo

LEGACY = Path(__file__).parent / "data" / "legacy_run"
runner = CliRunner()


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    return make_synthetic_dataset(tmp_path_factory.mktemp("legacy") / "ds", n_cases=4)


@pytest.fixture()
def legacy(tmp_path) -> Path:
    """A writable copy (a step must never change the stored folder)."""
    return Path(shutil.copytree(LEGACY, tmp_path / "legacy"))


def test_segment_run_predicts_the_same(synth: Path, legacy: Path, tmp_path: Path):
    img = nib.load(synth / "imagesTr" / "synth_001.nii.gz")
    small = tmp_path / "in" / "synth_001.nii.gz"  # three slices keep the test fast
    small.parent.mkdir()
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj)[:, :, 14:17], img.affine), small)
    res = runner.invoke(app, ["predict", "--engine", "torch", "--adapter", str(legacy / "segment"), "--input", str(small),
                              "--out", str(tmp_path / "pred"), "--threads", "1"])
    assert res.exit_code == 0, res.output
    pred = np.asarray(nib.load(tmp_path / "pred" / "synth_001.nii.gz").dataobj)
    counts = {int(k): int(v) for k, v in zip(*np.unique(pred, return_counts=True), strict=True)}
    # pinned from the stored run; one boundary pixel moved (class 0 -> 2) when the mask decoder began to keep its
    # image tokens contiguous (float rounding of the same arithmetic), so the pin was renewed then
    assert counts == {0: 3801, 1: 2809, 2: 302}


def test_classify_run_with_the_old_split_schema_evaluates_the_same(legacy: Path, tmp_path: Path, tiny_mnist: Path):
    npz = tiny_mnist
    res = runner.invoke(app, ["evaluate", "--task", "classify", "--data", str(npz), "--adapter",
                              str(legacy / "classify"), "--split", "test", "--out", str(tmp_path / "ev"),
                              "--bootstrap", "20", "--threads", "1"])
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "ev" / "summary.json").read_text())
    assert summary["auroc"] == pytest.approx(1.0) and summary["settings"]["images"] == 24
    stored = json.loads((legacy / "classify" / "split.json").read_text())
    split = RunFolder(legacy / "classify").read_split()  # the old schema, read as the common one
    assert list(split.train) == stored["train"] and list(split.val) == stored["val"] and not split.test
    assert split.info["train_class_counts"] == stored["train_class_counts"]


def test_volumetric_run_evaluates(synth: Path, legacy: Path, tmp_path: Path):
    res = runner.invoke(app, ["evaluate", "--task", "volumetric", "--data", str(synth), "--adapter",
                              str(legacy / "volumetric"), "--out", str(tmp_path / "ev"), "--bootstrap", "10"])
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "ev" / "summary.json").read_text())
    split = json.loads((legacy / "volumetric" / "split.json").read_text())
    assert summary["n_cases"] == len(split["test"]) and 0 <= summary["overall"]["dsc"]["mean"] <= 1


def test_old_runs_are_read_through_the_run_folder():
    seg = RunFolder.resolve(LEGACY / "segment" / "adapter")  # an adapter folder resolves to its run
    assert seg.root == LEGACY / "segment"
    assert seg.automatic_mode() == ([1, 2], [1, 2])  # keep_largest from adapter.json (no postprocess.json)
    assert seg.read_postprocess()["report"]["cases"] == ["synth_001"]
    info = seg.adapter_info()
    assert isinstance(info, SegmentAdapterInfo) and info.prompt == "auto" and info.class_prompt_tokens == 2
    assert isinstance(RunFolder(LEGACY / "classify").adapter_info(), ClassifyAdapterInfo)
    assert isinstance(RunFolder(LEGACY / "volumetric").adapter_info(), VolumetricAdapterInfo)
    assert RunFolder(LEGACY / "volumetric").read_split().test


@pytest.mark.parametrize("flags, named", [(["--precision", "int8"], "int8"), (["--engine", "openvino"], "openvino")])
def test_non_segment_runs_refuse_export_only_engines_and_precisions(synth: Path, legacy: Path, tmp_path: Path,
                                                                     flags: list[str], named: str):
    out = tmp_path / "pred"
    res = runner.invoke(app, ["predict", "--adapter", str(legacy / "volumetric"), "--input", str(synth / "imagesTr"),
                              "--out", str(out), *flags])
    assert res.exit_code == 2, res.output
    assert named in res.output and "PyTorch" in res.output and not out.exists()
