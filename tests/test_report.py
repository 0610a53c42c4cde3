"""Run reports and comparisons, on run folders built in tmp_path (synthetic NIfTI volumes, fake logs).

The builders below are also used by ``test_report_browser.py``.
"""

from __future__ import annotations

import base64
import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from medadapt.errors import MedadaptError
from medadapt.report import read_run, write_comparison, write_report
from medadapt.report.overlays import case_figure, pick_slices

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------- fixture builders


def make_dataset(root: Path, n_cases: int = 6) -> Path:
    from medadapt.data.synthetic import make_synthetic_dataset

    return make_synthetic_dataset(root / "data", n_cases=n_cases)


def _perturb(label: np.ndarray, i: int) -> np.ndarray:
    """Predictions of graded quality: case i is shifted by i voxels (0: exact), odd cases lose class 2."""
    seg = np.roll(label, shift=i, axis=0)
    if i % 2:
        seg = np.where(seg == 2, 0, seg)
    return seg.astype(np.uint8)


def _scores(label: np.ndarray, seg: np.ndarray, c: int) -> dict:
    """Exact DSC; NSD and HD95 faked from it (the real metrics are tested in test_metrics_*)."""
    g, s = label == c, seg == c
    if not g.any() and not s.any():
        return {"class": c, "dsc": float("nan"), "nsd": float("nan"), "hd95": float("nan")}
    dsc = 2 * float((g & s).sum()) / float(g.sum() + s.sum())
    hd95 = float("inf") if g.any() != s.any() else round(20 * (1 - dsc), 3)
    return {"class": c, "dsc": dsc, "nsd": min(1.0, dsc + 0.05), "hd95": hd95}


def write_evaluation(out: Path, data: Path, keys: list[str], *, save_pred: bool = True,
                     settings: dict | None = None, worse: int = 0) -> dict[str, np.ndarray]:
    """per_case.csv + summary.json (DSC of the perturbed predictions) and pred/*.nii.gz.

    Case ``i`` is predicted with error level ``i + worse``.
    """
    from medadapt.data.datasets import load_segmentation_dataset
    from medadapt.evaluate.summary import summarize, write_per_case_csv, write_summary_json
    from medadapt.io.volumes import read_volume, write_like

    ds = load_segmentation_dataset(data)
    rows, preds = [], {}
    for i, key in enumerate(keys):
        ref = ds.case(key)
        _, label, _, _ = ds.load(ref)
        seg = _perturb(np.asarray(label), i + worse)
        preds[key] = seg
        rows += [{"case": key, **_scores(label, seg, c)} for c in (1, 2)]
        if save_pred:
            write_like(out / "pred" / ref.image.name, seg, read_volume(ref.image))
    summary = summarize(rows, n_boot=200)
    summary["settings"] = {"data": str(data), "adapter": None, "model": "litemedsam", "prompt": "box",
                           "tolerance_mm": 2.0, **(settings or {})}
    write_per_case_csv(out / "per_case.csv", rows)
    write_summary_json(out / "summary.json", summary)
    return preds


def write_fit(run: Path, data: Path, *, method: str = "lora", shots: int = 2, seed: int = 0,
              steps: int = 60, final_dsc: float = 0.8) -> None:
    """The files `medadapt fit` writes, with a fake learning curve."""
    from medadapt.data.datasets import load_segmentation_dataset
    from medadapt.data.fewshot import make_split, save_split
    from medadapt.io.atomic import write_json

    ds = load_segmentation_dataset(data)
    split = make_split(ds, shots=shots, seed=seed, n_val=1)
    save_split(run / "split.json", split)
    write_json(run / "fit_config.json", {"data": str(data), "out": str(run), "model": "litemedsam",
                                         "method": method, "prompt": "box", "shots": shots, "seed": seed,
                                         "lr": 1e-4, "max_steps": steps})
    lines = ["step,epoch,split,name,value"]
    for step in range(1, steps + 1):
        lines.append(f"{step},{step // 20},train,loss,{0.9 * np.exp(-step / 25) + 0.05 * np.sin(step):.5f}")
        lines.append(f"{step},{step // 20},train,lr,{1e-4 * (1 - step / steps):.3e}")
        if step % 10 == 0:
            lines.append(f"{step},{step // 20},val,val_dsc,{final_dsc * (1 - np.exp(-step / 15)):.5f}")
    lines.append("61,3,tra")  # a torn last line, as a killed run leaves
    (run / "metrics.csv").write_text("\n".join(lines) + "\n")
    write_json(run / "result.json", {
        "model": "litemedsam", "method": method, "prompt": "box", "shots": shots, "fraction": None, "seed": seed,
        "classes": [1, 2], "train_cases": list(split.train), "val_cases": list(split.val),
        "trainable_params": 12_345, "total_params": 9_800_000, "adapter_bytes": 51_000, "fit_seconds": 83.2,
        "best_metric": final_dsc, "best_step": steps, "monitor": "val_dsc", "steps": steps, "epochs_run": 3,
        "peak_rss_mb": 2048.0, "peak_gpu_mb": None, "stopped_early": False,
    })
    write_json(run / "adapter" / "adapter.json", {
        "format": "medadapt.adapter", "format_version": 1, "recipe": {"name": method, "lora_rank": 4},
        "base": {"model": "litemedsam"}, "params": {"trainable": 12_345, "total": 9_800_000}})


def make_run(root: Path, name: str = "run", *, data: Path | None = None, evaluate: bool = True,
             save_pred: bool = True, worse: int = 0, **fit) -> Path:
    """A fit run folder with an evaluation in RUN/eval (test and validation cases of its split)."""
    data = data or (root / "data" if (root / "data" / "dataset.json").is_file() else make_dataset(root))
    run = root / name
    run.mkdir(parents=True)
    write_fit(run, data, **fit)
    if evaluate:
        test = json.loads((run / "split.json").read_text())["test"]
        keys = test + json.loads((run / "split.json").read_text())["val"]  # a few more cases to rank
        write_evaluation(run / "eval", data, keys, save_pred=save_pred, settings={"adapter": str(run)},
                         worse=worse)
    return run


def images_in(html: str) -> list[bytes]:
    """Decoded PNGs of every ``<img src="data:image/png;base64,...">``."""
    return [base64.b64decode(b) for b in re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)]


# --------------------------------------------------------------------------- tests


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("report_data"))



def test_full_run_report(tmp_path, data):
    run = make_run(tmp_path, data=data)
    page = write_report(run)
    assert page == run / "report" / "index.html"
    html = page.read_text()
    assert "http://" not in html and "https://" not in html and "<script" not in html  # offline, no JS
    imgs = images_in(html)
    assert imgs and all(b.startswith(PNG_MAGIC) for b in imgs)
    files = sorted(p.name for p in (run / "report").glob("*.png"))
    assert "learning_curves.png" in files and "eval_scores.png" in files
    overlays = [f for f in files if "_overlay_" in f]
    assert len(overlays) == len(read_run(run).primary.case_table())  # 3 cases ≤ 2 × 3: all shown
    assert len(imgs) == len(files)  # every written PNG is embedded, nothing else
    for section in ("Summary", "Metrics per class", "Learning curves", "Per-case scores", "Overlays",
                    "Data split", "Configuration"):
        assert f">{section}</h2>" in html
    assert "bright_structure" in html  # class names from dataset.json
    # per-case table: worst first, i.e. DSC means ascending
    cases = read_run(run).primary.case_table()
    means = [c["mean"]["dsc"] for c in cases]
    assert means == sorted(means)
    order = [html.index(f">{c['case']}</a>") for c in cases]
    assert order == sorted(order)
    summary = json.loads((run / "eval" / "summary.json").read_text())
    ci = summary["per_class"]["1"]["dsc"]["ci95"]
    assert f"[{ci[0]:.3f}, {ci[1]:.3f}]" in html


def test_report_into_a_folder_keeps_other_files(tmp_path, data):
    """A later report removes the PNGs an earlier one wrote there, never the user's own."""
    run = make_run(tmp_path, data=data, save_pred=False)
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.png").write_bytes(b"user file")
    write_report(run, out)
    assert (out / "eval_scores.png").is_file()
    (run / "eval" / "per_case.csv").unlink()  # no rows any more: no score plot
    write_report(run, out)
    assert not (out / "eval_scores.png").exists()
    assert (out / "mine.png").read_bytes() == b"user file"


def test_missing_pieces_are_notes_not_errors(tmp_path):
    run = make_run(tmp_path, evaluate=False)
    html = write_report(run, n_cases=1).read_text()
    assert "Not evaluated yet" in html and ">Learning curves</h2>" in html and ">Overlays</h2>" not in html

    run2 = make_run(tmp_path, "nopred", save_pred=False)
    html = write_report(run2, n_cases=1).read_text()
    assert "--save-predictions" in html and ">Per-case scores</h2>" in html and ">Overlays</h2>" not in html

    # a zero-shot evaluation folder on its own; its dataset has moved away: overlays skipped with a note
    zs = tmp_path / "zeroshot"
    write_evaluation(zs, tmp_path / "data", ["synth_000", "synth_001"])
    html = write_report(zs, n_cases=1).read_text()
    assert "zero-shot" in html and ">Overlays</h2>" in html
    (tmp_path / "data").rename(tmp_path / "moved")
    html = write_report(zs, n_cases=1).read_text()
    assert ">Overlays</h2>" not in html and "could not be opened" in html
    assert not list((zs / "report").glob("*_overlay_*.png"))  # stale overlays of the earlier report removed


def test_evaluation_without_summary_is_summarised(tmp_path, data):
    ev = tmp_path / "ev"
    write_evaluation(ev, data, ["synth_000", "synth_001", "synth_002"], save_pred=False)
    (ev / "summary.json").unlink()
    run = read_run(ev)
    assert run.primary.summary["n_cases"] == 3
    assert "recomputed" in " ".join(run.notes)


def test_linked_fit_from_evaluation_settings(tmp_path, data):
    run = make_run(tmp_path, data=data, save_pred=False)
    ev = tmp_path / "elsewhere"
    (run / "eval").rename(ev)
    rec = read_run(ev)
    assert rec.fit_source == run and rec.result["method"] == "lora"
    assert "Training details from" in write_report(ev, n_cases=1).read_text()


def test_bad_inputs_raise_user_errors(tmp_path):
    with pytest.raises(MedadaptError, match="does not exist"):
        write_report(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MedadaptError, match="holds no run files"):
        write_report(tmp_path / "empty")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "result.json").write_text("{not json")
    with pytest.raises(MedadaptError, match="result.json"):
        write_report(bad)
    assert not (bad / "report" / "index.html").exists()


def test_overlay_slices_cover_structures_and_errors():
    label = np.zeros((20, 20, 10), np.uint8)
    label[5:10, 5:10, 3:7] = 1
    pred = np.zeros_like(label)
    pred[5:10, 5:10, 4:9] = 1
    idx = pick_slices(label, pred, axis=2, n=3)
    assert idx and all(3 <= i <= 8 for i in idx) and len(set(idx)) == len(idx)
    assert pick_slices(np.zeros_like(label), np.zeros_like(label), axis=2) == [5]
    png = case_figure(np.zeros(label.shape, np.uint8), label, pred, slice_axis=2, spacing=(1, 1, 3), title="t")
    assert png.startswith(PNG_MAGIC)
    with pytest.raises(MedadaptError, match="shape"):
        case_figure(np.zeros((5, 5, 5), np.uint8), label, pred, slice_axis=2)


def test_overlay_colours_mark_missed_and_extra():
    from medadapt.report.overlays import EXTRA, MISSED, errors

    base = np.zeros((4, 4, 3), np.float32)
    label = np.zeros((4, 4), np.uint8)
    pred = np.zeros((4, 4), np.uint8)
    label[0, 0] = 1  # missed
    pred[3, 3] = 2  # extra
    label[1, 1] = pred[1, 1] = 1  # correct
    out = errors(base, label, pred, alpha=1.0)
    assert tuple(out[0, 0]) == MISSED and tuple(out[3, 3]) == EXTRA and tuple(out[1, 1]) == (0, 0, 0)


def test_comparison_page_and_json(tmp_path, data):
    runs = [make_run(tmp_path, f"{m}_k{k}_s{s}", data=data, method=m, shots=k, seed=s, final_dsc=0.5 + 0.1 * k,
                     worse=2 * (2 - k) + (m == "decoder") + s)
            for m in ("lora", "decoder") for k in (1, 2) for s in (0, 1)]
    out = tmp_path / "cmp"
    page = write_comparison(runs, out)
    html = page.read_text()
    assert page == out / "index.html"
    for name in ("dsc_by_run.png", "nsd_by_run.png", "dsc_vs_shots.png"):
        assert (out / name).read_bytes().startswith(PNG_MAGIC)
    assert len(images_in(html)) == 3
    assert ">Method × k</h2>" in html and "k = 2" in html and "(n=2)" in html
    data = json.loads((out / "comparison.json").read_text())
    assert [r["name"] for r in data["runs"]] == [r.name for r in runs]
    # the table shows each run's own overall DSC with its CI
    s = json.loads((runs[0] / "eval" / "summary.json").read_text())["overall"]["dsc"]
    assert f"{s['mean']:.3f}" in html and f"[{s['ci95'][0]:.3f}, {s['ci95'][1]:.3f}]" in html
    # repeating with the comparison folder among the runs skips it
    page2 = write_comparison([*runs[:2], out], out)
    assert "holds a comparison, not a run" in page2.read_text()


def test_cli_report(tmp_path, data):
    from typer import Typer

    from medadapt.cli.report_cmd import report

    app = Typer()
    app.command()(report)
    app.command("noop")(lambda: None)  # two commands: typer keeps the sub-command name
    run = make_run(tmp_path, data=data, evaluate=False)
    res = CliRunner().invoke(app, ["report", str(run)])
    assert res.exit_code == 0, res.output
    assert (run / "report" / "index.html").is_file()
    other = make_run(tmp_path, "other", data=data, evaluate=False)
    res = CliRunner().invoke(app, ["report", str(run), str(other)])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "comparison" / "index.html").is_file()
    res = CliRunner().invoke(app, ["report", str(tmp_path / "missing")])
    assert res.exit_code == 2 and "does not exist" in res.output


def test_per_case_csv_values_parse(tmp_path):
    from medadapt.report.run import read_per_case_csv

    p = tmp_path / "per_case.csv"
    with p.open("w", newline="") as f:
        csv.writer(f).writerows([["case", "class", "dsc", "nsd", "hd95"], ["a", "1", "0.5", "", "inf"]])
    (row,) = read_per_case_csv(p)
    assert row["dsc"] == 0.5 and np.isnan(row["nsd"]) and np.isinf(row["hd95"])
    p.write_text("case,class,dsc\na,1,abc\n")
    with pytest.raises(MedadaptError, match="not a number"):
        read_per_case_csv(p)
