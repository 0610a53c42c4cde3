"""Test-time mirroring for automatic-mode (no prompt) adapters: DSC with and without it, same adapters.

Re-scores finished `auto` runs of bench_fewshot.py (their run folders under bench/results/tmp) on the
same fixed held-out cases, once as benchmarked and once with ``--mirror`` (each slice also segmented
left-right mirrored, class logits averaged), so every row is a paired comparison. Results:
bench/results/mirror_<name>.json and a markdown table.

    .venv/bin/python bench/bench_mirror.py --data ../shared/data/hippocampus --name hippocampus \
        --runs 'bias+fs2-300/auto/k10/s0' --folders hippocampus hippocampus_d
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

import provenance
from bench_fewshot import ROOT, score, write_json


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", help="dataset spec (required unless --table-only)")
    ap.add_argument("--name", required=True, help="bench_fewshot --name whose runs are re-scored")
    ap.add_argument("--runs", nargs="*", default=[], help="result keys of auto runs, e.g. adapter+fs2-300/auto/k5/s0")
    ap.add_argument("--folders", nargs="+", default=None,
                    help="bench/results/tmp sub-folders holding the run folders (default: --name)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--label-dir", default=None)
    ap.add_argument("--image-suffix", default=None)
    ap.add_argument("--label-suffix", default=None)
    ap.add_argument("--table-only", action="store_true", help="print the table of the result file; runs nothing")
    args = ap.parse_args()
    out_json = ROOT / "bench" / "results" / f"mirror_{args.name}.json"
    results = json.loads(out_json.read_text()) if out_json.exists() else {"runs": {}}
    if args.table_only:
        print_table(results)
        return 0
    if not args.data:
        ap.error("--data is required to score runs")

    import torch

    torch.set_num_threads(args.threads)
    from medadapt.data.datasets import load_segmentation_dataset
    from medadapt.infer.factory import build_predictor

    fewshot = json.loads((ROOT / "bench" / "results" / f"fewshot_{args.name}.json").read_text())
    test = fewshot["test_cases"]
    ds_kw = dict(label_dir=args.label_dir, image_suffix=args.image_suffix, label_suffix=args.label_suffix)
    dataset = load_segmentation_dataset(args.data, **{k: v for k, v in ds_kw.items() if v})
    work = ROOT / "bench" / "results" / "tmp"
    results.update({"data": args.data, "test_cases": test, "cpu_count": os.cpu_count()})
    prov = provenance.start(resumed=bool(results.get("runs")))
    for key in args.runs:
        if key in results["runs"]:
            continue
        if "/auto/" not in key:
            raise SystemExit(f"{key}: not an automatic-mode run (mirroring applies to --prompt auto only)")
        folders = [work / f / key.replace("/", "_") for f in args.folders or [args.name]]
        folder = next((f for f in folders if (f / "adapter").exists()), None)
        if folder is None:
            raise SystemExit(f"{key}: no run folder with an adapter among {[str(f) for f in folders]}")
        predictor = build_predictor(None, adapter=folder, cache_dir=work / folder.parent.name / "embedding_cache")
        row = {"threads": args.threads, "benchmarked_dsc": fewshot["runs"].get(key, {}).get("dsc")}
        for mirror in (False, True):
            predictor.mirror = mirror
            t = time.perf_counter()
            s = score(predictor, dataset, test, "auto")
            row["mirrored" if mirror else "plain"] = {**s, "wall_seconds": time.perf_counter() - t}
        results["runs"][key] = {**row, "provenance": provenance.finish(prov)}
        results["provenance"] = results["runs"][key]["provenance"]
        write_json(out_json, results)
        print(key, row["plain"]["dsc"], row["mirrored"]["dsc"], flush=True)
    print_table(results)
    print(f"wrote {out_json}")
    return 0


def print_table(results: dict) -> None:
    runs = results.get("runs", {})
    print(f"held-out cases: {len(results.get('test_cases', []))}; same adapters, without / with test-time mirroring")
    print("| run | DSC | DSC mirrored | Δ DSC | NSD | NSD mirrored | eval s | eval s mirrored |")
    print("|---|---|---|---|---|---|---|---|")
    for key, r in runs.items():
        p, m = r["plain"], r["mirrored"]
        print(f"| {key} | {p['dsc']:.3f} | {m['dsc']:.3f} | {m['dsc'] - p['dsc']:+.3f} | {p['nsd']:.3f} | "
              f"{m['nsd']:.3f} | {p['wall_seconds']:.0f} | {m['wall_seconds']:.0f} |")
    if runs:
        d = np.array([r["mirrored"]["dsc"] - r["plain"]["dsc"] for r in runs.values()])
        print(f"| mean over {len(d)} runs | | | {d.mean():+.3f} ± {d.std(ddof=1) if len(d) > 1 else 0:.3f} "
              f"| | | | |")


if __name__ == "__main__":
    raise SystemExit(main())
