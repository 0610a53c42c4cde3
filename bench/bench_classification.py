"""Benchmark few-label classification: train-step cost per backbone / recipe, and AUROC vs label fraction.

    .venv/bin/python bench/bench_classification.py [--part speed|fractions|all]
        [--backbones litemedsam vit_small_patch16 vit_base_patch16] [--recipes full encoder-lora head]
        [--fractions 0.01 0.1] [--steps 60] [--batch-size 8] [--n-boot 1000] [--threads N]

``speed``: seconds per optimiser step (batch of ``--batch-size`` at each backbone's input size) and
inference images per second, with the trainable-parameter count of each recipe. ViTs use random
weights (no pre-trained ViT ships with medadapt); LiteMedSAM uses its real weights.

``fractions``: PneumoniaMNIST (``../shared/data/pneumoniamnist``), LiteMedSAM encoder + pooled head
(input ``--img-size``, default 64: its encoder keeps stride 4, so 256 px costs ~16x more on 28 px images),
trained for ``--steps`` steps on a stratified label fraction of the training split, then evaluated on
the whole validation split (524 images; the dev file has no test split) with AUROC, balanced accuracy
and a 95 % bootstrap CI. Every run uses the same steps, so the fraction (not the compute) differs.

Prints tables and writes bench/results/classification.json with the machine it ran on.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from medadapt.adapt import apply_recipe
from medadapt.data.classification import load_medmnist, sample_fraction
from medadapt.engine.classify_task import ClassificationTask, classifier_recipe
from medadapt.engine.config import TrainConfig
from medadapt.engine.trainer import Trainer
from medadapt.evaluate.classification import evaluate_scores, scores_from_logits
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


def bench_fractions(recipes: list[str], fractions: list[float], steps: int, batch_size: int, n_boot: int,
                    out_dir: Path, img_size: int | None) -> list[dict]:
    if not PNEUMONIA.is_file():
        sys.exit(f"{PNEUMONIA} not found: the fractions part needs ../shared")
    train_all, val = load_medmnist(PNEUMONIA, "train"), load_medmnist(PNEUMONIA, "val")
    rows = []
    for recipe in recipes:
        for fraction in fractions:
            train = train_all.subset(sample_fraction(train_all.labels, fraction, seed=0))
            torch.manual_seed(0)
            model = build_classifier("litemedsam", train.num_outputs, img_size=img_size)
            cfg = TrainConfig(lr=1e-3 if recipe != "full" else 1e-4, max_steps=steps, epochs=None,
                              batch_size=batch_size, warmup_ratio=0.1, weight_decay=0.01, progress=False,
                              tensorboard=False, log_every=10, seed=0)
            task = ClassificationTask(model, train, None, train_config=cfg,
                                      recipe=classifier_recipe(model, recipe, **lora_options(recipe)),
                                      base={"model": "litemedsam"})
            t = time.perf_counter()
            Trainer(cfg, task, out_dir / f"{recipe}_{fraction:g}").fit()
            train_s = time.perf_counter() - t
            t = time.perf_counter()
            probs = scores_from_logits(task.predict(val), val.task)
            eval_s = time.perf_counter() - t
            m = evaluate_scores(val.targets(), probs, val.task, class_names=val.class_names, n_boot=n_boot)
            row = {"recipe": recipe, "fraction": fraction, "input": model.input_spec.size, "train_images": len(train), "steps": steps,
                   "trainable": task.applied.trainable, "auroc": m["auroc"], "auroc_ci": m["auroc_ci"],
                   "balanced_accuracy": m["balanced_accuracy"], "accuracy": m["accuracy"],
                   "train_s": train_s, "eval_s": eval_s}
            rows.append(row)
            print(f"{recipe:13s} {100 * fraction:5.1f}% ({len(train):4d} images)  AUROC {m['auroc']:.3f} "
                  f"[{m['auroc_ci'][0]:.3f}, {m['auroc_ci'][1]:.3f}]  bal.acc {m['balanced_accuracy']:.3f}  "
                  f"train {train_s:6.0f} s  eval {eval_s:4.0f} s", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=["speed", "fractions", "all"], default="all")
    ap.add_argument("--backbones", nargs="+", default=["litemedsam", "vit_small_patch16", "vit_base_patch16"])
    ap.add_argument("--recipes", nargs="+", default=["full", "encoder-lora", "head"])
    ap.add_argument("--fractions", nargs="+", type=float, default=[0.01, 0.1])
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--img-size", type=int, default=64,
                    help="fractions part: LiteMedSAM input side (PneumoniaMNIST images are 28 px; 256 is ~16x slower)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "classification.json")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    result = {"machine": {"platform": platform.platform(), "processor": platform.processor(),
                          "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                          "torch": torch.__version__, "load_avg_start": os.getloadavg()},
              "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}}
    if args.part in ("speed", "all"):
        result["speed"] = bench_speed(args.backbones, args.recipes, args.batch_size)
    if args.part in ("fractions", "all"):
        with tempfile.TemporaryDirectory() as runs:  # run folders (checkpoints) are not results
            result["fractions"] = bench_fractions(args.recipes, args.fractions, args.steps, args.batch_size,
                                                  args.n_boot, Path(runs), args.img_size)
    result["machine"]["load_avg_end"] = os.getloadavg()
    write_json(args.out, result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
