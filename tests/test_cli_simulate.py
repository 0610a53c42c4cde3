"""`medadapt simulate`: the interactive protocol end to end on real prostate slices, and bad options."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from typer.testing import CliRunner

from medadapt.cli.main import app
from medadapt.data.clicks import load_clicks

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def test_simulate_writes_curves_aucs_and_click_files(data_dir: Path, tmp_path: Path):
    out, clicks = tmp_path / "sim", tmp_path / "clicks"
    res = invoke("simulate", "--data", data_dir / "prostate_mri_2d", "--out", out, "--clicks", 2, "--cases", 1,
                 "--clicks-out", clicks, "--bootstrap", 0)
    assert res.exit_code == 0, res.output
    with open(out / "per_case.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1 and list(rows[0])[:5] == ["case", "class", "dsc", "nsd", "hd95"]
    row = rows[0]
    for key in ("dsc_0", "dsc_1", "dsc_2", "nsd_2", "dsc_auc", "nsd_auc", "dsc_final"):
        assert key in row
    dsc = [float(row[f"dsc_{k}"]) for k in range(3)]
    assert float(row["dsc"]) == float(row["dsc_final"]) == dsc[-1]
    assert abs(float(row["dsc_auc"]) - (dsc[1] + dsc[2]) / 2) < 1e-12  # trapezoid over the 2 clicks
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["seconds_per_interaction"]) == 3 and summary["settings"]["clicks"] == 2
    assert summary["settings"]["resize"] == "bilinear"  # a zero-shot model's default
    assert summary["overall"]["dsc_auc"]["mean"] == float(row["dsc_auc"])
    record = load_clicks(clicks / f"{row['case']}.json")
    assert len(record.objects) == 1 and len(record.objects[0].clicks) <= 2


def test_simulate_on_an_exported_decoder(data_dir: Path, tmp_path: Path, monkeypatch):
    """`--engine onnxruntime`: the model is exported once into the cache and the protocol runs on it; the fp32
    graphs give torch's result, the int8 decoder a close one; the summary records engine and decoder."""
    monkeypatch.setenv("MEDADAPT_CACHE", str(tmp_path / "cache"))
    data = data_dir / "prostate_mri_2d"
    dsc = {}
    for name, args in (("torch", ()), ("ort", ("--engine", "onnxruntime")),
                       ("int8", ("--engine", "onnxruntime", "--decoder-precision", "int8"))):
        out = tmp_path / name
        res = invoke("simulate", "--data", data, "--out", out, "--clicks", 2, "--cases", 1, "--bootstrap", 0, *args)
        assert res.exit_code == 0, res.output
        summary = json.loads((out / "summary.json").read_text())
        dsc[name] = [summary["overall"][f"dsc_{k}"]["mean"] for k in range(3)]
        assert summary["settings"]["engine"] == (args[1] if args else "torch")
        assert summary["settings"]["decoder_precision"] == ("int8" if name == "int8" else "fp32")
    assert len(list((tmp_path / "cache" / "exports").iterdir())) == 1  # one export, both decoders in it
    assert max(abs(a - b) for a, b in zip(dsc["ort"], dsc["torch"], strict=True)) < 2e-3
    assert max(abs(a - b) for a, b in zip(dsc["int8"], dsc["torch"], strict=True)) < 0.03


def test_simulate_bad_options_exit_2_and_write_nothing(data_dir: Path, tmp_path: Path):
    out = tmp_path / "sim"
    for args, needle in ((("--start", "bogus"), "--start 'bogus'"), (("--plane", "xy"), "--plane 'xy'"),
                         (("--start", "auto"), "--prompt auto"), (("--cases-from", "train"), "--cases-from 'train'"),
                         (("--resize", "nearest"), "--resize 'nearest'"), (("--click-window", "0"), "click_window"),
                         (("--roi-margin", "-1"), "--roi-margin must be 0 or more"),
                         (("--engine", "tensorrt"), "--engine 'tensorrt'"),
                         (("--decoder-precision", "int8"), "--engine torch has no --decoder-precision int8"),
                         (("--engine", "openvino", "--decoder-precision", "int8"), "no --decoder-precision int8")):
        res = invoke("simulate", "--data", data_dir / "prostate_mri_2d", "--out", out, "--cases", 1, *args)
        assert res.exit_code == 2 and needle in res.output, res.output
        assert not out.exists()


def test_replay_gives_the_simulated_result_and_refuses_bad_click_files(data_dir: Path, tmp_path: Path):
    data = data_dir / "prostate_mri_2d"
    sim, clicks, rep = tmp_path / "sim", tmp_path / "clicks", tmp_path / "rep"
    assert invoke("simulate", "--data", data, "--out", sim, "--clicks", 1, "--cases", 1, "--clicks-out", clicks,
                  "--bootstrap", 0).exit_code == 0
    res = invoke("simulate", "--data", data, "--out", rep, "--cases", 1, "--replay", clicks, "--bootstrap", 0)
    assert res.exit_code == 0, res.output
    with open(sim / "per_case.csv") as f, open(rep / "per_case.csv") as g:
        simulated, replayed = next(csv.DictReader(f)), next(csv.DictReader(g))
    assert replayed["dsc"] == simulated["dsc"] and replayed["nsd"] == simulated["nsd"]
    res = invoke("simulate", "--data", data, "--out", tmp_path / "zoom", "--cases", 1, "--replay", clicks,
                 "--roi-margin", 0.5)  # made on whole slices: a zoom-in model would decode other inputs
    assert res.exit_code == 2 and "recorded with whole slices" in res.output and not (tmp_path / "zoom").exists()
    (file,) = clicks.iterdir()
    raw = json.loads(file.read_text())
    for change, needle in (({"sha256": "0" * 64}, "another image"), ({"shape": [10, 10]}, "shape"),
                           ({"objects": [{**raw["objects"][0], "clicks": [{"x": float("nan"), "y": 3}]}]}, "finite"),
                           ({"objects": [{**raw["objects"][0], "clicks": [{"x": 5000, "y": 3}]}]}, "outside")):
        file.write_text(json.dumps({**raw, **change}))
        out = tmp_path / "bad"
        res = invoke("simulate", "--data", data, "--out", out, "--cases", 1, "--replay", clicks)
        assert res.exit_code == 2 and needle in res.output, res.output
        assert not out.exists()


def test_simulate_on_validation_cases_records_them_and_the_click_reach(data_dir: Path, tmp_path: Path):
    from medadapt.data.datasets import load_segmentation_dataset
    from medadapt.data.fewshot import Split, make_split, save_split

    data = data_dir / "prostate_mri_2d"
    # the dataset's own split has no validation cases: a clear error, nothing written
    res = invoke("simulate", "--data", data, "--out", tmp_path / "none", "--cases-from", "val")
    assert res.exit_code == 2 and "no val cases" in res.output and not (tmp_path / "none").exists()
    given = make_split(load_segmentation_dataset(data), shots=1, seed=0)
    split = Split(given.train, given.test[:1], given.test[1:], {})  # one held-out slice as validation
    save_split(tmp_path / "split.json", split)
    out = tmp_path / "sim"
    res = invoke("simulate", "--data", data, "--out", out, "--split", tmp_path / "split.json", "--clicks", 1,
                 "--cases-from", "val", "--click-reach", 2, "--bootstrap", 0)
    assert res.exit_code == 0, res.output
    settings = json.loads((out / "summary.json").read_text())["settings"]
    assert settings["cases_from"] == "val" and settings["cases"] == list(split.val)
    assert settings["click_reach"] == 2


def test_simulate_an_ensemble_starts_from_it_and_refuses_boxes(data_dir: Path, tmp_path: Path):
    data = data_dir / "prostate_mri_2d"
    runs = []
    for seed in (0, 1):
        run = tmp_path / f"auto{seed}"
        res = invoke("fit", "--data", data, "--out", run, "--shots", 1, "--seed", seed, "--max-steps", 2,
                     "--batch-size", 1, "--method", "decoder", "--prompt", "auto", "--no-progress", "--threads", 1)
        assert res.exit_code == 0, res.output
        runs += ["--adapter", run]
    out = tmp_path / "sim"
    res = invoke("simulate", "--data", data, "--out", out, *runs, "--start", "auto", "--clicks", 1, "--cases", 1,
                 "--bootstrap", 0)
    assert res.exit_code == 0, res.output
    settings = json.loads((out / "summary.json").read_text())["settings"]
    assert settings["adapter"] is None and settings["start"] == "auto"  # recorded as `evaluate` records an ensemble
    assert settings["ensemble"] == [str(tmp_path / "auto0"), str(tmp_path / "auto1")]
    res = invoke("simulate", "--data", data, "--out", tmp_path / "boxes", *runs, "--cases", 1)
    assert res.exit_code == 2 and "without prompts" in res.output and not (tmp_path / "boxes").exists()
