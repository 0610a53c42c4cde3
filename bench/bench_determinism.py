"""Is `medadapt fit` deterministic with a seed? The same fit repeated, compared tensor by tensor.

Each run is its own `medadapt fit` process with the same data, seed and options; only the torch thread
count and the embedding cache (cold: its own empty folder; warm: the first run's) change. The adapter
of every run is compared with the first run's: bitwise equal or not, and the largest absolute
difference of any parameter. Results: bench/results/determinism_<name>.json and a markdown table.

    .venv/bin/python bench/bench_determinism.py --data ../shared/data/hippocampus --name hippocampus \
        --method adapter --prompt auto --shots 5 --seed 2 --max-steps 16 --lr 1e-3 \
        --fit-set frozen_stages=2 precision=bf16 --runs 1:cold 1:cold 1:warm 2:cold
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def compare(a: Path, b: Path) -> dict:
    """Bitwise equality and the largest absolute difference of two adapters' tensors."""
    import torch
    from safetensors.torch import load_file

    ta, tb = (load_file(str(p / "adapter" / "adapter.safetensors")) for p in (a, b))
    if ta.keys() != tb.keys():
        return {"identical": False, "max_abs_diff": None, "note": "different tensors"}
    diff = max((ta[k].float() - tb[k].float()).abs().max().item() for k in ta)
    return {"identical": all(torch.equal(ta[k], tb[k]) for k in ta), "max_abs_diff": diff}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data")
    ap.add_argument("--name", required=True)
    ap.add_argument("--method", default="adapter")
    ap.add_argument("--prompt", default="auto")
    ap.add_argument("--shots", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-steps", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--fit-set", nargs="*", default=[], metavar="KEY=VALUE")
    ap.add_argument("--runs", nargs="+", default=["1:cold", "1:cold", "1:warm", "2:cold"],
                    metavar="THREADS:CACHE", help="one fit per item; CACHE cold (its own) or warm (the first run's)")
    ap.add_argument("--work", type=Path, default=ROOT / "bench" / "results" / "tmp")
    ap.add_argument("--table-only", action="store_true")
    args = ap.parse_args()

    out_json = ROOT / "bench" / "results" / f"determinism_{args.name}.json"
    if args.table_only:
        print_table(json.loads(out_json.read_text()))
        return 0
    if not args.data:
        ap.error("--data is required")
    import provenance
    from medadapt.io.atomic import write_json

    work = args.work / f"determinism_{args.name}"
    results = {"data": args.data, "method": args.method, "prompt": args.prompt, "shots": args.shots,
               "seed": args.seed, "max_steps": args.max_steps, "lr": args.lr, "fit_set": args.fit_set,
               "cpu_count": os.cpu_count(), "runs": [], "provenance": provenance.start()}
    first = None
    for i, item in enumerate(args.runs):
        threads, cache_kind = item.split(":")
        if cache_kind not in ("cold", "warm") or (cache_kind == "warm" and first is None):
            ap.error(f"--runs {item}: CACHE is cold or warm, and warm needs a cold run before it")
        run = work / f"run{i}_t{threads}_{cache_kind}"
        cache = (first / "embedding_cache") if cache_kind == "warm" else (run / "embedding_cache")
        if run.exists():
            raise SystemExit(f"{run} exists: remove {work} to measure again")
        cmd = [sys.executable, "-m", "medadapt.cli.main", "fit", "--data", args.data, "--out", str(run),
               "--method", args.method, "--prompt", args.prompt, "--shots", str(args.shots),
               "--seed", str(args.seed), "--max-steps", str(args.max_steps), "--lr", str(args.lr),
               "--cache-dir", str(cache), "--threads", threads, "--no-progress",
               "--val-every", str(args.max_steps)]
        for kv in args.fit_set:
            cmd += ["--set", kv]
        t = time.perf_counter()
        proc = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": threads}, capture_output=True, text=True)
        if proc.returncode != 0:
            print(proc.stderr[-3000:], file=sys.stderr)
            return 1
        fit = json.loads((run / "result.json").read_text())
        row = {"run": run.name, "threads": int(threads), "cache": cache_kind,
               "fit_wall_seconds": time.perf_counter() - t, "best_val_dsc": fit.get("best_metric")}
        first = first or run
        row.update(compare(first, run))
        results["runs"].append(row)
        results["provenance"] = provenance.finish(results["provenance"])
        write_json(out_json, results)
        print(row, flush=True)
    print_table(results)
    print(f"wrote {out_json}")
    return 0


def print_table(results: dict) -> None:
    print(f"\n{results['method']} / {results['prompt']}, k = {results['shots']}, seed {results['seed']}, "
          f"{results['max_steps']} steps, {' '.join(results['fit_set'])}; every adapter against the first run's")
    print("| run | threads | embedding cache | bitwise equal | max abs diff | best val DSC | fit s |")
    print("|---|---|---|---|---|---|---|")
    for r in results["runs"]:
        val = "–" if r["best_val_dsc"] is None else f"{r['best_val_dsc']:.4f}"  # a recipe without validation
        diff = "–" if r["max_abs_diff"] is None else f"{r['max_abs_diff']:.3g}"  # adapters with other tensors
        print(f"| {r['run']} | {r['threads']} | {r['cache']} | {'yes' if r['identical'] else 'no'} | "
              f"{diff} | {val} | {r['fit_wall_seconds']:.0f} |")


if __name__ == "__main__":
    sys.exit(main())
