"""LiteMedSAM CPU inference speed: eager float32 (the official path) vs medadapt's optimised path.

Measures, with a fixed number of torch threads (default 2):
1. encoder latency per 256×256 slice: batch 1 fp32 (official), batched fp32, batched bf16 autocast;
2. whole-volume time on hippocampus cases with boxes from labels (a 2D box per class on every
   labelled slice): the official procedure encodes each slice once per object, batch 1, fp32;
   medadapt encodes each slice once (embedding cache), at its default batch size (1 on a CPU, where
   the encoder table shows batching is slower; ``--volume-batch`` to change), on PyTorch (fp32, bf16) or on
   OpenVINO (fp32, bf16, mixed: fp32 stem + bf16 trunk; exported on first use into the medadapt
   cache); and the DSC of each, so a
   speed-up that changed the result would show. (All engines and int8: bench/bench_deploy.py.)

Writes bench/results/inference.json and prints a table.

    .venv/bin/python bench/bench_inference.py [--cases 4] [--threads 2] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MEDADAPT_SHARED", ROOT.parent / "shared"))


def machine_info(threads: int) -> dict:
    import medadapt

    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    return {
        "cpu_count": os.cpu_count(),
        "torch_threads": threads,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "medadapt": medadapt.__version__,
        "cpu_bf16": "avx512_bf16" in flags or "amx_bf16" in flags,
        "load_avg_start": os.getloadavg(),
    }


def time_encoder(model, batch: int, precision: str, repeats: int) -> float:
    """Median seconds per slice."""
    from medadapt.precision import autocast

    x = torch.rand(batch, 3, 256, 256)
    with torch.no_grad(), autocast(precision, model):
        model.encode(x)  # warm-up
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            model.encode(x)
            times.append((time.perf_counter() - t) / batch)
    return statistics.median(times)


def official_volume(predictor, image, label, axis):
    """Reference procedure: every (slice, class) encoded alone, batch 1, fp32."""
    from medadapt.data.prompts import boxes_from_label

    vol, lab = np.moveaxis(image, axis, 0), np.moveaxis(label, axis, 0)
    seg = np.zeros(lab.shape, dtype=np.uint16)
    for z in range(vol.shape[0]):
        if not lab[z].any():
            continue
        for p in boxes_from_label(lab[z], per="class"):
            out, _ = predictor.segment(vol[z], [p])
            seg[z][out > 0] = p.class_id
    return np.moveaxis(seg, 0, axis)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batch", type=int, default=16, help="the batched rows of the encoder table")
    ap.add_argument("--volume-batch", type=int, default=None, help="slices per encoder call in the volume runs")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "inference.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    import provenance
    from medadapt.data.datasets import load_segmentation_dataset
    from medadapt.deploy.backend import load_predictor
    from medadapt.infer.factory import PredictorSpec
    from medadapt.infer.predictor import SamPredictor
    from medadapt.infer.volume import segment_volume_from_labels
    from medadapt.io.atomic import write_json
    from medadapt.metrics.segmentation import case_metrics
    from medadapt.models.registry import build_model, get_sam_spec

    prov = provenance.start()
    spec = get_sam_spec("litemedsam")
    model = build_model("litemedsam").eval()
    result = {"machine": machine_info(args.threads), "args": {k: str(v) for k, v in vars(args).items()},
              "encoder": {}, "volumes": []}

    for name, batch, precision in (
        ("eager fp32, batch 1 (official)", 1, "fp32"),
        (f"fp32, batch {args.batch}", args.batch, "fp32"),
        (f"bf16 autocast, batch {args.batch}", args.batch, "bf16"),
    ):
        result["encoder"][name] = {"ms_per_slice": 1000 * time_encoder(model, batch, precision, args.repeats)}

    dataset = load_segmentation_dataset(SHARED / "data" / "hippocampus")
    keys = dataset.keys()[: args.cases]
    variants = {
        "official (per object, batch 1, fp32)": None,
        "medadapt fp32 (cache)": ("torch", "fp32"),
        "medadapt bf16 (cache)": ("torch", "bf16"),
        "medadapt OpenVINO fp32 (cache)": ("openvino", "fp32"),
        "medadapt OpenVINO bf16 (cache)": ("openvino", "bf16"),
        "medadapt OpenVINO mixed (cache)": ("openvino", "mixed"),
    }
    for key in keys:
        image, label, spacing, axis = dataset.load(key)
        row = {"case": key, "shape": list(label.shape)}
        for vname, precision in variants.items():
            if precision is None:
                pred = SamPredictor(model, spec, batch_size=1, precision="fp32")
                t = time.perf_counter()
                seg = official_volume(pred, image, label, axis)
            else:
                engine, prec = precision
                pred = load_predictor(PredictorSpec(model="litemedsam", backend=engine, precision=prec,
                                                    batch_size=args.volume_batch, threads=args.threads))
                t = time.perf_counter()
                seg = segment_volume_from_labels(pred, image, label, slice_axis=axis)
            secs = time.perf_counter() - t
            dsc = [m["dsc"] for m in case_metrics(label, seg, spacing)]
            row[vname] = {"seconds": secs, "images_encoded": pred.images_encoded, "dsc": dsc}
        result["volumes"].append(row)
    result["machine"]["load_avg_end"] = os.getloadavg()

    base = next(iter(variants))
    summary = {}
    for vname in variants:
        secs = sum(r[vname]["seconds"] for r in result["volumes"])
        dsc = float(np.mean([d for r in result["volumes"] for d in r[vname]["dsc"]]))
        summary[vname] = {"total_seconds": secs, "mean_dsc": dsc}
    for vname in variants:
        summary[vname]["speedup"] = summary[base]["total_seconds"] / summary[vname]["total_seconds"]
        summary[vname]["dsc_diff"] = summary[vname]["mean_dsc"] - summary[base]["mean_dsc"]
    result["summary"] = summary
    result["provenance"] = provenance.finish(prov)
    write_json(args.out, result)

    print_tables(result)
    print(f"\nwrote {args.out}")
    return 0


def print_tables(result: dict) -> None:
    """The encoder and whole-volume tables of an inference.json."""
    print(f"LiteMedSAM encoder, {result['machine']['torch_threads']} threads")
    print("| path | ms / slice |\n|---|---|")
    for name, r in result["encoder"].items():
        print(f"| {name} | {r['ms_per_slice']:.0f} |")
    print(f"\nWhole volumes, {len(result['volumes'])} hippocampus cases, boxes from labels")
    print("| path | total s | speed-up | mean DSC | ΔDSC |\n|---|---|---|---|---|")
    for vname, s in result["summary"].items():
        print(f"| {vname} | {s['total_seconds']:.1f} | {s['speedup']:.2f}x | {s['mean_dsc']:.4f} | {s['dsc_diff']:+.4f} |")


if __name__ == "__main__":
    sys.exit(main())
