"""Benchmark encoder distillation: LiteMedSAM (teacher) vs a distilled student on hippocampus.

    .venv/bin/python bench/bench_distill.py [--student litemedsam_student_s] [--train-slices 240]
        [--steps 80] [--batch-size 6] [--lr 1e-3] [--precision fp32|bf16] [--test-volumes 5] [--repeats 10]
        [--threads 2] [--work DIR] [--cache-dir DIR]

1. Split ``../shared/data/hippocampus`` with the few-shot protocol (seed 0): the 20 fixed test
   volumes are held out, validation volumes come from the pool, the rest is the training split.
2. ``medadapt distill`` on training-split slices only (``--train-slices`` evenly spaced, every slice
   including unlabelled ones), teacher embeddings cached, random flips, ``--steps`` AdamW steps.
3. ``medadapt merge --student``: the student encoder under LiteMedSAM's prompt encoder and decoder.
4. Encoder latency per 256x256 slice (``--threads`` threads, median of ``--repeats`` after a warm-up)
   and box-prompt DSC (a 2D box per class on every slice holding it, volumes reassembled, scored in
   3D) on the first ``--test-volumes`` held-out volumes, teacher vs student, eager PyTorch fp32 and
   each ``--engines`` entry (e.g. ``openvino:mixed``; exported on first use into the medadapt cache),
   every row's ΔDSC against the teacher in PyTorch fp32.

Writes bench/results/distill.json (with ``os.getloadavg()`` at start and end: other jobs may share
the CPU) and prints a Markdown table. Full protocol (all training slices, all 20 test volumes, longer
training; hours on 2 CPU cores):

    .venv/bin/python bench/bench_distill.py --train-slices 100000 --steps 2000 --batch-size 8 --test-volumes 20
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import provenance
from medadapt.data.datasets import load_segmentation_dataset
from medadapt.data.fewshot import make_split
from medadapt.deploy.backend import load_predictor
from medadapt.deploy.distill import DistillOptions, run_distill
from medadapt.deploy.merge import merge_student
from medadapt.evaluate.segment_run import evaluate_dataset
from medadapt.infer.factory import PredictorSpec
from medadapt.infer.predictor import SamPredictor
from medadapt.io.atomic import write_json
from medadapt.models.registry import build_model, get_sam_spec
from medadapt.models.sam.student import count_macs

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "hippocampus"


def latency_ms(encode, repeats: int) -> dict:
    """Median / min ms of ``encode`` on one 256x256 slice, after a warm-up (and OpenVINO's first-inference set-up)."""
    x = torch.rand(1, 3, 256, 256)
    times = []
    with torch.no_grad():
        encode(x)
        for _ in range(repeats):
            t = time.perf_counter()
            encode(x)
            times.append((time.perf_counter() - t) * 1000)
    return {"median_ms": statistics.median(times), "min_ms": min(times), "all_ms": times}


def dsc_on(pred, dataset, keys) -> dict:
    rows, info = evaluate_dataset(pred, dataset, keys, mode="box")
    per_class: dict[int, list[float]] = {}
    for r in rows:
        per_class.setdefault(int(r["class"]), []).append(float(r["dsc"]))
    means = {c: float(np.nanmean(v)) for c, v in sorted(per_class.items())}
    return {"mean_dsc": float(np.mean(list(means.values()))), "dsc_per_class": means,
            "seconds": info["seconds"], "slices_encoded": info["images_encoded"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--student", default="litemedsam_student_s")
    ap.add_argument("--train-slices", type=int, default=240)
    ap.add_argument("--steps", type=int, default=80)
    ap.add_argument("--batch-size", type=int, default=6)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--precision", choices=("fp32", "bf16"), default="fp32", help="student training precision")
    ap.add_argument("--cache-dir", type=Path, default=None, help="on-disk teacher-embedding cache (reused by reruns)")
    ap.add_argument("--val-slices", type=int, default=16)
    ap.add_argument("--test-volumes", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", type=Path, default=None, help="Run folder (default: a temporary one).")
    ap.add_argument("--engines", nargs="*", default=["openvino:fp32", "openvino:mixed", "openvino:bf16"],
                    help="engine:precision rows besides eager fp32, for teacher and student")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    load_start = os.getloadavg()
    prov = provenance.start(resumed=(args.work is not None and (args.work / "distill" / "checkpoint" / "last.pt").is_file()))
    t0 = time.perf_counter()
    work = args.work or Path(tempfile.mkdtemp(prefix="bench_distill_"))

    dataset = load_segmentation_dataset(DATA)
    split = make_split(dataset, seed=0)
    test_keys = list(split.test[: args.test_volumes])
    run = work / "distill"
    opts = DistillOptions(
        data=str(DATA), out=str(run), student=args.student, teacher="litemedsam", max_train_slices=args.train_slices,
        max_val_slices=args.val_slices, max_steps=args.steps, batch_size=args.batch_size, lr=args.lr, warmup_steps=10,
        val_every=max(10, args.steps // 4), seed=0, progress=False, precision=args.precision,
        cache_dir=str(args.cache_dir) if args.cache_dir else None,
    )
    resume = (run / "checkpoint" / "last.pt").is_file()
    earlier = json.loads((run / "result.json").read_text()) if (run / "result.json").is_file() else {}
    res = run_distill(opts, resume=resume)
    if resume:  # a resumed run does not re-measure the agreement before training; keep the first one's
        res.update({k: earlier[k] for k in ("initial_val_mse", "initial_val_cos", "distill_seconds", "teacher_cache")
                    if earlier.get(k) is not None})
    assert not set(res_keys := json_keys(run / "split.json", "train")) & set(split.test), "test volume trained on"
    merged = work / "student.safetensors"
    merge_student(run, merged, teacher="litemedsam")

    teacher = build_model("litemedsam")
    student = build_model(args.student, checkpoint=merged)
    rows = {}
    for label, name, model, ckpt in (("LiteMedSAM (teacher)", "litemedsam", teacher, None),
                                     (f"{args.student}", args.student, student, merged)):
        enc = model.image_encoder.eval()
        rows[f"{label}, torch fp32"] = {
            "model": name, "engine": "torch", "precision": "fp32",
            "encoder_params": sum(p.numel() for p in enc.parameters()),
            "encoder_gmacs": count_macs(enc) / 1e9,
            "latency": latency_ms(enc, args.repeats),
            **dsc_on(SamPredictor(model, get_sam_spec(name), batch_size=1), dataset, test_keys),
        }
        for engine, precision in (e.split(":") for e in args.engines):
            pred = load_predictor(PredictorSpec(model=name, backend=engine, precision=precision, checkpoint=ckpt,
                                                batch_size=1, threads=args.threads))
            rows[f"{label}, {engine} {precision}"] = {
                "model": name, "engine": engine, "precision": precision,
                "latency": latency_ms(pred._encode_batch, args.repeats),
                **dsc_on(pred, dataset, test_keys),
            }
        print(label, "done", flush=True)
    base = rows["LiteMedSAM (teacher), torch fp32"]["mean_dsc"]
    for r in rows.values():
        r["dsc_diff_vs_teacher_fp32"] = r["mean_dsc"] - base
    load_end = os.getloadavg()
    out = {
        "what": "LiteMedSAM encoder distillation on hippocampus: latency per 256x256 slice and box-prompt DSC",
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
                    "torch": torch.__version__, "threads": args.threads},
        "loadavg_start": load_start,
        "loadavg_end": load_end,
        "settings": vars(args) | {"work": str(work)},
        "split": {"train_volumes": len(res_keys), "test_volumes_scored": test_keys,
                  "test_volumes_total": len(split.test)},
        "distill": {k: res[k] for k in ("train_slices", "val_slices", "steps", "initial_val_mse", "initial_val_cos",
                                         "best_metric", "distill_seconds", "teacher_cache", "init_tensors_from_teacher")},
        "results": rows,
        "total_seconds": time.perf_counter() - t0,
        "provenance": provenance.finish(prov),
    }
    history = (run / "metrics.csv").read_text().splitlines()
    out["distill"]["val_cos_curve"] = [line for line in history if ",val_cos," in line]
    write_json(ROOT / "bench" / "results" / "distill.json", out)

    print(f"\nloadavg start {load_start}, end {load_end}; {args.threads} threads; "
          f"{res['train_slices']} training slices, {res['steps']} steps, {len(test_keys)} held-out volumes\n")
    print_table(out)


def print_table(out: dict) -> None:
    """The latency / DSC table of a distill.json."""
    print("| encoder, engine | params | G multiply-adds | ms / slice (median, batch 1) | box DSC | ΔDSC vs teacher fp32 |")
    print("|---|---|---|---|---|---|")
    for label, r in out["results"].items():
        params = f"{r['encoder_params'] / 1e6:.2f} M" if "encoder_params" in r else ""
        macs = f"{r['encoder_gmacs']:.1f}" if "encoder_gmacs" in r else ""
        print(f"| {label} | {params} | {macs} | {r['latency']['median_ms']:.0f} | {r['mean_dsc']:.4f} | "
              f"{r['dsc_diff_vs_teacher_fp32']:+.4f} |")


def json_keys(path: Path, part: str) -> list[str]:
    return json.loads(path.read_text())[part]


if __name__ == "__main__":
    main()
