"""Few-label classification benchmark: PneumoniaMNIST, 4 methods x 3 label fractions x 3 seeds.

    .venv/bin/python bench/bench_classification.py                 # the protocol below (resumable)
    .venv/bin/python bench/bench_classification.py --part speed    # seconds per step per backbone/recipe
    # cheap runs and the 10 % fraction first, seed by seed (all merge into one JSON):
    for s in 0 1 2; do B="--seeds $s"; .venv/bin/python bench/bench_classification.py $B --methods linear-probe cnn_small
      .venv/bin/python bench/bench_classification.py $B --methods lora full --fractions 0.1
      .venv/bin/python bench/bench_classification.py $B --methods lora full --fractions 0.01 1.0; done

Protocol (``--part protocol``, the default). Data: ``../shared/data/pneumoniamnist/pneumoniamnist_dev.npz``,
train 3882 (388 normal / 3494 pneumonia), validation 524 (the official test split is kept elsewhere).
Methods, each run through ``medadapt.engine.classify_fit.run_classify_fit`` (what ``medadapt fit
--task classify`` runs):

- ``lora``: LiteMedSAM image encoder (bundled weights) + LoRA on q/v of every attention (rank 4,
  alpha 32, dropout 0.1) + LayerNorm + linear head; lr 1e-3;
- ``linear-probe``: the same encoder frozen, LayerNorm + linear head on its average-pooled features;
  lr 1e-3; the pooled features are computed once (eval mode) and cached on disk, so probe runs after the
  first reuse them (its wall time includes that one-off encoding; see ``feature_cache`` per run);
- ``full``: every encoder weight + head fine-tuned; lr 1e-4;
- ``cnn_small``: ``medadapt.models.classification.SmallCNN`` (1.2M parameters) from scratch; lr 1e-3.

Same for every method: label fraction 1 %, 10 %, 100 % of the training split, stratified per class
with the seed (39 / 388 / 3882 images); seeds 0, 1, 2 (labels, initialisation, order); input 32 px
(28 px images, long side resized, as each backbone prepares them); ``--steps`` AdamW steps (default
100) of ``--batch-size`` 16, 10 % warm-up then cosine, weight decay 0.05, BCE with pos_weight
(negatives/positives), no augmentation (so the probe can cache), fp32, 2 threads. The model
evaluated is the one after the last step (one validation, at the end: no checkpoint selection on
the split we report), AUROC on all 524 validation images. All runs share one process (a process per
run adds its start-up time to every run); ``peak_rss_mb`` is still each run's own: the
kernel's peak-RSS mark is reset before each run (``/proc/self/clear_refs``) and read after (VmHWM);
it starts from the RSS the process already holds (torch, earlier runs' freed-but-kept memory), so it is
an upper bound of the run's own need.

Why these choices: the protocol (36 runs) is sized to finish in well under an hour on 2 CPU cores
at 32 px; 64 px costs about 4x the compute per step. A step budget equal for all fractions means the fraction changes the labels, not the compute; at 100 % the runs see only 1600 of 3882 images.

Runs are appended to ``bench/results/classification.json`` as they finish (seed-major order, so an
interrupted benchmark has whole seeds); a rerun skips the runs already there, and subsets chosen with
``--methods`` / ``--fractions`` / ``--seeds`` merge into the same file (``--steps``, ``--batch-size``,
``--img-size``, ``--threads`` must then stay the same). Prints a Markdown table of mean +- sd over seeds.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import provenance
from medadapt.adapt import apply_recipe
from medadapt.engine.classify_task import classifier_recipe
from medadapt.io.atomic import write_json
from medadapt.models.classification import build_classifier

ROOT = Path(__file__).resolve().parents[1]
PNEUMONIA = ROOT.parent / "shared" / "data" / "pneumoniamnist" / "pneumoniamnist_dev.npz"


def lora_options(recipe: str) -> dict:
    return {"lora_rank": 4, "lora_alpha": 32.0, "lora_dropout": 0.1} if "lora" in recipe else {}


def bench_speed(backbones: list[str], recipes: list[str], batch_size: int, repeats: int = 3) -> list[dict]:
    rows = []
    for name in backbones:
        for recipe in recipes:
            torch.manual_seed(0)
            model = build_classifier(name, 14)
            applied = apply_recipe(model, classifier_recipe(model, recipe, **lora_options(recipe)))
            size = model.input_spec.size
            x = torch.randn(batch_size, 3, size, size)
            y = (torch.rand(batch_size, 14) < 0.2).float()
            opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
            model.train()
            times = []
            for i in range(repeats + 1):  # first step warms up allocators / kernels
                t = time.perf_counter()
                loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if i:
                    times.append(time.perf_counter() - t)
            model.eval()
            with torch.no_grad():
                model(x)
                t = time.perf_counter()
                model(x)
                infer = time.perf_counter() - t
            row = {"backbone": name, "recipe": recipe, "input": size, "batch": batch_size,
                   "trainable": applied.trainable, "total": applied.total,
                   "step_s": float(np.median(times)), "infer_img_per_s": batch_size / infer}
            rows.append(row)
            print(f"{name:18s} {recipe:13s} {size:4d}px trainable {applied.trainable:>11,} / {applied.total:>11,}"
                  f"  step {row['step_s']:7.2f} s  infer {row['infer_img_per_s']:6.1f} img/s", flush=True)
    return rows


PROTOCOL_METHODS = {  # name -> run_classify_fit values
    "lora": {"model": "litemedsam", "method": "lora"},
    "linear-probe": {"model": "litemedsam", "method": "linear-probe"},
    "full": {"model": "litemedsam", "method": "full"},
    "cnn_small": {"model": "cnn_small", "method": "full"},
}


def run_key(method: str, fraction: float, seed: int) -> str:
    return f"{method}|{fraction:g}|{seed}"


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark of this process (Linux ``clear_refs`` 5), so that each run
    in one process reports its own peak (VmHWM); False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _peak_rss_mb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def one_run(spec: dict) -> dict:
    """One fit through the ``medadapt fit --task classify`` code path; returns its row."""
    from medadapt.engine.classify_fit import run_classify_fit

    per_run_peak = _reset_peak_rss()
    load_start = os.getloadavg()
    t = time.perf_counter()
    values = {**PROTOCOL_METHODS[spec["method"]], "data": str(PNEUMONIA), "out": spec["out"],
              "fraction": spec["fraction"], "seed": spec["seed"], "max_steps": spec["steps"],
              "val_every": spec["steps"], "batch_size": spec["batch_size"], "img_size": spec["img_size"],
              "augment": False, "cache_dir": spec["cache_dir"], "progress": False}
    res = run_classify_fit(values, None, False)
    return {"method": spec["method"], "fraction": spec["fraction"], "seed": spec["seed"],
            "auroc": res["best_metric"], "train_images": res["train_images"],
            "trainable_params": res["trainable_params"], "steps": res["steps"], "lr": res["lr"],
            "fit_s": res["fit_seconds"], "run_s": time.perf_counter() - t, "peak_rss_mb": _peak_rss_mb(),
            "peak_rss_is_per_run": per_run_peak, "feature_cache": res["feature_cache"],
            "load_avg_start": load_start, "load_avg_end": os.getloadavg()}


def bench_protocol(args, result: dict) -> None:
    if not PNEUMONIA.is_file():
        sys.exit(f"{PNEUMONIA} not found: the protocol needs ../shared")
    runs = result.setdefault("runs", [])
    done = {run_key(r["method"], r["fraction"], r["seed"]) for r in runs}
    cache_dir = Path(tempfile.gettempdir()) / "medadapt_bench_cls_cache"
    if not runs:  # a fresh benchmark pays the probe's one-off encoding in its first run
        shutil.rmtree(cache_dir, ignore_errors=True)
    for seed in args.seeds:
        for method in args.methods:
            for fraction in args.fractions:
                if run_key(method, fraction, seed) in done:
                    continue
                with tempfile.TemporaryDirectory() as tmp:  # run folders are not results
                    spec = {"method": method, "fraction": fraction, "seed": seed, "steps": args.steps,
                            "batch_size": args.batch_size, "img_size": args.img_size,
                            "cache_dir": str(cache_dir), "out": str(Path(tmp) / "run")}
                    row = one_run(spec)
                runs.append(row)
                result["machine"]["load_avg_end"] = os.getloadavg()
                result["provenance"] = provenance.finish(result["provenance"])
                write_json(args.out, result)  # after every run: resumable
                print(f"{method:13s} {100 * fraction:5.1f}% seed {seed} ({row['train_images']:4d} images)  "
                      f"AUROC {row['auroc']:.4f}  {row['fit_s']:6.1f} s  {row['peak_rss_mb']:6.0f} MB", flush=True)


def markdown_table(runs: list[dict]) -> str:
    methods = list(dict.fromkeys(r["method"] for r in runs))
    fractions = sorted({r["fraction"] for r in runs})
    lines = ["| method | trainable params | " + " | ".join(f"AUROC {100 * f:g} %" for f in fractions)
             + " | fit s / run | peak RSS MB |", "|---|---:|" + "---:|" * len(fractions) + "---:|---:|"]
    for m in methods:
        rows = [r for r in runs if r["method"] == m]
        cells = []
        for f in fractions:
            a = np.array([r["auroc"] for r in rows if r["fraction"] == f], dtype=float)
            cells.append("—" if not len(a) else f"{a.mean():.4f} ± {a.std(ddof=1) if len(a) > 1 else 0:.4f} (n={len(a)})")
        fit = np.array([r["fit_s"] for r in rows])
        rss = max(r["peak_rss_mb"] for r in rows)
        lines.append(f"| {m} | {rows[0]['trainable_params']:,} | " + " | ".join(cells)
                     + f" | {fit.mean():.0f} (min {fit.min():.0f}, max {fit.max():.0f}) | {rss:.0f} |")
    return "\n".join(lines)


def main() -> None:
    import json

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=["protocol", "speed"], default="protocol")
    ap.add_argument("--methods", nargs="+", default=list(PROTOCOL_METHODS), choices=list(PROTOCOL_METHODS))
    ap.add_argument("--fractions", nargs="+", type=float, default=[0.01, 0.1, 1.0])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--img-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--backbones", nargs="+", default=["litemedsam", "vit_small_patch16"],
                    help="speed part")
    ap.add_argument("--recipes", nargs="+", default=["full", "encoder-lora", "head"], help="speed part")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "classification.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    # what decides a run's numbers; --methods / --fractions / --seeds only pick which runs (they merge)
    protocol = {k: getattr(args, k) for k in ("steps", "batch_size", "img_size", "threads")}
    result = json.loads(args.out.read_text()) if args.out.is_file() else {}
    for stale in ("args", "fractions"):  # the earlier script's single-seed LoRA sweep, superseded
        result.pop(stale, None)
    if result.get("protocol", protocol) != protocol and args.part == "protocol":
        sys.exit(f"{args.out} holds runs of another protocol ({result.get('protocol')}); move it away first")
    result.setdefault("machine", {"platform": platform.platform(), "processor": platform.processor(),
                                  "cpus": os.cpu_count(), "torch": torch.__version__,
                                  "load_avg_start": os.getloadavg()})
    result["protocol"] = protocol
    prov = provenance.start(resumed=bool(result.get("runs")))
    result["provenance"] = prov
    result["choices"] = ("input 32 px; AdamW, 10 % warm-up + cosine, wd 0.05, batch 16, fixed step budget for every "
                         "method and fraction; no augmentation; final model (no checkpoint selection); AUROC on all "
                         "524 val images; linear probe on disk-cached pooled features; all runs in one process, peak RSS "
                         "mark reset before each run")
    if args.part == "speed":
        result["speed"] = bench_speed(args.backbones, args.recipes, args.batch_size)
    else:
        bench_protocol(args, result)
        result["table_markdown"] = markdown_table(result["runs"])
        print(result["table_markdown"])
    result["machine"]["load_avg_end"] = os.getloadavg()
    result["provenance"] = provenance.finish(prov)
    write_json(args.out, result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
