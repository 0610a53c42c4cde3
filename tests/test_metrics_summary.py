"""Summary statistics, bootstrap CIs and the per-case CSV / summary JSON files."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest

from medadapt.errors import MedadaptError
from medadapt.evaluate.summary import summarize, write_per_case_csv, write_summary_json


def _rows(n_cases=30, seed=1):
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_cases):
        for c in (1, 2):
            d = float(rng.beta(8, 2))
            rows.append(
                {"case": f"c{i:02d}", "class": c, "dsc": d, "nsd": min(1.0, d + 0.05), "hd95": 10 * (1 - d)}
            )
    return rows


def test_stats_and_ci_contain_mean():
    rows = _rows()
    s = summarize(rows)
    assert s["n_cases"] == 30 and list(s["per_class"]) == ["1", "2"]
    for block in [*s["per_class"].values(), s["overall"]]:
        for m in ("dsc", "nsd", "hd95"):
            st = block[m]
            assert st["n"] == 30 and st["n_nan"] == 0 == st["n_inf"]
            lo, hi = st["ci95"]
            assert lo < st["mean"] < hi
            assert hi - lo < 4 * st["std"]
    dsc1 = [r["dsc"] for r in rows if r["class"] == 1]
    assert s["per_class"]["1"]["dsc"]["mean"] == pytest.approx(np.mean(dsc1))
    assert s["per_class"]["1"]["dsc"]["std"] == pytest.approx(np.std(dsc1, ddof=1))
    assert s["per_class"]["1"]["dsc"]["median"] == pytest.approx(np.median(dsc1))
    per_case = [
        np.mean([r["dsc"] for r in rows if r["case"] == c]) for c in sorted({r["case"] for r in rows})
    ]
    assert s["overall"]["dsc"]["mean"] == pytest.approx(np.mean(per_case))


def test_bootstrap_deterministic_with_seed():
    rows = _rows()
    a, b = summarize(rows, seed=7), summarize(rows, seed=7)
    assert a == b
    assert summarize(rows, seed=8)["overall"]["dsc"]["ci95"] != a["overall"]["dsc"]["ci95"]
    # independent of which metrics are asked for, and in which order
    assert summarize(rows, metrics=("hd95", "dsc"), seed=7)["overall"]["dsc"] == a["overall"]["dsc"]


def test_nan_and_inf_are_counted_not_averaged():
    rows = [
        {"case": "a", "class": 1, "dsc": 0.8, "nsd": 0.9, "hd95": 2.0},
        {"case": "a", "class": 2, "dsc": 0.0, "nsd": 0.0, "hd95": math.inf},  # missed structure
        {"case": "b", "class": 1, "dsc": 0.6, "nsd": 0.7, "hd95": 4.0},
        {"case": "b", "class": 2, "dsc": math.nan, "nsd": math.nan, "hd95": math.nan},  # empty in both
    ]
    s = summarize(rows, n_boot=200)
    h2 = s["per_class"]["2"]["hd95"]
    assert (h2["n"], h2["n_inf"], h2["n_nan"]) == (0, 1, 1) and math.isnan(h2["mean"])
    assert s["per_class"]["2"]["dsc"]["mean"] == 0.0 and s["per_class"]["2"]["dsc"]["n_nan"] == 1
    h = s["overall"]["hd95"]  # case a is inf (a class missed), case b is 4.0 (its NaN class skipped)
    assert (h["n"], h["n_inf"], h["n_nan"], h["mean"]) == (1, 1, 0, 4.0)
    assert math.isnan(h["std"]) and h["ci95"] == [4.0, 4.0]
    assert s["overall"]["dsc"]["mean"] == pytest.approx((0.4 + 0.6) / 2)


def test_summary_rejects_rows_without_case():
    with pytest.raises(MedadaptError):
        summarize([{"class": 1, "dsc": 1.0, "nsd": 1.0, "hd95": 0.0}])
    with pytest.raises(MedadaptError):
        summarize([{"case": "a", "class": 1, "dsc": 1.0}])


def test_csv_header_and_values(tmp_path):
    rows = [
        {"case": "a", "class": 1, "dsc": 0.5, "nsd": 0.25, "hd95": math.inf, "time_s": 1.5},
        {"case": "b", "class": 2, "hd95": 3.0, "nsd": math.nan, "dsc": 1 / 3},
    ]
    path = tmp_path / "out" / "per_case.csv"
    write_per_case_csv(path, rows)
    lines = path.read_text().splitlines()
    assert lines[0] == "case,class,dsc,nsd,hd95,time_s"
    back = list(csv.DictReader(lines))
    assert float(back[0]["hd95"]) == math.inf and math.isnan(float(back[1]["nsd"]))
    assert float(back[1]["dsc"]) == 1 / 3 and back[1]["time_s"] == ""
    assert [p.name for p in path.parent.iterdir()] == ["per_case.csv"]  # no temp file left behind


def test_csv_missing_column_leaves_no_file(tmp_path):
    path = tmp_path / "per_case.csv"
    with pytest.raises(MedadaptError):
        write_per_case_csv(path, [{"class": 1, "dsc": 1.0, "nsd": 1.0, "hd95": 0.0}])
    assert not path.exists()


def test_summary_json_roundtrip(tmp_path):
    s = summarize(_rows(5), n_boot=50)
    path = tmp_path / "summary.json"
    write_summary_json(path, s)
    assert json.loads(path.read_text()) == json.loads(json.dumps(s))
