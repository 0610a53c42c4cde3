"""Interactive segmentation on the fixed test volumes: DSC after the box and after each corrective click.

For each configuration (zero-shot LiteMedSAM, or a ``medadapt fit`` run), runs

    medadapt simulate --data DATA --out TMP [--adapter RUN] --clicks N [--plane P] [--cases C]

as its own process (the CVPR 2025 protocol: a 3D box per class, then N clicks, each at the deepest
point of the largest error region) and records from its summary.json / per_case.csv:

- mean DSC / NSD after the box (interaction 0) and after each click, DSC-AUC / NSD-AUC (official), final
  DSC / NSD, seconds per interaction and ms per re-decoded slice;
- clicks to reach DSC >= ``--target`` per object (case x class): the median over objects and the share of
  objects that reach it within N clicks (objects that never reach it count as not reached).

``--engine onnxruntime --decoder-precision int8`` (or ``openvino`` / ``bf16``) runs a configuration on an
exported model's faster mask decoder, to measure what it costs in DSC.
``--start auto`` starts each object from an automatic-mode adapter's prediction instead of the box.
``--cases-from val --click-reach R`` runs the validation cases instead, to choose the session's click
reach (bench/results/interactive_<name>_val.json holds that sweep); ``--click-window F`` likewise for a
click's local window.

Writes bench/results/interactive_<name>.json (one entry per configuration, merged into the file so that
configurations and seeds can be run one by one) with provenance (bench/provenance.py).

    .venv/bin/python bench/bench_clicks.py --data ../shared/data/hippocampus --name hippocampus \\
        --config zero-shot --config decoder-box/s0=RUN_BOX --config decoder-click/s0=RUN_CLICK
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import provenance  # noqa: E402
from bench_fewshot import write_json  # noqa: E402
from medadapt.metrics.interactive import clicks_to_reach  # noqa: E402


def _dsc_steps(row: dict, clicks: int) -> list[float]:
    """DSC after interactions 0..clicks of one per_case.csv row (missing values as NaN)."""
    return [float(row[f"dsc_{k}"]) if row.get(f"dsc_{k}") not in (None, "") else math.nan for k in range(clicks + 1)]


def summarise(out: Path, clicks: int, target: float) -> dict:
    summary = json.loads((out / "summary.json").read_text())
    with (out / "per_case.csv").open() as f:
        rows = [r for r in csv.DictReader(f) if r.get("dsc_0") not in (None, "")]
    return {**summarise_rows(rows, clicks, target),
            "seconds_per_interaction": summary.get("seconds_per_interaction"),
            "ms_per_decoded_slice": summary.get("ms_per_decoded_slice")}


def summarise_rows(rows: list[dict], clicks: int, target: float) -> dict:
    """Means over objects (rows of per_case.csv: dsc_0..N, nsd_0..N, AUCs) and clicks to the target."""
    per_step = [statistics.fmean(float(r[f"dsc_{k}"]) for r in rows) for k in range(clicks + 1)]
    nsd_step = [statistics.fmean(float(r[f"nsd_{k}"]) for r in rows) for k in range(clicks + 1)]
    reached = [clicks_to_reach(_dsc_steps(r, clicks), target) for r in rows]
    hits = sorted(k for k in reached if k is not None)
    return {
        "objects": len(rows),
        "cases": len({r["case"] for r in rows}),
        "dsc_per_interaction": per_step,
        "nsd_per_interaction": nsd_step,
        "dsc_auc": statistics.fmean(float(r["dsc_auc"]) for r in rows),
        "nsd_auc": statistics.fmean(float(r["nsd_auc"]) for r in rows),
        "final_dsc": per_step[-1],
        "final_nsd": nsd_step[-1],
        "target": target,
        # objects that never reach the target count as clicks + 1 in the median (beyond the budget)
        "median_clicks_to_target": statistics.median([k if k is not None else clicks + 1 for k in reached]),
        "share_reaching_target": len(hits) / len(reached) if reached else None,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--name", required=True)
    ap.add_argument("--config", action="append", required=True, metavar="NAME[=RUN]",
                    help="zero-shot (no RUN), or NAME=RUN for a fit run; repeat for several")
    ap.add_argument("--clicks", type=int, default=5)
    ap.add_argument("--plane", default="volume")
    ap.add_argument("--start", default="box3d", help="simulate --start: box3d | box2d | auto (an automatic-mode "
                    "adapter's prediction, then clicks)")
    ap.add_argument("--cases", type=int, default=None, help="only the first N test cases")
    ap.add_argument("--cases-from", default="test", choices=("test", "val"),
                    help="val: the split's validation cases (for choosing settings such as --click-reach)")
    ap.add_argument("--click-reach", type=int, default=None,
                    help="slices each click is carried to on each side (default: the session's default)")
    ap.add_argument("--click-window", default=None, metavar="F|none",
                    help="a click's local window, x the box side; none: the whole slice (default: the session's default)")
    ap.add_argument("--target", type=float, default=0.90)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cache-dir", type=Path, default=None)
    ap.add_argument("--resize", default=None, help="simulate --resize (default: the model's own default)")
    ap.add_argument("--roi-margin", default=None, help="simulate --roi-margin (zoom-in; default: whole slices)")
    for flag in ("--label-dir", "--image-suffix", "--label-suffix"):  # 2D image folders (DRIVE), as simulate takes them
        ap.add_argument(flag, default=None)
    ap.add_argument("--engine", default=None, help="simulate --engine (default: torch)")
    ap.add_argument("--decoder-precision", default=None, help="simulate --decoder-precision (default: fp32)")
    ap.add_argument("--out-json", type=Path, default=None)
    args = ap.parse_args()

    out_json = args.out_json or ROOT / "bench" / "results" / f"interactive_{args.name}.json"
    for config in args.config:
        name, _, run = config.partition("=")
        prov = provenance.start()
        with tempfile.TemporaryDirectory(prefix="bench_clicks_") as tmp:
            out = Path(tmp) / "sim"
            cmd = [sys.executable, "-m", "medadapt.cli.main", "simulate", "--data", args.data, "--out", str(out),
                   "--clicks", str(args.clicks), "--plane", args.plane, "--start", args.start, "--threads", str(args.threads)]
            if run:
                cmd += ["--adapter", run]
            if args.cases:
                cmd += ["--cases", str(args.cases)]
            if args.cases_from != "test":
                cmd += ["--cases-from", args.cases_from]
            if args.click_reach is not None:
                cmd += ["--click-reach", str(args.click_reach)]
            if args.click_window is not None:
                cmd += ["--click-window", args.click_window]
            if args.cache_dir:
                cmd += ["--cache-dir", str(args.cache_dir)]
            if args.resize:
                cmd += ["--resize", args.resize]
            if args.roi_margin is not None:
                cmd += ["--roi-margin", args.roi_margin]
            if args.engine:
                cmd += ["--engine", args.engine]
            if args.decoder_precision:
                cmd += ["--decoder-precision", args.decoder_precision]
            for flag in ("label_dir", "image_suffix", "label_suffix"):
                if getattr(args, flag) is not None:
                    cmd += ["--" + flag.replace("_", "-"), getattr(args, flag)]
            env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if proc.returncode != 0:
                print(proc.stdout[-2000:], proc.stderr[-4000:], file=sys.stderr)
                return 1
            entry = summarise(out, args.clicks, args.target)
            settings = json.loads((out / "summary.json").read_text())["settings"]
        fit = {}
        if run:
            result = json.loads((Path(run) / "result.json").read_text())
            fit = {k: result.get(k) for k in ("method", "prompt", "shots", "seed", "steps", "best_metric",
                                             "train_cases", "fit_seconds")}
        entry.update({"config": name, "fit": fit or None, "clicks": args.clicks, "plane": args.plane, "start": args.start,
                      "click_reach": settings.get("click_reach"), "click_window": settings.get("click_window"),
                      "resize": settings.get("resize"), "roi_margin": settings.get("roi_margin"),
                      "engine": settings.get("engine", "torch"), "decoder_precision": settings.get("decoder_precision", "fp32"),
                      "cases_from": args.cases_from,
                      "case_keys": settings.get("cases"), "threads": args.threads,
                      "command": " ".join(["medadapt", *cmd[3:]]).replace(str(out), "OUT"),
                      "provenance": provenance.finish(prov)})
        results = json.loads(out_json.read_text()) if out_json.is_file() else {"runs": {}}  # another run may have written
        results["runs"][name] = entry
        results["data"] = args.data
        results["provenance"] = entry["provenance"]  # the file's last run (each run keeps its own)
        write_json(out_json, results)
        steps = " ".join(f"{v:.3f}" for v in entry["dsc_per_interaction"])
        print(f"{name}: DSC by interaction {steps} | DSC-AUC {entry['dsc_auc']:.3f} | median clicks to "
              f"{args.target:.2f}: {entry['median_clicks_to_target']} | reach {entry['share_reaching_target']:.0%}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
