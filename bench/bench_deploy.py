"""Deployment speed and accuracy: LiteMedSAM on eager PyTorch vs ONNX Runtime vs OpenVINO, fp32 / bf16 / int8.

One run measures, with a fixed thread count (default 2):
1. encoder latency per 256×256 slice on real hippocampus slices, batch 1 (the official path) and
   batched, for every engine × precision;
2. whole-volume time and DSC on held-out hippocampus volumes with the CVPR24 procedure (one 3D box
   per class, box propagation), every slice encoded once at medadapt's default batch size (1 on a
   CPU; ``--volume-batch`` to change) — the DSC beside each timing;
   eager fp32 batch-1 per-object encoding (the official code's path) is the reference;
3. whole-volume time on a synthetic 512×512×100 CT-sized volume (3 objects spanning the slices);
4. CVPR24 ``.npz`` in, ``segs`` out: ``medadapt predict`` as a new process per case, timed end to
   end including Python start-up and model load, for the best engine and the eager baseline.

int8 graphs are calibrated on slices of the *first* hippocampus cases (training side); volumes are
evaluated on the last ``--cases`` cases. Exports are made once into bench/results/tmp/deploy.

    .venv/bin/python bench/bench_deploy.py [--cases 4] [--threads 2] [--repeats 5] [--batch 8] [--volume-batch N]

Writes bench/results/deploy.json and prints Markdown tables.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MEDADAPT_SHARED", ROOT.parent / "shared"))
WORK = ROOT / "bench" / "results" / "tmp" / "deploy"
CONFIGS = (  # (engine, precision)
    ("torch", "fp32"), ("torch", "bf16"), ("onnxruntime", "fp32"), ("onnxruntime", "int8"),
    ("openvino", "fp32"), ("openvino", "bf16"), ("openvino", "mixed"), ("openvino", "int8"),
)


def label(engine: str, precision: str) -> str:
    return f"{engine} {precision}"


def make_exports(calibration_keys: list[str], n_calib: int, model_name: str = "litemedsam",
                 checkpoint: Path | None = None) -> dict[str, Path]:
    from medadapt.deploy.export import MANIFEST, export_model
    from medadapt.deploy.quantize import calibration_images
    from medadapt.models.registry import build_model, get_sam_spec

    spec = get_sam_spec(model_name)
    model = build_model(model_name, checkpoint=checkpoint).eval()
    out = {}
    calib = None
    for fmt in ("onnx", "openvino"):
        folder = WORK / fmt if model_name == "litemedsam" else WORK / model_name / fmt
        if not (folder / MANIFEST).is_file():
            if calib is None:
                calib_dir = WORK / "calibration_data"
                _subset_dataset(calib_dir, calibration_keys)
                calib = calibration_images(str(calib_dir), spec, count=n_calib)
            export_model(model, spec, folder, fmt=fmt, source={"model": model_name, "checkpoint": str(checkpoint)},
                         calibration=calib, overwrite=True)
        out[fmt] = folder
    return out


def _subset_dataset(dest: Path, keys: list[str]) -> None:
    """An MSD-layout folder holding only ``keys`` (symlinks), so calibration never sees test volumes."""
    src = SHARED / "data" / "hippocampus"
    shutil.rmtree(dest, ignore_errors=True)
    for sub in ("imagesTr", "labelsTr"):
        (dest / sub).mkdir(parents=True)
        for k in keys:
            (dest / sub / f"{k}.nii.gz").symlink_to(src / sub / f"{k}.nii.gz")
    meta = json.loads((src / "dataset.json").read_text())
    meta["training"] = [t for t in meta.get("training", []) if Path(t["image"]).name.split(".")[0] in keys]
    (dest / "dataset.json").write_text(json.dumps(meta))


def predictor_for(engine: str, precision: str, exports: dict[str, Path], batch: int, threads: int,
                  model_name: str = "litemedsam", checkpoint: Path | None = None):
    from medadapt.deploy.backend import load_predictor
    from medadapt.infer.factory import PredictorSpec

    export = None if engine == "torch" else exports["onnx" if engine == "onnxruntime" else "openvino"]
    return load_predictor(PredictorSpec(model=model_name, backend=engine, precision=precision, export=export,
                                        checkpoint=checkpoint if engine == "torch" else None, batch_size=batch,
                                        threads=threads))


def time_encoders(predictors: dict, slices: torch.Tensor, batch: int, repeats: int) -> dict[str, dict]:
    """Median ms per slice, batch 1 and ``batch``, of every predictor's encoder on real slices.

    Rounds are interleaved (every config once per round) so a change in machine load hits all
    configs alike instead of whichever ran first.
    """
    times = {name: {1: [], batch: []} for name in predictors}
    for pred in predictors.values():  # warm-up (and OpenVINO first-inference set-up)
        pred._encode_batch(slices[:1])
        pred._encode_batch(slices[:batch])
    for _ in range(repeats):
        for name, pred in predictors.items():
            for b in (1, batch):
                x = slices[:b]
                t = time.perf_counter()
                pred._encode_batch(x)
                times[name][b].append((time.perf_counter() - t) / len(x))
    return {name: {"batch1_ms": 1000 * statistics.median(t[1]), f"batch{batch}_ms": 1000 * statistics.median(t[batch])}
            for name, t in times.items()}


def official_volume_boxes3d(predictor, image, boxes, classes, axis):
    """The official CVPR24 path: each object's slices encoded for that object alone, batch 1."""
    from medadapt.infer.volume import segment_volume_boxes3d

    seg = np.zeros(image.shape, np.uint16)
    for box, cls in zip(boxes, classes, strict=True):
        part = segment_volume_boxes3d(predictor, image, box[None], slice_axis=axis, values=[int(cls)])
        seg[part > 0] = part[part > 0]
    return seg


def synthetic_ct(shape=(100, 512, 512), seed=0) -> tuple[np.ndarray, np.ndarray]:
    """A CT-sized volume (slices first) with three ellipsoids spanning most slices, 0..255."""
    rng = np.random.default_rng(seed)
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    image = rng.normal(60, 10, shape).astype(np.float32)
    label = np.zeros(shape, np.uint8)
    for i, (cy, cx, r) in enumerate(((200, 180, 70), (300, 330, 90), (380, 200, 50)), start=1):
        inside = ((z - 50) / 48.0) ** 2 + ((y - cy) / r) ** 2 + ((x - cx) / (r * 1.2)) ** 2 <= 1
        image[inside] += 60 * i
        label[inside] = i
    return np.clip(image, 0, 255).astype(np.uint8), label


def cvpr24_cases(keys: list[str], dataset, dest: Path) -> Path:
    """Hippocampus test volumes as CVPR24 ``3D_*.npz`` files (imgs, gts, boxes, spacing)."""
    from medadapt.data.prompts import boxes3d_from_label

    dest.mkdir(parents=True, exist_ok=True)
    for k in keys:
        image, lab, spacing, axis = dataset.load(k)
        img = np.moveaxis(image, axis, 0)
        gts = np.moveaxis(lab, axis, 0)
        boxes, _ = boxes3d_from_label(gts, 0)
        sp = [spacing[axis], *[s for a, s in enumerate(spacing) if a != axis]]
        np.savez_compressed(dest / f"3D_hippo_{k}.npz", imgs=img, gts=gts, boxes=boxes, spacing=np.asarray(sp))
    return dest


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=4, help="held-out hippocampus volumes (the last ones)")
    ap.add_argument("--calibration-cases", type=int, default=6)
    ap.add_argument("--calibration-images", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batch", type=int, default=8, help="the batched column of the encoder table")
    ap.add_argument("--volume-batch", type=int, default=None,
                    help="slices per encoder call in the volume runs (default: medadapt's, 1 on a CPU)")
    ap.add_argument("--configs", nargs="*", default=[f"{e}:{p}" for e, p in CONFIGS])
    ap.add_argument("--model", default="litemedsam", help="e.g. a distilled student (with --checkpoint)")
    ap.add_argument("--checkpoint", type=Path, default=None, help="weights of --model (merged student file)")
    ap.add_argument("--encoder-only", action="store_true", help="only the encoder latency table")
    ap.add_argument("--skip-official", action="store_true", help="skip the slow per-object batch-1 reference")
    ap.add_argument("--skip-synthetic", action="store_true")
    ap.add_argument("--skip-npz", action="store_true")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "deploy.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(ROOT / "bench"))
    import provenance
    from bench_inference import machine_info
    from medadapt.data.datasets import load_segmentation_dataset
    from medadapt.data.prompts import boxes3d_from_label
    from medadapt.data.slices import iter_slices
    from medadapt.deploy.runtime import cpu_has_bf16
    from medadapt.infer.volume import segment_volume_boxes3d
    from medadapt.metrics.segmentation import case_metrics
    from medadapt.models.preprocess import preprocess_image
    from medadapt.models.registry import get_sam_spec

    configs = [tuple(c.split(":")) for c in args.configs]
    if not cpu_has_bf16():
        configs = [c for c in configs if c[1] not in ("bf16", "mixed")]
    dataset = load_segmentation_dataset(SHARED / "data" / "hippocampus")
    keys = dataset.keys()
    calib_keys, test_keys = keys[: args.calibration_cases], keys[-args.cases :]
    result = {"machine": machine_info(args.threads), "args": {k: str(v) for k, v in vars(args).items()},
              "calibration_cases": calib_keys, "test_cases": test_keys, "encoder": {}, "volumes": {},
              "synthetic_ct": {}, "cvpr24_npz": {}, "provenance": provenance.start()}
    t0 = time.perf_counter()
    exports = make_exports(calib_keys, args.calibration_images, args.model, args.checkpoint)
    result["export_seconds"] = time.perf_counter() - t0

    spec = get_sam_spec(args.model)
    samples = list(iter_slices(dataset, test_keys))[: args.batch]
    slices = torch.stack([preprocess_image(np.repeat(s.image[:, :, None], 3, -1), spec)[0] for s in samples])

    # 1. encoder latency, interleaved rounds
    predictors = {label(e, p): predictor_for(e, p, exports, args.batch, args.threads, args.model, args.checkpoint)
                  for e, p in configs}
    result["encoder"] = time_encoders(predictors, slices, args.batch, args.repeats)
    del predictors
    for name, r in result["encoder"].items():
        print(name, r, flush=True)

    if args.encoder_only:
        args.skip_synthetic = args.skip_npz = True
        test_keys = []
    # 2. hippocampus volumes, CVPR24 procedure
    loaded = {k: dataset.load(k) for k in test_keys}
    boxes = {k: boxes3d_from_label(v.label, v.slice_axis) for k, v in loaded.items()}
    runs = [("official", "torch", "fp32")] if not (args.skip_official or args.encoder_only) else []
    runs += [("cached", e, p) for e, p in configs] if not args.encoder_only else []
    for mode, engine, precision in runs:
        name = "eager fp32, per object, batch 1 (official)" if mode == "official" else label(engine, precision)
        pred = predictor_for(engine, precision, exports, 1 if mode == "official" else args.volume_batch, args.threads)
        total, dscs, per_case = 0.0, [], {}
        for k, case in loaded.items():
            b, cls = boxes[k]
            t = time.perf_counter()
            if mode == "official":
                seg = official_volume_boxes3d(pred, case.image, b, cls, case.slice_axis)
            else:
                seg = segment_volume_boxes3d(pred, case.image, b, slice_axis=case.slice_axis, values=[int(c) for c in cls])
            secs = time.perf_counter() - t
            d = [m["dsc"] for m in case_metrics(case.label, seg, case.spacing)]
            per_case[k] = {"seconds": secs, "dsc": d}
            total += secs
            dscs += d
        result["volumes"][name] = {"total_seconds": total, "mean_dsc": float(np.mean(dscs)), "cases": per_case,
                                   "images_encoded": pred.images_encoded}
        print(name, total, float(np.mean(dscs)), flush=True)

    # 3. synthetic CT-sized volume
    if not args.skip_synthetic:
        image, lab = synthetic_ct()
        b, cls = boxes3d_from_label(lab, 0)
        for engine, precision in configs:
            pred = predictor_for(engine, precision, exports, args.volume_batch, args.threads)
            t = time.perf_counter()
            seg = segment_volume_boxes3d(pred, image, b, slice_axis=0, values=[int(c) for c in cls])
            secs = time.perf_counter() - t
            result["synthetic_ct"][label(engine, precision)] = {
                "seconds": secs, "images_encoded": pred.images_encoded, "shape": list(image.shape),
                "dsc_vs_truth": [float(2 * ((seg == c) & (lab == c)).sum() / ((seg == c).sum() + (lab == c).sum()))
                                 for c in cls],
            }
            print("synthetic", engine, precision, secs, flush=True)

    # 4. CVPR24 npz end to end, one process per case
    if not args.skip_npz:
        with tempfile.TemporaryDirectory() as tmp:
            npz_dir = cvpr24_cases(test_keys, dataset, Path(tmp) / "imgs")
            best = min((c for c in configs if c[0] != "torch"),
                       key=lambda c: result["encoder"][label(*c)]["batch1_ms"], default=None)
            for engine, precision in [("torch", "fp32"), *([best] if best else [])]:
                times = {}
                for f in sorted(npz_dir.glob("*.npz")):
                    out_dir = Path(tmp) / f"segs_{engine}_{precision}"
                    cmd = [str(ROOT / ".venv" / "bin" / "medadapt"), "predict", "--input", str(f), "--prompts", "file-boxes",
                           "--out", str(out_dir), "--engine", engine, "--precision", precision, "--threads", str(args.threads)]
                    if args.volume_batch:
                        cmd += ["--batch-size", str(args.volume_batch)]
                    if engine != "torch":
                        cmd += ["--export", str(exports["onnx" if engine == "onnxruntime" else "openvino"])]
                    t = time.perf_counter()
                    subprocess.run(cmd, check=True, capture_output=True)
                    times[f.name] = time.perf_counter() - t
                result["cvpr24_npz"][label(engine, precision)] = {"per_case_seconds": times,
                                                                  "mean_seconds": float(np.mean(list(times.values())))}
                print("npz", engine, precision, result["cvpr24_npz"][label(engine, precision)]["mean_seconds"], flush=True)

    result["machine"]["load_avg_end"] = os.getloadavg()
    result["provenance"] = provenance.finish(result["provenance"])
    base = result["encoder"][label("torch", "fp32")]["batch1_ms"]
    ref_dsc = result["volumes"].get(label("torch", "fp32"), {}).get("mean_dsc")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print_tables(result, args.batch, base, ref_dsc)
    print(f"\nwrote {args.out}")
    return 0


def print_tables(result: dict, batch: int, base_ms: float, ref_dsc: float | None) -> None:
    m = result["machine"]
    print(f"\nLiteMedSAM encoder per 256×256 slice, {m['torch_threads']} threads "
          f"(load avg {m['load_avg_start'][0]:.1f} → {m['load_avg_end'][0]:.1f})")
    print(f"| engine, precision | ms / slice, batch 1 | ms / slice, batch {batch} | speed-up vs eager fp32 batch 1 |")
    print("|---|---|---|---|")
    for name, r in result["encoder"].items():
        best = min(r["batch1_ms"], r[f"batch{batch}_ms"])
        print(f"| {name} | {r['batch1_ms']:.0f} | {r[f'batch{batch}_ms']:.0f} | {base_ms / best:.1f}x |")
    print(f"\nHippocampus, {len(result['test_cases'])} held-out volumes, CVPR24 3D boxes + propagation")
    official = next((r["total_seconds"] for n, r in result["volumes"].items() if "official" in n), None)
    print("| path | total s | speed-up vs official | mean DSC | ΔDSC vs torch fp32 |\n|---|---|---|---|---|")
    for name, r in result["volumes"].items():
        delta = "" if ref_dsc is None else f"{r['mean_dsc'] - ref_dsc:+.4f}"
        speed = "" if official is None else f"{official / r['total_seconds']:.2f}x"
        print(f"| {name} | {r['total_seconds']:.1f} | {speed} | {r['mean_dsc']:.4f} | {delta} |")
    if result["synthetic_ct"]:
        print("\nSynthetic CT-sized volume 512×512×100, 3 objects, CVPR24 procedure")
        print("| path | seconds | slices encoded |\n|---|---|---|")
        for name, r in result["synthetic_ct"].items():
            print(f"| {name} | {r['seconds']:.1f} | {r['images_encoded']} |")
    if result["cvpr24_npz"]:
        print("\nCVPR24 .npz in, segs out: `medadapt predict` per case, end to end incl. start-up and model load")
        print("| path | mean s / case |\n|---|---|")
        for name, r in result["cvpr24_npz"].items():
            print(f"| {name} | {r['mean_seconds']:.1f} |")


if __name__ == "__main__":
    sys.exit(main())
