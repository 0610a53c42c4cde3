"""The README's 5-shot fit with DEFAULT settings, from a cold cache: wall time and held-out DSC.

Runs, as its own process,

    medadapt fit --data ../shared/data/hippocampus --shots 5 --seed 0 --method decoder --prompt box --out RUN

with nothing else but ``--threads`` (and ``OMP_NUM_THREADS``), and a fresh, empty ``MEDADAPT_CACHE`` so the
one-time export of the encoder (the default fills the embedding cache with OpenVINO fp32 when it is
installed) is part of the measured time; the fit has no --cache-dir, so its embedding cache starts empty
too. The adapter is then scored on the benchmark's fixed held-out volumes exactly as
``bench_fewshot.py`` scores its runs (its ``score``: volumes reassembled, DSC / NSD 2 mm / HD95 in 3D).
Writes bench/results/default_fit.json with provenance (``bench/provenance.py``: git commit, UTC time, CPU
model, threads, load average at start and end, torch / openvino versions).

    .venv/bin/python bench/bench_default_fit.py            # the measurement (quiet cores)
    .venv/bin/python bench/bench_default_fit.py --max-steps 5 --test-cases 1 --out-json /tmp/smoke.json  # smoke
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import provenance  # noqa: E402
from bench_fewshot import score, write_json  # noqa: E402  (the same scoring as the few-shot matrix)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "hippocampus"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-steps", type=int, default=None, help="smoke runs only: not a default setting")
    ap.add_argument("--test-cases", type=int, default=None, help="smoke runs only: score the first N test volumes")
    ap.add_argument("--out-json", type=Path, default=ROOT / "bench" / "results" / "default_fit.json")
    ap.add_argument("--keep-run", type=Path, default=None, help="copy the fitted run folder here (for other benches)")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from medadapt.data.datasets import load_segmentation_dataset
    from medadapt.data.fewshot import make_split
    from medadapt.infer.factory import build_predictor

    prov = provenance.start()
    result = {"command": None}
    with tempfile.TemporaryDirectory(prefix="bench_default_fit_") as tmp:
        run = Path(tmp) / "run"
        cmd = [sys.executable, "-m", "medadapt.cli.main", "fit", "--data", args.data, "--shots", "5", "--seed", "0",
               "--method", "decoder", "--prompt", "box", "--out", str(run), "--threads", str(args.threads),
               "--no-progress"]
        if args.max_steps:
            cmd += ["--max-steps", str(args.max_steps)]
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MEDADAPT_CACHE": str(Path(tmp) / "cache")}
        result["command"] = (" ".join(["medadapt", *cmd[3:]]).replace(str(run), "RUN")
                             .replace(str(ROOT.parent / "shared"), "../shared"))
        start = time.perf_counter()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            print(proc.stdout[-2000:], proc.stderr[-4000:], file=sys.stderr)
            return 1
        fit = json.loads((run / "result.json").read_text())
        dataset = load_segmentation_dataset(args.data)
        test = list(make_split(dataset, shots=1, seed=0).test)
        if args.test_cases:
            test = test[: args.test_cases]
        scores = score(build_predictor(None, adapter=run), dataset, test, "box")
        if args.keep_run:
            shutil.copytree(run, args.keep_run, dirs_exist_ok=True)
    result.update({
        "provenance": provenance.finish(prov), "threads": args.threads,
        "fit_wall_seconds": wall, "fit_seconds_training": fit.get("fit_seconds"), "cold_cache": True,
        "encoder_engine": fit.get("encoder_engine"), "steps": fit.get("steps"), "best_val_dsc": fit.get("best_metric"),
        "embedding_cache": fit.get("embedding_cache"), "peak_rss_mb": fit.get("peak_rss_mb"),
        "smoke": bool(args.max_steps or args.test_cases), "test_cases": test, **scores,
    })
    args.out_json.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out_json, result)
    print(f"default fit: {wall:.0f} s wall (encoder {result['encoder_engine']}), held-out DSC {scores['dsc']:.4f} "
          f"on {len(test)} volume(s); wrote {args.out_json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
