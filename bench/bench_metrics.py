"""Benchmark the segmentation metrics: seconds per 512x512x200 case, and MONAI's NSD for comparison.

    .venv/bin/python bench/bench_metrics.py [--repeats 3] [--no-monai]

Synthetic pairs (array shape 512x512x200, spacing 0.8 x 0.8 x 2.5 mm): a ground-truth ellipsoid and a
prediction shifted by a few mm and dilated by 1-2 mm. "organ" has semi-axes 80/72/64 mm (a liver-sized
object), "large" 180/162/144 mm (fills most of the field of view: the worst case for the distance
transform on the bounding box). Also times the 36 official reference cases when ../shared is present.
Prints a table and writes bench/results/metrics.json with the machine it ran on.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import scipy

import provenance
from medadapt.io.atomic import write_json
from medadapt.metrics.segmentation import case_metrics

ROOT = Path(__file__).resolve().parents[1]
SHAPE = (512, 512, 200)
SPACING = (0.8, 0.8, 2.5)


def ellipsoid(center_mm, semi_axes_mm) -> np.ndarray:
    """Boolean ellipsoid on the SHAPE grid: [512, 512, 200]."""
    terms = [
        ((np.arange(n) * s - c) / r) ** 2
        for n, s, c, r in zip(SHAPE, SPACING, center_mm, semi_axes_mm, strict=True)
    ]
    return (terms[0][:, None, None] + terms[1][None, :, None] + terms[2][None, None, :]) <= 1.0


def synthetic_pair(radius_mm: float) -> tuple[np.ndarray, np.ndarray]:
    semi = np.array([1.0, 0.9, 0.8]) * radius_mm
    gt = ellipsoid((205.0, 205.0, 250.0), semi)
    seg = ellipsoid((208.0, 203.0, 252.0), semi + np.array([2.0, 1.0, 2.0]))
    return gt.astype(np.uint8), seg.astype(np.uint8)


def time_call(fn, repeats: int) -> tuple[list[float], object]:
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return times, out


def monai_nsd(gt: np.ndarray, seg: np.ndarray) -> float:
    import torch
    from monai.metrics import compute_surface_dice

    y = torch.from_numpy(gt.astype(bool))[None, None].float()
    y_pred = torch.from_numpy(seg.astype(bool))[None, None].float()
    with warnings.catch_warnings():  # MONAI warns about its internal deprecations and the empty warm-up crop
        warnings.simplefilter("ignore")
        nsd = compute_surface_dice(
            y_pred, y, [2.0], include_background=True, spacing=SPACING, use_subvoxels=True
        )
    return float(nsd[0, 0])


def machine_info() -> dict:
    import monai
    import torch

    return {
        "cpu_count": os.cpu_count(),
        "load_avg_1_5_15": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "monai": monai.__version__,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-monai", action="store_true", help="skip the MONAI comparison")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "metrics.json")
    args = parser.parse_args()
    prov = provenance.start()

    results = []
    for name, radius in (("organ", 80.0), ("large", 180.0)):
        gt, seg = synthetic_pair(radius)
        times, rows = time_call(lambda gt=gt, seg=seg: case_metrics(gt, seg, SPACING), args.repeats)
        (row,) = rows
        entry = {
            "case": f"{name} 512x512x200",
            "what": "case_metrics (DSC + NSD 2 mm + HD95)",
            "gt_voxels": int(gt.sum()),
            "seconds_median": statistics.median(times),
            "seconds_min": min(times),
            "seconds_all": times,
            "dsc": row["dsc"],
            "nsd": row["nsd"],
            "hd95": row["hd95"],
        }
        results.append(entry)
        if name == "organ" and not args.no_monai:
            monai_nsd(gt[:8, :8, :8], seg[:8, :8, :8])  # import and warm up outside the timing
            m_times, m_nsd = time_call(lambda gt=gt, seg=seg: monai_nsd(gt, seg), 1)
            results.append(
                {
                    "case": entry["case"],
                    "what": "MONAI compute_surface_dice(use_subvoxels=True), NSD only",
                    "seconds_median": m_times[0],
                    "seconds_min": m_times[0],
                    "seconds_all": m_times,
                    "nsd": m_nsd,
                    "nsd_abs_diff_vs_ours": abs(m_nsd - row["nsd"]),
                }
            )

    shared = Path(os.environ.get("MEDADAPT_SHARED", ROOT.parent / "shared"))
    ref = shared / "reference" / "metric_cases.npz"
    if ref.is_file():
        import json

        cases = json.loads((shared / "reference" / "metric_cases.json").read_text())
        with np.load(ref) as z:
            arrays = {k: z[k] for k in z.files}

        def all_cases():
            for c in cases:
                case_metrics(arrays[f"{c['case']}_gt"], arrays[f"{c['case']}_seg"], c["spacing"])

        times, _ = time_call(all_cases, args.repeats)
        results.append(
            {
                "case": "36 reference cases (hippocampus, 2D + 3D)",
                "what": "case_metrics, all cases",
                "seconds_median": statistics.median(times),
                "seconds_min": min(times),
                "seconds_all": times,
            }
        )

    report = {"benchmark": "segmentation metrics", "machine": machine_info(), "results": results,
              "provenance": provenance.finish(prov)}
    write_json(args.out, report)

    print_table(report)
    m = report["machine"]
    print(
        f"\ncpus {m['cpu_count']}, load {m['load_avg_1_5_15']}, numpy {m['numpy']}, scipy {m['scipy']}, "
        f"torch {m['torch']}, monai {m['monai']} -> {args.out}"
    )


def print_table(report: dict) -> None:
    """The timing table of a metrics.json."""
    print("| case | what | median s | min s |\n|---|---|---|---|")
    for r in report["results"]:
        print(f"| {r['case']} | {r['what']} | {r['seconds_median']:.2f} | {r['seconds_min']:.2f} |")


if __name__ == "__main__":
    main()
