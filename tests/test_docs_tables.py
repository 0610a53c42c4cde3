"""docs/benchmarks.md and the generated blocks of README.md / docs/*.md equal what bench/tables.py renders
from bench/results/*.json, so no result in the documentation is typed by hand or left stale."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import provenance  # noqa: E402
import tables  # noqa: E402


@pytest.fixture(scope="module")
def generated() -> dict[Path, str]:
    return tables.generated()


def test_generated_files_match_the_results(generated):
    stale = [str(p.relative_to(ROOT)) for p, text in generated.items() if p.read_text() != text]
    assert not stale, f"{stale} differ from bench/results/*.json: run .venv/bin/python bench/tables.py"


def test_readme_headline_block_is_short_and_links_to_full_tables(generated):
    block = generated[tables.README].split("<!-- results:begin -->")[1].split("<!-- results:end -->")[0]
    rows = [line for line in block.splitlines() if line.startswith("| ") and "docs/benchmarks.md#" in line]
    assert 1 <= len(rows) <= 12
    anchors = {line.split("docs/benchmarks.md#")[1].split(")")[0] for line in rows}
    bench_md = generated[tables.BENCHMARKS_MD]
    assert all(f'<a id="{a}"></a>' in bench_md for a in anchors)


def test_check_fails_when_a_generated_file_differs(tmp_path, monkeypatch):
    readme = tmp_path / "README.md"
    text = tables.README.read_text()
    readme.write_text(text.replace("<!-- results:end -->", "| typed by hand | 0.999 | |\n<!-- results:end -->"))
    monkeypatch.setattr(tables, "README", readme)
    monkeypatch.setattr(tables, "recipes_block", lambda: tables.RECIPES_MD.read_text().split(
        "<!-- recipes:begin -->\n")[1].split("\n<!-- recipes:end -->")[0])
    for path in (tables.BENCHMARKS_MD, tables.DEPLOY_MD, tables.RECIPES_MD):  # the others stay untouched
        copy = tmp_path / path.name
        shutil.copy(path, copy)
        monkeypatch.setattr(tables, {tables.BENCHMARKS_MD: "BENCHMARKS_MD", tables.DEPLOY_MD: "DEPLOY_MD",
                                     tables.RECIPES_MD: "RECIPES_MD"}[path], copy)
    assert tables.main(["--check"]) == 1
    assert "typed by hand" in readme.read_text()  # --check changes nothing
    assert tables.main([]) == 0
    assert "typed by hand" not in readme.read_text()
    assert tables.main(["--check"]) == 0


def _results_copy(tmp_path: Path, monkeypatch) -> Path:
    res = tmp_path / "results"
    res.mkdir()
    shutil.copy(tables.RESULTS / "fewshot_hippocampus.json", res)
    monkeypatch.setattr(tables, "RESULTS", res)
    return res


def test_selection_uses_validation_and_says_pending_without_the_full_test_run(tmp_path, monkeypatch):
    _results_copy(tmp_path, monkeypatch)
    data = tables.load("fewshot_hippocampus.json")
    best = tables.selected_recipe(data)
    # recomputed here: the highest mean best_val_dsc among single-model auto k=5 groups
    means: dict[str, list[float]] = {}
    for key, run in data["runs"].items():
        method, prompt, k = (key.split("/") + ["", "", ""])[:3]
        if prompt == "auto" and k == "k5" and "members" not in run and run.get("best_val_dsc") is not None:
            means.setdefault(method, []).append(run["best_val_dsc"])
    assert best["recipe"] == max(means, key=lambda m: sum(means[m]) / len(means[m]))
    text = tables.selection_section(data)
    assert "Pending" in text and best["recipe"] in text


def test_selection_renders_the_full_test_run_when_present(tmp_path, monkeypatch):
    res = _results_copy(tmp_path, monkeypatch)
    data = tables.load("fewshot_hippocampus.json")
    best = tables.selected_recipe(data)["recipe"]
    test = [f"case_{i:03d}" for i in range(20)]
    for seed, dsc in ((0, 0.5), (1, 0.7)):
        run = {"dsc": dsc, "nsd": 0.9, "hd95": 2.0, "max_steps": 300, "fit_wall_seconds": 10.0, "threads": 1,
               "best_val_dsc": 0.7, "trainable_params": 10, "adapter_bytes": 2048}
        (res / f"fewshot_hippocampus_test20_s{seed}.json").write_text(json.dumps(
            {"test_cases": test, "runs": {f"{best}/auto/k5/s{seed}": run}}))
    text = tables.selection_section(data)
    assert "Pending" not in text
    assert "held-out cases: 20" in text and "0.600 ± 0.141" in text
    headline = dict((a, v) for _, v, a in tables.headlines())["selection"]
    assert "0.600 ± 0.141 on 20 test volumes (2 seeds of 3)" in headline
    (res / "fewshot_hippocampus_test20_s2.json").write_text(json.dumps(
        {"test_cases": test, "runs": {f"{best}/auto/k5/s2": {**run, "dsc": 0.6}}}))
    headline = dict((a, v) for _, v, a in tables.headlines())["selection"]
    assert "0.600 ± 0.100 on 20 test volumes (3 seeds)" in headline


def test_conditions_show_only_what_the_json_holds():
    line = tables.conditions("x.json", {"machine": {"cpu_count": 2, "torch_threads": 2,
                                                   "load_avg_start": [0.5, 0, 0]}})
    assert "CPUs 2" in line and "threads 2" in line and "at start 0.50" in line
    assert "at end not recorded" in line and "CPU model not recorded" in line and "code commit not recorded" in line


def test_provenance_records_start_and_end():
    rec = provenance.finish(provenance.start(resumed=True))
    assert set(provenance.FIELDS) <= set(rec)
    assert rec["resumed"] is True and rec["source"] == "recorded"
    assert len(rec["load_avg_start"]) == 3 and len(rec["load_avg_end"]) == 3
    assert rec["utc_start"] <= rec["utc_end"] and rec["python"]


def test_every_result_file_has_a_provenance_block():
    for path in sorted(tables.RESULTS.glob("*.json")):
        prov = json.loads(path.read_text()).get("provenance")
        assert prov and prov["source"] in ("recorded", "git history", "not recorded"), path.name
        assert set(provenance.FIELDS) <= set(prov), path.name


def test_nnunet_section_renders_each_result_file(tmp_path, monkeypatch):
    res = tmp_path / "results"
    res.mkdir()
    monkeypatch.setattr(tables, "RESULTS", res)
    assert "Not measured yet" in tables.nnunet_section()
    run = {"trainer": "nnUNetTrainer_10epochs", "epochs": 10, "iterations_per_epoch": 250, "dsc": 0.8125,
           "dsc_per_class": {"1": 0.8, "2": 0.825}, "nsd": 0.9, "hd95": 2.5, "threads": 1, "scored_cases": 20,
           "stage_seconds": {"raw": 1.0, "plan_and_preprocess": 30.0, "train": 3600.0, "predict": 120.0, "score": 2.0},
           "provenance": provenance.finish(provenance.start())}
    (res / "nnunet_tiny.json").write_text(json.dumps({
        "dataset": "Tiny", "class_names": {"1": "front", "2": "back"}, "provenance": run["provenance"],
        "runs": {"nnunet:nnUNetTrainer_10epochs/k5/s0": run}}))
    text = tables.nnunet_section()
    assert "Not measured yet" not in text and "### Tiny" in text
    row = next(line for line in text.splitlines() if "nnunet:nnUNetTrainer_10epochs/k5/s0" in line)
    assert "| 10 × 250 | 0.812 | 0.800 | 0.825 | 0.900 | 2.50 | 3600 | 30 | 120 | 1 | 20 |" in row
    assert "threads per run: 1 (1 runs)" in text


def test_studio_loop_table_from_its_json(tmp_path, monkeypatch):
    res = _results_copy(tmp_path, monkeypatch)
    assert "Not measured yet" in tables.studio_loop_section()

    def row(case, clicks, dsc, reached, fit=None):
        r = {"case": case, "clicks": clicks, "seconds": 1.5, "dsc": {"1": dsc, "2": dsc}, "reached": reached}
        return r if fit is None else {**r, "fit_seconds": fit, "fit_cpu_seconds": 2 * fit}

    data = {"data": "hippocampus", "cases": ["a", "b"], "steps": 5, "target_dsc": 0.9, "max_clicks": 10,
            "modes": {"adapt": [row(1, 6, 0.92, True, 10.0), row(2, 2, 0.95, True, 12.0)],
                      "fixed": [row(1, 6, 0.92, True), row(2, 7, 0.91, True)]}}
    (res / "studio_loop.json").write_text(json.dumps(data))
    text = tables.studio_loop_section()
    assert "| 2 | 2 | 0.950 | 1.5 | 12 | 24 | 7 | 0.910 | 1.5 |" in text
    assert "adapted: 8 clicks in 2 cases, mean DSC of cases 2–2 0.950, in-loop fits 22 s wall, 44 s CPU" in text
    assert "No case reached" not in text
    for r in data["modes"]["adapt"] + data["modes"]["fixed"]:
        r.update(clicks=20, reached=False)
    (res / "studio_loop.json").write_text(json.dumps(data))
    assert "20 (not reached)" in tables.studio_loop_section() and "No case reached" in tables.studio_loop_section()


def test_click_seed_table_averages_only_rows_that_differ_by_the_seed():
    def run(config, auc, objects=5):
        return {"config": config, "objects": objects, "dsc_per_interaction": [0.5, auc / 4], "dsc_auc": auc,
                "nsd_auc": auc, "median_clicks_to_target": 1, "target": 0.9}

    runs = [run("zero-shot", 1.0), run("decoder-box/k5/s0/w0.25", 2.0), run("decoder-box/k5/s1/w0.25", 3.0),
            run("decoder-click/k5/s0", 2.5), run("decoder-click/k5/s1", 2.5, objects=7)]
    table = tables._click_seed_table(runs)
    rows = table.splitlines()[2:]
    assert len(rows) == 1 and rows[0].startswith("| decoder-box/k5/w0.25 | 2 | 5 |")  # other objects: not pooled
    assert "2.500 ± 0.707" in rows[0]
    assert tables._click_seed_table(runs[:2]) is None
