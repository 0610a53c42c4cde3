"""Conformance: every case and class of the official CVPR24 metric values in shared/reference."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from medadapt.metrics.segmentation import case_metrics


@pytest.fixture(scope="module")
def metric_cases(reference):
    cases = json.loads((reference / "metric_cases.json").read_text())
    with np.load(reference / "metric_cases.npz") as z:
        arrays = {k: z[k] for k in z.files}
    assert len(cases) == 36
    return cases, arrays


def _close(actual: float, expected: float, tol: float) -> bool:
    if math.isinf(expected) or math.isnan(expected):
        return actual == expected or (math.isnan(actual) and math.isnan(expected))
    return abs(actual - expected) <= tol


@pytest.mark.parametrize("tolerance_mm, key", [(2.0, "nsd_2mm"), (1.0, "nsd_1mm")])
def test_matches_official_values(metric_cases, tolerance_mm, key):
    cases, arrays = metric_cases
    failures = []
    n_checked = 0
    for case in cases:
        name = case["case"]
        rows = case_metrics(
            arrays[f"{name}_gt"], arrays[f"{name}_seg"], case["spacing"], tolerance_mm=tolerance_mm
        )
        assert [str(r["class"]) for r in rows] == list(case["per_class"]), name
        for row in rows:
            expected = case["per_class"][str(row["class"])]
            for metric, ref_key, tol in (("dsc", "dsc", 1e-9), ("nsd", key, 1e-6), ("hd95", "hd95", 1e-6)):
                n_checked += 1
                if not _close(row[metric], expected[ref_key], tol):
                    failures.append((name, row["class"], ref_key, row[metric], expected[ref_key]))
    assert n_checked == 3 * 72
    assert not failures, failures


def test_reference_covers_the_conventions(metric_cases):
    """The check above exercises 2D and 3D, anisotropic spacing and the missing-class convention."""
    cases, _ = metric_cases
    assert {len(c["spacing"]) for c in cases} == {2, 3}
    assert any(len(set(c["spacing"])) > 1 for c in cases)
    missed = [v for c in cases for v in c["per_class"].values() if math.isinf(v["hd95"])]
    assert missed and all(v["dsc"] == 0 and v["nsd_2mm"] == 0 for v in missed)
