"""Adaptation in the loop: a save starts a background fit of the saved cases; the finished adapter is a
normal run folder, the studio switches to it between interactions, and a restarted studio resumes it."""

from __future__ import annotations

import gzip
import json
import shutil
import time

import nibabel as nib
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from medadapt.data.synthetic import SPACING, make_synthetic_dataset, synthetic_case
from medadapt.deploy.auto import fit_encoder_engine
from medadapt.errors import MedadaptError
from medadapt.run import RunFolder
from medadapt.studio.adaptation import fit_progress
from medadapt.studio.app import create_app
from medadapt.studio.server import build_studio, frozen_base

BASE = "http://127.0.0.1"


def small_dataset(root, n: int = 3, depth: int = 12):
    """An MSD folder like make_synthetic_dataset's with ``depth`` slices per case (fits encode every slice)."""
    make_synthetic_dataset(root, n_cases=n)
    for i in range(n):
        image, label = synthetic_case(np.random.default_rng([1, i]), shape=(48, 48, depth))
        for sub, arr in (("imagesTr", image), ("labelsTr", label)):
            nib.save(nib.Nifti1Image(arr, np.diag([*SPACING, 1.0])), root / sub / f"synth_{i:03d}.nii.gz")
    return root


def test_a_save_fits_an_adapter_and_the_studio_switches_to_it(tmp_path):
    root = small_dataset(tmp_path / "data")
    label = np.asarray(nib.load(root / "labelsTr/synth_001.nii.gz").dataobj)
    for i in (1, 2):
        (root / f"labelsTr/synth_{i:03d}.nii.gz").unlink()
    studio, loop = build_studio(root, fit_steps=2, echo=lambda _: None)
    zero_shot = studio.predictor
    c = TestClient(create_app(studio, loop=loop), base_url=BASE)
    assert c.get("/api/adapter").json() == {"adapter": None, "state": "idle", "steps": 2, "labelled": 1,
                                            "current": None, "pinned": False, "running": None, "last": None,
                                            "queued": False, "adapters": []}
    # a case opened before the switch keeps its model until it is saved
    c.post("/api/cases/synth_002/box", json={"corner0": [10, 10, 6], "corner1": [30, 30, 6], "space": "voxel"})
    body = nib.Nifti1Image(label, np.eye(4)).to_bytes()
    assert c.put("/api/cases/synth_001/label", content=body).status_code == 200
    deadline = time.monotonic() + 600
    while (seen := c.get("/api/adapter").json())["state"] == "fitting" or loop.running or loop.last is None:
        assert time.monotonic() < deadline, "the background fit did not end"
        if (running := seen["running"]) is not None:  # the fit's progress, as the page shows it
            assert running["adapter"] == "001" and running["steps"] == 2
            assert running["phase"] in ("preparing", "training") and (running["step"] is None) == (
                running["phase"] == "preparing")
        time.sleep(0.5)
    assert loop.wait(60)
    status = c.get("/api/adapter").json()
    assert status["last"]["error"] is None, status
    assert status["state"] == "idle" and status["current"] == "001" and status["labelled"] == 2
    assert status["adapter"] == "studio adapter 001" and status["last"]["cases"] == 2
    run = root / ".medadapt-studio/adapters/001"
    folder = RunFolder.resolve(run)  # a normal run folder: predict / evaluate / export take it
    assert folder.adapter_tensors.is_file() and folder.read_result()["train_cases"] == ["synth_000", "synth_001"]
    engine = fit_encoder_engine("auto")[0]
    assert studio.encoder_engine == engine and folder.read_result()["encoder_engine"].split(":")[0] == engine
    # the decoder recipe leaves the image encoder as the base model's: the exported base encoder serves it
    assert frozen_base(run, None) == "litemedsam"
    trains_encoder = tmp_path / "encoder_run"
    shutil.copytree(folder.adapter_dir, trains_encoder / "adapter")
    meta = json.loads((trains_encoder / "adapter/adapter.json").read_text())
    meta["tensors"]["image_encoder.neck.0.weight"] = {"shape": [1], "dtype": "float32", "kind": "parameter"}
    (trains_encoder / "adapter/adapter.json").write_text(json.dumps(meta))
    assert frozen_base(trains_encoder, None) is None
    assert studio.predictor is not zero_shot
    assert studio.open("synth_002").session.predictor is zero_shot  # not switched in the middle of its work
    # pinned: the next fit runs but the studio keeps the pinned adapter
    assert c.post("/api/adapter", json={"adapter": "001", "pin": True}).json()["pinned"]
    first = studio.predictor
    c.post("/api/cases/synth_002/click", json={"point": [20, 20, 6], "space": "voxel", "positive": True})
    assert c.put("/api/cases/synth_002/label").status_code == 200  # the third save: a second fit
    assert studio.open("synth_002").session.predictor is studio.predictor  # saved: the case takes the model in use
    assert loop.wait(600)
    status = c.get("/api/adapter").json()
    assert [a["adapter"] for a in status["adapters"]] == ["001", "002"] and status["adapters"][1]["cases"] == 3
    # warm start: the first fit started from the base model, the second from the adapter in use (001)
    assert [a["from"] for a in status["adapters"]] == [None, "001"]
    assert RunFolder(root / ".medadapt-studio/adapters/002").read_fit_config()["init_adapter"] == str(run)
    assert_starts_from(root / ".medadapt-studio/adapters/002", run)
    assert status["current"] == "001" and studio.predictor is first and studio.adapter == "studio adapter 001"
    # roll forward / back: any finished adapter, or the zero-shot model; bad names are refused
    assert c.post("/api/adapter", json={"adapter": "002"}).json()["current"] == "002"
    assert studio.predictor is not first and studio.adapter == "studio adapter 002"
    assert c.post("/api/adapter", json={"adapter": "999"}).status_code == 400

    # compare: the open case as another adapter shows it, its interactions replayed on that model
    box = {"corner0": [12, 12, 6], "corner1": [32, 30, 6], "space": "voxel", "depth": 1}
    assert c.post("/api/cases/synth_002/box", json=box).status_code == 200  # its session: adapter 001's model
    shown = c.get("/api/cases/synth_002/mask").content
    same = c.get("/api/cases/synth_002/compare", params={"adapter": "001"})
    assert same.status_code == 200, same.text
    assert same.headers["X-Agreement-Dice"] == "1.0000" and volume_of(same.content).tobytes() == volume_of(shown).tobytes()
    other = c.get("/api/cases/synth_002/compare", params={"adapter": "zero-shot"})
    assert other.headers["X-Compare-Adapter"] == "zero-shot"
    expected = studio.compare("synth_002", zero_shot)[0]
    np.testing.assert_array_equal(volume_of(other.content), expected)
    assert not np.array_equal(expected, volume_of(shown))  # the box's mask differs between the two models
    assert float(other.headers["X-Agreement-Dice"]) < 1
    assert c.get("/api/cases/synth_002/mask").content == shown  # the case's own session is unchanged
    assert c.get("/api/cases/synth_002/compare", params={"adapter": "999"}).status_code == 400
    assert c.get("/api/cases/synth_002/compare", params={"adapter": "../001"}).status_code == 422
    assert c.get("/api/cases/nope/compare", params={"adapter": "001"}).status_code == 404
    assert c.post("/api/cases/synth_002/undo").status_code == 200
    assert c.post("/api/adapter", json={"adapter": "../001"}).status_code == 422
    assert c.get("/api/adapter").json()["current"] == "002"

    # a restarted studio resumes the adapter in use
    again, _ = build_studio(root, fit_steps=2, echo=lambda _: None)
    assert again.adapter == "studio adapter 002"
    without = TestClient(create_app(again), base_url=BASE)
    assert without.get("/api/adapter").json()["state"] == "off"
    assert without.get("/api/cases/synth_002/compare", params={"adapter": "001"}).status_code == 404
    c.post("/api/adapter", json={"adapter": None, "pin": True})
    assert studio.adapter is None
    again, loop = build_studio(root, fit_steps=2, echo=lambda _: None)
    assert again.adapter is None and loop.pinned  # zero-shot, pinned


def volume_of(nifti: bytes) -> np.ndarray:
    return np.asarray(nib.Nifti1Image.from_bytes(gzip.decompress(nifti)).dataobj)


def assert_starts_from(run, previous) -> None:
    """The weights a fit's first step starts from (its model after the recipe and the warm start) equal the
    previous adapter's tensors, and differ from the base model's."""
    from safetensors.torch import load_file

    from medadapt.adapt.artifact import adapter_state_dict
    from medadapt.engine.sam_fit import FitOptions, SamFit

    opts = FitOptions.build(RunFolder(run).read_fit_config(required=True))
    start = adapter_state_dict(SamFit(opts).build_model())
    saved = load_file(str(RunFolder(previous).adapter_tensors))
    assert sorted(start) == sorted(saved)
    for name, tensor in saved.items():
        assert torch.equal(start[name], tensor), name
    base = adapter_state_dict(SamFit(opts.model_copy(update={"init_adapter": None})).build_model())
    assert any(not torch.equal(base[n], saved[n]) for n in saved)
    with pytest.raises(MedadaptError, match="recipe 'decoder'"):  # another recipe cannot start from it
        SamFit(opts.model_copy(update={"method": "lora"})).build_model()


@pytest.mark.slow  # an automatic-mode fit, then every slice of a case decoded on opening
def test_an_automatic_mode_adapter_opens_cases_with_its_prediction(tmp_path):
    from medadapt.engine.sam_fit import FitOptions
    from medadapt.pipeline.fit import fit_segment

    root = small_dataset(tmp_path / "data")
    run = tmp_path / "auto_run"
    fit_segment(FitOptions.build({"data": str(root), "out": str(run), "prompt": "auto", "test": 0, "shots": 3,
                                  "max_steps": 2, "progress": False, "encoder_engine": "torch"}), report=False)
    truth = np.asarray(nib.load(root / "labelsTr/synth_002.nii.gz").dataobj)
    (root / "labelsTr/synth_002.nii.gz").unlink()
    studio, loop = build_studio(root, adapter=run, adapt=False, echo=lambda _: None)
    assert loop is None and studio.adapter == str(run)
    c = TestClient(create_app(studio), base_url=BASE)
    info = c.get("/api/cases/synth_002").json()
    assert [(o["object"], o["value"]) for o in info["objects"]] == [(1, 1), (2, 2)]  # one object per class
    start = c.get("/api/cases/synth_002/mask").content
    centre = np.argwhere(truth == 1).mean(0).round().astype(int).tolist()
    r = c.post("/api/cases/synth_002/click", json={"point": centre, "space": "voxel", "positive": True, "value": 1})
    assert r.status_code == 200, r.text
    assert r.json()["objects"][0]["clicks"] == 1 and r.json()["decoded_slices"] == [centre[2]]
    assert c.post("/api/cases/synth_002/undo").status_code == 200
    assert c.get("/api/cases/synth_002/mask").content == start  # undo restarts from the same prediction
    # a labelled case opens with its saved label, not the prediction
    assert c.get("/api/cases/synth_000").json()["objects"] == []


def test_a_fit_stopped_before_its_adapter_was_saved_is_continued_on_restart(tmp_path):
    import shutil

    from safetensors.torch import load_file

    root = small_dataset(tmp_path / "data")
    label = (root / "labelsTr/synth_002.nii.gz").read_bytes()
    (root / "labelsTr/synth_002.nii.gz").unlink()
    _, loop = build_studio(root, fit_steps=2, echo=lambda _: None)
    loop.request()
    assert loop.wait(600) and loop.last["error"] is None
    run = RunFolder(root / ".medadapt-studio/adapters/001")
    finished = load_file(str(run.adapter_tensors))
    # killed after its last checkpoint, before the adapter was saved
    shutil.rmtree(run.adapter_dir)
    run.result_path.unlink()
    assert run.last_checkpoint.is_file() and loop.unfinished() == run.root
    lines = []
    studio, loop = build_studio(root, fit_steps=2, echo=lines.append)
    assert any("continuing the unfinished fit" in line for line in lines), lines
    assert loop.wait(600)
    assert loop.last["error"] is None and loop.last["resumed"] and loop.last["adapter"] == "001", loop.last
    assert [a["adapter"] for a in loop.adapters()] == ["001"]  # no case saved since: no further fit
    resumed = load_file(str(run.adapter_tensors))
    assert sorted(resumed) == sorted(finished)
    assert all(torch.equal(resumed[k], finished[k]) for k in finished)  # the checkpoint's weights
    assert studio.adapter == "studio adapter 001" and loop.current() == run.root
    # killed before its first checkpoint, and a case saved meanwhile: started again in its folder, then a
    # fit of every saved case
    shutil.rmtree(run.adapter_dir)
    shutil.rmtree(run.checkpoint_dir)
    run.result_path.unlink()
    (root / "labelsTr/synth_002.nii.gz").write_bytes(label)
    studio, loop = build_studio(root, fit_steps=2, echo=lambda _: None)
    assert loop.wait(600)
    adapters = loop.adapters()
    assert [(a["adapter"], a["cases"]) for a in adapters] == [("001", 2), ("002", 3)], adapters
    assert loop.last["adapter"] == "002" and not loop.last["resumed"] and adapters[1]["from"] == "001"
    assert studio.adapter == "studio adapter 002"
    # nothing unfinished: a restart starts no fit
    _, loop = build_studio(root, fit_steps=2, echo=lambda _: None)
    assert loop.unfinished() is None and loop.state == "idle"


def test_the_encoder_engine_option(tmp_path):
    from medadapt.deploy.auto import openvino_available
    from medadapt.deploy.backend import base_encoder

    root = small_dataset(tmp_path / "data", n=2)
    studio, _ = build_studio(root, adapt=False, encoder_engine="torch", echo=lambda _: None)
    assert studio.encoder_engine == "torch" and studio.predictor.encoder is None
    c = TestClient(create_app(studio), base_url=BASE)
    assert c.get("/api/studio").json()["encoder_engine"] == "torch"
    with pytest.raises(MedadaptError, match="--encoder-engine 'fast'"):
        build_studio(root, adapt=False, encoder_engine="fast", echo=lambda _: None)
    if not openvino_available():
        return
    lines = []
    studio, loop = build_studio(root, encoder_engine="auto", echo=lines.append)  # as `medadapt fit` chooses
    assert studio.encoder_engine == "openvino" == loop.encoder_engine and "(encoder: openvino)" in lines[-1]
    assert studio.predictor.encoder is not None
    assert studio.predictor.encoder.__self__.fingerprint == base_encoder("litemedsam", "openvino")[0]
    image = studio.open("synth_001").session.volume[6]
    x = studio.predictor.prepare(np.repeat(image[..., None], 3, -1)).tensor[None]
    with torch.no_grad():  # the same embeddings within float32 rounding
        assert torch.allclose(studio.predictor.encoder(x), studio.predictor.model.encode(x), atol=1e-3)


def test_fit_progress_reads_the_runs_own_log(tmp_path):
    assert fit_progress(tmp_path) == {"phase": "preparing", "step": None, "val_dsc": None}
    (tmp_path / "metrics.csv").write_text(
        "step,epoch,split,name,value\n10,0,train,loss,0.9\n20,0,train,loss,0.8\n20,0,val,val_dsc,0.71\n"
        "20,0,val,val_dsc_1,0.75\n30,1,train,loss,0.7\n40,1,tr")  # the last line cut by a concurrent write
    assert fit_progress(tmp_path) == {"phase": "training", "step": 30, "val_dsc": 0.71}
