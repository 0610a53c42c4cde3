"""A simulated annotator labels cases one after another in the studio, with and without adaptation in the loop.

The cases are the training pool of the fixed split (``make_split(dataset, shots=N, seed=0)``), in
order. Their images are copied into a temporary studio folder without labels (the studio writes labels
beside the images; the data folder is never written). For each case and class the annotator draws the
3D box of the class's label (the box on its middle slice, extended over the label's slice range), then
clicks where the current mask is most wrong (the CVPR 2025 click simulator, ``simulate_click``) until
the class's DSC reaches ``--target`` or ``--max-clicks`` clicks were made; then it saves the case. With
adaptation, the studio's background fit (``AdaptationLoop``, ``--steps`` steps) runs after each save
and the annotator waits for it, so that the next case is labelled with the new adapter.

Recorded per case and mode: clicks (all classes), whether every class reached the target, seconds of
interaction (box + clicks, model time included), and the fit's wall and CPU seconds (the process's CPU
time while the annotator waits for the fit: every thread of the fit). Writes
``bench/results/studio_loop.json`` (or ``--out``) with provenance (commit, UTC time, CPU, threads, load).

    .venv/bin/python bench/bench_studio_loop.py --cases 10 --steps 150 --threads 2
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import provenance  # noqa: E402

SHARED = Path(os.environ.get("MEDADAPT_SHARED", ROOT.parent / "shared"))
OUT = ROOT / "bench" / "results" / "studio_loop.json"


def label_case(studio, key: str, gt: np.ndarray, classes: list[int], target: float, max_clicks: int) -> dict:
    """Box + simulated clicks for every class of one case; returns clicks, seconds and final DSC per class."""
    from medadapt.metrics.interactive import simulate_click
    from medadapt.metrics.segmentation import dice

    oc = studio.open(key)
    axis = oc.slice_axis
    out = {"clicks": 0, "seconds": 0.0, "dsc": {}, "reached": True}
    for c in classes:
        want = gt == c
        if not want.any():
            continue
        idx = np.argwhere(want)
        lo, hi = idx.min(0), idx.max(0)
        mid = int((lo[axis] + hi[axis]) // 2)
        c0, c1 = lo.copy(), hi.copy()
        c0[axis] = c1[axis] = mid
        depth = int(max(mid - lo[axis], hi[axis] - mid))
        t = time.perf_counter()
        studio.box(key, c0.tolist(), c1.tolist(), value=c, space="voxel", depth=depth)
        out["seconds"] += time.perf_counter() - t
        for clicks in range(max_clicks + 1):
            labels, _ = studio.labels(key)
            score = dice(want, labels == c, empty=1.0)
            if score >= target or clicks == max_clicks:
                break
            click = simulate_click(want, labels == c)
            if click is None:
                break
            t = time.perf_counter()
            studio.click(key, list(click.index), positive=click.positive, value=c, space="voxel")
            out["seconds"] += time.perf_counter() - t
            out["clicks"] += 1
        out["dsc"][str(c)] = float(score)
        out["reached"] &= bool(score >= target)
    out["seconds"] = round(out["seconds"], 3)
    return out


def run_mode(adapt: bool, cases: list, dataset, args) -> list[dict]:
    from medadapt.studio.server import build_studio

    with tempfile.TemporaryDirectory(prefix="medadapt-studio-bench-") as tmp:
        root = Path(tmp) / "data"
        (root / "imagesTr").mkdir(parents=True)
        shutil.copy(dataset.root / "dataset.json", root / "dataset.json")
        for ref in cases:
            shutil.copy(ref.image, root / "imagesTr" / ref.image.name)
        studio, loop = build_studio(root, adapt=adapt, fit_steps=args.steps, echo=lambda _: None)
        classes = sorted(studio.folder.classes)
        rows = []
        for i, ref in enumerate(cases, start=1):
            key = next(k for k, c in studio.folder.cases.items() if c.image.name == ref.image.name)
            gt = dataset.load(ref.key).label
            row = {"case": i, "key": ref.key, "adapter": studio.adapter, "encoder_engine": studio.encoder_engine,
                   **label_case(studio, key, np.asarray(gt), classes, args.target, args.max_clicks)}
            studio.save(key)
            if loop is not None:
                t, cpu = time.perf_counter(), time.process_time()
                loop.request()
                loop.wait()
                row["fit_seconds"] = round(time.perf_counter() - t, 1)
                row["fit_cpu_seconds"] = round(time.process_time() - cpu, 1)
                row["fit"] = loop.last
            rows.append(row)
            print(f"{'adapt' if adapt else 'fixed'} case {i}: {row['clicks']} clicks, {row['seconds']:.1f} s,"
                  f" DSC {row['dsc']}" + (f", fit {row['fit_seconds']} s" if adapt else ""), flush=True)
        return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(SHARED / "data" / "hippocampus"))
    ap.add_argument("--cases", type=int, default=10)
    ap.add_argument("--steps", type=int, default=150, help="steps of each background fit")
    ap.add_argument("--target", type=float, default=0.90)
    ap.add_argument("--max-clicks", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--modes", nargs="+", default=["adapt", "fixed"], choices=["adapt", "fixed"])
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()

    from medadapt.data.datasets import load_segmentation_dataset
    from medadapt.data.fewshot import make_split
    from medadapt.io.atomic import write_json

    torch.set_num_threads(args.threads)
    prov = provenance.start()
    dataset = load_segmentation_dataset(args.data)
    split = make_split(dataset, shots=args.cases, seed=0)
    cases = [dataset.case(k) for k in split.train]
    result = {"data": Path(args.data).name, "cases": [c.key for c in cases], "steps": args.steps,
              "target_dsc": args.target, "max_clicks": args.max_clicks, "threads": args.threads, "modes": {}}
    for mode in args.modes:
        result["modes"][mode] = run_mode(mode == "adapt", cases, dataset, args)
    result["provenance"] = provenance.finish(prov)
    write_json(args.out, result)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
