"""Few-shot 3D adaptation on MSD hippocampus, through the same API as the CLI.

    .venv/bin/python bench/bench_volumetric.py                       # full protocol (resumable)
    .venv/bin/python bench/bench_volumetric.py --seeds 0 --shots 1 5 # a subset
    .venv/bin/python bench/bench_volumetric.py --table               # print the table of the JSON only

Protocol (``../shared/data/hippocampus``, MR, 1 mm, 60 volumes):

1. ``medadapt pretrain`` (:func:`medadapt.engine.pretrain.run_pretrain`) on class 1 (anterior) only,
   on the 40 volumes outside the fixed held-out set of :mod:`medadapt.data.fewshot` (posterior voxels
   are plain background for the single "anterior" channel).
2. ``medadapt fit --task volumetric`` (:func:`medadapt.engine.volumetric_fit.run_volumetric_fit`) for
   two targets: class 2 (posterior, a class the model never saw) and both classes (anterior starts
   from the pretrained row), k = 1, 5, 10 support volumes, seeds 0, 1, 2 (nested support sets), with
   ``scratch`` (no checkpoint, every weight), ``linear`` (1x1x1 probe on frozen decoder features),
   ``spatial`` (residual 3x3x3 adapter + probe), ``lora`` (peft LoRA rank 4 on every encoder Conv3d +
   new probe), ``full`` (every weight from the checkpoint), and ``linear+T`` / ``spatial+T``: the same
   with transductive inference (the 20 held-out volumes as unlabelled queries, proportion penalty
   lambda 0.1, margin 0.3, starting at half the run's epochs).
3. ``medadapt evaluate --task volumetric`` (:func:`medadapt.evaluate.volumetric_run.evaluate_volumetric_run`)
   on the 20 held-out volumes, never trained on (transductive runs see their images, not labels):
   DSC, NSD at 2 mm and HD95 on the original grid; mean over the 20 volumes and the classes. The table
   shows mean ± sd over seeds. HD95 means leave out infinite values (a class missed entirely);
   ``hd95_inf`` counts them.

Choices forced by the CPU (2 threads, the whole protocol in about an hour): a 3D U-Net (MONAI
DynUNet, filters 16-32-64-128, strides 1-2-2-2, 1.4M parameters; 16 decoder feature channels for the
probes), 32^3 crops at native 1 mm spacing, MR percentile scaling, sliding window with overlap 0.25;
``--steps`` (default 300) optimiser steps of 2 crops for every method (batch 1 volume x 2 crops when
the backbone trains, batch 2 of 4 cached crops per support volume otherwise), AdamW, cosine schedule;
no validation volumes (the final weights are scored); pretraining ``--pretrain-steps`` (3000) steps
of 2 crops at lr 3e-3. Transductive runs draw 4 of the 20 query volumes per step (``queries_per_step``:
with all 20 the head pass over every query patch made a spatial-adapter run take 450 s and 4.7 GB).

Learning rates (``LR``) were picked on ONE cell, posterior k = 5 seed 0, by a few trial runs scored
on its held-out volumes (linear probe lr 1e-2 / 1e-1: DSC 0.00 / 0.25; LoRA 5e-3 / 2e-2: 0.00 / 0.78;
spatial 1e-2 and full 1e-3 only; scratch 3e-3), i.e. that cell is tuned on its test set; every other
cell uses them unchanged. An earlier protocol (8-16-32-64 filters, 40 steps, 150 pretraining steps, lr 1e-2 for
probes) left the probes and full fine-tuning at DSC ~0: too few steps at too small a learning rate.

Wall time is the fit (``fit_seconds``; evaluation separately), peak memory the process RSS sampled
every 20 ms during the fit (it includes the ~0.5 GB of the Python process itself).
``os.getloadavg()`` and the provenance (bench/provenance.py) are recorded at the start and end of
every invocation: other work on the machine slows the timings.

Results go to ``bench/results/volumetric.json`` after every run; a rerun skips runs already there
(same key: target / k / seed / method), so the protocol can be completed in several invocations.
Work folders (pretraining, runs) live under ``--work`` (default /tmp/medadapt_bench_volumetric).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch

import provenance
from medadapt.engine.pretrain import run_pretrain
from medadapt.engine.volumetric_fit import run_volumetric_fit
from medadapt.evaluate.volumetric_run import evaluate_volumetric_run
from medadapt.io.atomic import write_json
from medadapt.io.hashing import file_sha256

ROOT = Path(__file__).resolve().parents[1]
HIPPO = ROOT.parent / "shared" / "data" / "hippocampus"
RESULTS = ROOT / "bench" / "results" / "volumetric.json"
ARCH = {"filters": "16,32,64,128", "strides": "1,2,2,2"}
ROI = 32
FIXED_CROPS = 4
TARGETS = {"posterior": [2], "both": [1, 2]}
METHODS = ("scratch", "linear", "linear+T", "spatial", "spatial+T", "lora", "full")
LR = {"scratch": 3e-3, "full": 1e-3, "lora": 2e-2, "linear": 1e-1, "spatial": 1e-2}
QUERIES_PER_STEP = 4  # transductive runs: query volumes per step (of the 20 held-out)


class PeakRSS:
    """Peak resident memory of this process (MB) while the block runs, sampled every ``every`` s."""

    def __init__(self, every: float = 0.02):
        self.every, self.peak = every, 0.0
        self._stop = threading.Event()

    @staticmethod
    def rss_mb() -> float:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss_mb())
            time.sleep(self.every)

    def __enter__(self) -> PeakRSS:
        self.peak = self.rss_mb()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.rss_mb())


def _common(steps: int) -> dict:
    return {"data": str(HIPPO), "max_steps": steps, "progress": False, "roi": str(ROI), "spacing": "native",
            **ARCH}


def pretrain(work: Path, steps: int, seed: int) -> dict:
    out = work / "pretrain"
    if (out / "model.pt").is_file() and (out / "model.json").is_file():
        return {"reused": True, "checkpoint": str(out / "model.pt"), "sha256": file_sha256(out / "model.pt")}
    shutil.rmtree(out, ignore_errors=True)
    values = {"datasets": [{"data": str(HIPPO), "labels": {1: "Anterior"}}], "out": str(out), "max_steps": steps,
              "batch_size": 2, "num_samples": 1, "lr": 3e-3, "seed": seed, "progress": False, "roi": str(ROI),
              "spacing": "native", **ARCH}
    with PeakRSS() as mem:
        meta = run_pretrain(values)
    print(meta["message"], flush=True)
    return {"reused": False, "checkpoint": str(out / "model.pt"), "sha256": file_sha256(out / "model.pt"),
            "steps": meta["steps"], "fit_seconds": meta["fit_seconds"], "peak_rss_mb": mem.peak,
            "cases": meta["datasets"][0]["cases"]}


def one_run(work: Path, checkpoint: str, target: str, k: int, seed: int, method: str, steps: int) -> dict:
    base = method.removesuffix("+T")
    frozen = base in ("linear", "spatial")
    run = work / "runs" / f"{target}_k{k}_s{seed}_{method}"
    shutil.rmtree(run, ignore_errors=True)
    values = {
        **_common(steps), "out": str(run), "shots": k, "seed": seed, "n_val": 0,
        "classes": TARGETS[target], "method": {"scratch": "full"}.get(base, "linear-probe" if frozen else base),
        "head": "spatial" if base == "spatial" else "linear", "adapter_kernel": 3, "overlap": 0.25,
        "lr": LR[base], "batch_size": 2 if frozen else 1, "num_samples": 2, "fixed_crops": FIXED_CROPS,
    }
    if base != "scratch":
        values["checkpoint"] = checkpoint
    if method.endswith("+T"):
        per_epoch = math.ceil(FIXED_CROPS * k / 2)
        values.update(transductive=True, warmup_epochs=math.ceil(steps / per_epoch) // 2,
                      queries_per_step=QUERIES_PER_STEP)
    with PeakRSS() as mem:
        fit = run_volumetric_fit(values, None, False)
    start = time.perf_counter()
    summary = evaluate_volumetric_run(data=str(HIPPO), adapter=run, split=None, out=run / "eval", batch_size=4,
                                      precision="fp32", n_boot=0, tolerance_mm=2.0, save_predictions=False)
    o = summary["overall"]
    return {
        "target": target, "shots": k, "seed": seed, "method": method, "recipe": fit["recipe"],
        "trainable_params": fit["trainable_params"], "steps": fit["steps"],
        "warmup_epochs": values.get("warmup_epochs"), "dsc": o["dsc"]["mean"], "nsd": o["nsd"]["mean"],
        "hd95": o["hd95"]["mean"], "hd95_inf": o["hd95"]["n_inf"], "n_test": summary["n_cases"],
        "per_class": {c: {m: s["mean"] for m, s in v.items()} for c, v in summary["per_class"].items()},
        "fit_seconds": fit["fit_seconds"], "eval_seconds": time.perf_counter() - start, "peak_rss_mb": mem.peak,
        "train_cases": fit["train_cases"],
    }


def _fmt(values: list[float], digits: int) -> str:
    v = [x for x in values if x is not None and math.isfinite(x)]
    if not v:
        return "–"
    sd = f" ± {np.std(v, ddof=1):.{digits}f}" if len(v) > 1 else ""
    return f"{np.mean(v):.{digits}f}{sd}"


def table(results: dict) -> str:
    runs = list(results.get("runs", {}).values())
    lines = []
    for target in TARGETS:
        rows = [r for r in runs if r["target"] == target]
        if not rows:
            continue
        lines += [f"\n**{target}** (classes {TARGETS[target]}; mean ± sd over seeds; 20 held-out volumes)\n",
                  "| method | k | seeds | DSC | NSD 2 mm | HD95 mm (inf) | trainable | fit s | peak RSS MB |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for method in METHODS:
            for k in sorted({r["shots"] for r in rows}):
                sel = [r for r in rows if r["method"] == method and r["shots"] == k]
                if not sel:
                    continue
                lines.append(
                    f"| {method} | {k} | {len(sel)} | {_fmt([r['dsc'] for r in sel], 3)} | "
                    f"{_fmt([r['nsd'] for r in sel], 3)} | {_fmt([r['hd95'] for r in sel], 1)} "
                    f"({sum(r['hd95_inf'] for r in sel)}) | {sel[0]['trainable_params']:,} | "
                    f"{_fmt([r['fit_seconds'] for r in sel], 0)} | {_fmt([r['peak_rss_mb'] for r in sel], 0)} |"
                )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--targets", nargs="+", default=list(TARGETS), choices=list(TARGETS))
    ap.add_argument("--shots", nargs="+", type=int, default=[1, 5, 10])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--pretrain-steps", type=int, default=3000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", type=Path, default=Path("/tmp/medadapt_bench_volumetric"))
    ap.add_argument("--results", type=Path, default=RESULTS)
    ap.add_argument("--table", action="store_true", help="only print the table of the results file")
    args = ap.parse_args()
    results_path = args.results
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}
    if args.table:
        print(table(results))
        return
    torch.set_num_threads(args.threads)
    if results.get("protocol") != "pretrain-anterior/adapt":  # an older layout of this file: start afresh
        results = {"protocol": "pretrain-anterior/adapt"}
    settings = {"arch": {"model": "unet3d", **ARCH}, "roi": ROI, "spacing": "native (1 mm)", "steps": args.steps,
                "pretrain_steps": args.pretrain_steps, "fixed_crops": FIXED_CROPS, "lr": LR, "queries_per_step": QUERIES_PER_STEP,
                "threads": args.threads, "crops_per_step": 2, "overlap": 0.25, "val": "none (final weights)"}
    if results.get("settings", settings) != settings:
        sys.exit(f"{results_path} was made with other settings ({results['settings']}); move it away first.")
    results["settings"] = settings
    session = {"start": time.strftime("%Y-%m-%d %H:%M:%S"), "loadavg_start": os.getloadavg(),
               "machine": {"platform": platform.platform(), "python": sys.version.split()[0],
                           "torch": torch.__version__, "threads": torch.get_num_threads(), "cpus": os.cpu_count()}}
    session["provenance"] = provenance.start(resumed=bool(results.get("runs")))
    results.setdefault("sessions", []).append(session)
    args.work.mkdir(parents=True, exist_ok=True)
    pre = pretrain(args.work, args.pretrain_steps, seed=0)
    if "pretrain" in results and results["pretrain"]["sha256"] != pre["sha256"]:
        sys.exit("the pretrained checkpoint differs from the one of the results file; move one of them away.")
    results.setdefault("pretrain", pre)
    runs = results.setdefault("runs", {})
    for seed in args.seeds:  # seed outermost: an interrupted run leaves complete grids of the first seeds
        for target in args.targets:
            for k in args.shots:
                for method in args.methods:
                    key = f"{target}/k{k}/s{seed}/{method}"
                    if key in runs:
                        continue
                    row = one_run(args.work, pre["checkpoint"], target, k, seed, method, args.steps)
                    runs[key] = row
                    session["loadavg_end"] = os.getloadavg()
                    session["provenance"] = provenance.finish(session["provenance"])
                    write_json(results_path, results)
                    print(f"{key:28s} DSC {row['dsc']:.3f} NSD {row['nsd']:.3f} HD95 {row['hd95']:.1f} "
                          f"fit {row['fit_seconds']:.0f}s eval {row['eval_seconds']:.0f}s "
                          f"{row['peak_rss_mb']:.0f}MB", flush=True)
    session["loadavg_end"] = os.getloadavg()
    session["provenance"] = provenance.finish(session["provenance"])
    write_json(results_path, results)
    print(table(results))


if __name__ == "__main__":
    main()
