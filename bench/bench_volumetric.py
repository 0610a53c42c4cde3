"""Benchmark volumetric few-shot adaptation on CPU.

    .venv/bin/python bench/bench_volumetric.py [--part speed|fewshot|all] [--threads N]
        [--backbones swinunetr unet3d] [--recipes full decoder encoder-lora bias norm linear-probe]
        [--shots 1 5] [--pretrain-steps 300] [--adapt-steps 100] [--seed 0]

``speed``: the real architectures (Swin UNETR feature_size 48, DynUNet 32..320) at their 96^3 crop:
seconds per optimiser step (batch 1, forward + backward + AdamW) for each recipe, the trainable
parameter count, and seconds for a Gaussian-blended sliding-window prediction of a 96 x 96 x 96 volume
(random weights: speed does not depend on them; no published 3D weights ship with medadapt).

``fewshot``: MSD hippocampus (``../shared/data/hippocampus``, MR, 1 mm). Without published weights, the
pretrained model is made here the way SuPreM / the universal model are made, with partial labels:
a DynUNet with one sigmoid channel per class is pretrained on the labelled pool, half of the volumes
labelling only "anterior", the other half only "posterior" (each class masked out where unlabelled).
It is then adapted to "anterior" with k support volumes (linear probe initialised from the pretrained
anterior row, with and without the transductive proportion constraint, and full fine-tuning), and
every model is evaluated on the 20 held-out volumes on their original grid (sliding window, inverse
transforms) with the official-convention DSC and NSD (2 mm). Support volumes never overlap the test set.

Prints tables and writes bench/results/volumetric.json with the machine it ran on.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from medadapt.adapt.recipes import apply_recipe
from medadapt.data.transforms3d import VolumePreprocessing, preprocess_transforms
from medadapt.data.volume_dataset import (
    few_shot_volumes,
    load_volume_dataset,
    volume_preprocessing,
    volume_records,
)
from medadapt.engine.config import TrainConfig
from medadapt.engine.pretrain import ClassTemplate, PartialLabelTask
from medadapt.engine.trainer import Trainer
from medadapt.engine.transductive import ConstraintConfig, ProportionConstraint
from medadapt.engine.volumetric_task import VolumetricTask, volumetric_recipe
from medadapt.evaluate.segmentation import case_metrics
from medadapt.infer.sliding_window import segment_volume, sliding_window_logits
from medadapt.io.atomic import write_json
from medadapt.io.volumes import read_volume
from medadapt.models.volumetric import build_volumetric, replace_head

ROOT = Path(__file__).resolve().parents[1]
HIPPO = ROOT.parent / "shared" / "data" / "hippocampus"
BENCH_UNET = {"strides": [1, 2, 2, 2], "filters": [16, 32, 64, 128]}
ROI = (32, 32, 32)


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_speed(backbones: list[str], recipes: list[str], repeats: int = 2) -> list[dict]:
    rows = []
    x = torch.randn(1, 1, 96, 96, 96)
    for name in backbones:
        for recipe in recipes:
            if name == "unet3d" and recipe.startswith("encoder-"):
                continue  # no transformer blocks in a 3D U-Net
            torch.manual_seed(0)
            model = build_volumetric(name, 14)
            applied = apply_recipe(model, volumetric_recipe(model, recipe))
            opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
            target = torch.randint(0, 14, (1, 96, 96, 96))
            times = []
            for _ in range(repeats + 1):
                t = time.perf_counter()
                loss = torch.nn.functional.cross_entropy(model(x), target)
                opt.zero_grad()
                loss.backward()
                opt.step()
                times.append(time.perf_counter() - t)
            row = {
                "backbone": name,
                "recipe": recipe,
                "trainable": applied.trainable,
                "total": applied.total,
                "s_per_step": float(np.median(times[1:])),
                "peak_rss_mb": _rss_mb(),
            }
            rows.append(row)
            print(
                f"{name:10s} {recipe:16s} {applied.trainable:>11,d} params  {row['s_per_step']:7.2f} s/step",
                flush=True,
            )
        model = build_volumetric(name, 14)
        t = time.perf_counter()
        sliding_window_logits(model, x, (96, 96, 96), overlap=0.5)
        rows.append({"backbone": name, "recipe": "inference-96^3", "s_per_volume": time.perf_counter() - t})
        print(f"{name:10s} sliding-window 96^3: {rows[-1]['s_per_volume']:.2f} s", flush=True)
    return rows


def _evaluate(model, ds, keys, prep, sigmoid: bool) -> dict:
    dsc, nsd = [], []
    for key in keys:
        case = ds.case(key)
        vol = read_volume(case.image)
        gt = read_volume(case.label, label=True).array
        seg = segment_volume(model, vol, prep, ROI, overlap=0.5, sigmoid=sigmoid, largest_component=True)
        row = case_metrics((gt == 1).astype(np.uint8), (seg == 1).astype(np.uint8), vol.spacing, classes=[1])[
            0
        ]
        dsc.append(row["dsc"])
        nsd.append(row["nsd"])
    return {
        "dsc": float(np.mean(dsc)),
        "dsc_std": float(np.std(dsc)),
        "nsd": float(np.mean(nsd)),
        "n": len(keys),
    }


def bench_fewshot(shots: list[int], pretrain_steps: int, adapt_steps: int, seed: int) -> list[dict]:
    ds = load_volume_dataset(HIPPO)
    prep = volume_preprocessing(ds, VolumePreprocessing(spacing=None))
    full_split = few_shot_volumes(ds, 40, seed=seed, n_val=0)  # the whole labelled pool
    test = list(full_split.test)
    pool = list(full_split.train)
    work = Path(tempfile.mkdtemp(prefix="bench_volumetric_"))
    rows: list[dict] = []

    # 1. partial-label pretraining: sigmoid channels [anterior, posterior]
    template = ClassTemplate(("anterior", "posterior"), {"A": {1: "anterior"}, "B": {2: "posterior"}})
    torch.manual_seed(seed)
    base = build_volumetric("unet3d", 2, **BENCH_UNET)
    records = {"A": volume_records(ds, pool[::2]), "B": volume_records(ds, pool[1::2])}
    task = PartialLabelTask(base, template, records, prep, ROI, batch_size=2, num_samples=2, seed=seed)
    cfg = TrainConfig(
        max_steps=pretrain_steps,
        epochs=None,
        lr=3e-3,
        weight_decay=1e-5,
        warmup_ratio=0.05,
        progress=False,
        tensorboard=False,
        seed=seed,
    )
    t = time.perf_counter()
    Trainer(cfg, task, work / "pretrain").fit()
    pre_s = time.perf_counter() - t
    state = {k: v.clone() for k, v in base.state_dict().items()}
    zs = _evaluate(base, ds, test, prep, sigmoid=True)
    rows.append({"method": "pretrained (zero-shot)", "shots": 0, **zs, "train_s": pre_s})
    print(
        f"pretrained zero-shot anterior: DSC {zs['dsc']:.3f} NSD {zs['nsd']:.3f}  ({pre_s:.0f} s)", flush=True
    )

    # 2. few-shot adaptation to "anterior" (binary, one sigmoid channel)
    for k in shots:
        split = few_shot_volumes(ds, k, seed=seed, n_val=0)
        assert not set(split.train) & set(test)
        for method in ("linear-probe", "linear-probe+transductive", "full"):
            torch.manual_seed(seed)
            model = build_volumetric("unet3d", 2, **BENCH_UNET)
            model.load_state_dict(state)
            replace_head(
                model,
                "linear",
                1,
                rows=[0],
                pretrained={"weight": state["head.conv.conv.weight"], "bias": state["head.conv.conv.bias"]},
            )
            recipe = "full" if method == "full" else "linear-probe"
            tc = None
            if method.endswith("transductive"):
                model.backbone.requires_grad_(False)
                # transductive on one unlabelled test volume, as FSEFT adapts per query volume
                q = preprocess_transforms(prep, keys=("image",))({"image": str(ds.case(test[0]).image)})[
                    "image"
                ]
                sup = [
                    preprocess_transforms(prep, label_map={1: 1})(r)["label"][0].numpy()
                    for r in volume_records(ds, split.train)
                ]
                tc = ProportionConstraint(
                    model,
                    q[None].as_tensor(),
                    sup,
                    ROI,
                    config=ConstraintConfig(warmup_epochs=adapt_steps // 2),
                )
            task = VolumetricTask(
                model,
                volume_records(ds, split.train),
                [],
                prep,
                recipe=recipe,
                roi_size=ROI,
                sigmoid=True,
                label_map={1: 1},
                class_names=["anterior"],
                transductive=tc,
                num_samples=2,
                fixed_crops=8,
                seed=seed,
            )
            steps_per_epoch = max(1, len(list(task.train_batches(0))))
            cfg = TrainConfig(
                max_steps=adapt_steps,
                epochs=None,
                lr=1e-3 if recipe == "full" else 1e-2,
                weight_decay=1e-5,
                progress=False,
                tensorboard=False,
                seed=seed,
            )
            if tc is not None:
                tc.config = ConstraintConfig(warmup_epochs=max(1, adapt_steps // (2 * steps_per_epoch)))
            t = time.perf_counter()
            Trainer(cfg, task, work / f"k{k}_{method}").fit()
            train_s = time.perf_counter() - t
            res = _evaluate(model, ds, test, prep, sigmoid=True)
            rows.append(
                {"method": method, "shots": k, "trainable": task.applied.trainable, **res, "train_s": train_s}
            )
            print(
                f"k={k} {method:26s} DSC {res['dsc']:.3f}±{res['dsc_std']:.3f} NSD {res['nsd']:.3f} "
                f"({task.applied.trainable:,} params, {train_s:.0f} s)",
                flush=True,
            )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=["speed", "fewshot", "all"], default="all")
    ap.add_argument("--backbones", nargs="+", default=["swinunetr", "unet3d"])
    ap.add_argument(
        "--recipes",
        nargs="+",
        default=["full", "decoder", "encoder-lora", "encoder-adapter", "bias", "norm", "linear-probe"],
    )
    ap.add_argument("--shots", nargs="+", type=int, default=[1, 5])
    ap.add_argument("--pretrain-steps", type=int, default=300)
    ap.add_argument("--adapt-steps", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    out = {
        "machine": {
            "platform": platform.platform(),
            "python": sys.version.split()[0],
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "cpus": os.cpu_count(),
        }
    }
    if args.part in ("speed", "all"):
        out["speed"] = bench_speed(args.backbones, args.recipes)
    if args.part in ("fewshot", "all"):
        out["fewshot"] = bench_fewshot(args.shots, args.pretrain_steps, args.adapt_steps, args.seed)
    path = ROOT / "bench" / "results" / "volumetric.json"
    write_json(path, out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
