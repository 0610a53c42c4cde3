"""Bare call time of the exported mask-decoder graphs a click can run, on ONNX Runtime.

A click on a slice decoded before runs the export's ``cached_decoder`` graph on the slice's
``decoder_image`` outputs; any other decode runs the full ``mask_decoder`` graph. This measures one
call of each (LiteMedSAM, a real hippocampus slice's embedding, a box + 1 positive click), fp32 and the
int8 decoder, with ONNX Runtime's graph optimisations as ``DeployedSam`` sets them (``default``) and,
for comparison, with the SkipLayerNormalization fusion left on (``+SkipLayerNormFusion``), which
``deploy.runtime`` turns off for the decoder graphs. Every variant is timed ``--calls`` times per
round, the variants in a rotated order each round; reported: the median over rounds of each round's
mean call, with the rounds' range. Writes bench/results/decoder_graphs.json with provenance.

    .venv/bin/python bench/bench_decoder_graphs.py --threads 1 2 --rounds 15
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import provenance  # noqa: E402

SHARED = Path(os.environ.get("MEDADAPT_SHARED", ROOT.parent / "shared"))
OUT = ROOT / "bench" / "results" / "decoder_graphs.json"

ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument("--data", default=str(SHARED / "data" / "hippocampus"))
ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
ap.add_argument("--rounds", type=int, default=15)
ap.add_argument("--calls", type=int, default=10)


def slice_embedding(data: str):
    """The LiteMedSAM embedding of the middle slice of the first test volume (torch encoder)."""
    import torch

    from medadapt.data.datasets import load_segmentation_dataset
    from medadapt.data.fewshot import make_split
    from medadapt.infer.factory import build_predictor

    dataset = load_segmentation_dataset(data)
    key = list(make_split(dataset, shots=1, seed=0).test)[0]
    image, _, _, axis = dataset.load(key)
    vol = np.moveaxis(image, axis, 0)
    pred = build_predictor("litemedsam", use_cache=True)
    with torch.no_grad():
        emb = pred.encode([pred.prepare(np.repeat(vol[vol.shape[0] // 2][..., None], 3, -1)).tensor])[0][None]
    return key, emb


def main() -> int:
    args = ap.parse_args()
    import torch

    from medadapt.deploy.backend import cached_export
    from medadapt.deploy.graphs import labelled_points
    from medadapt.deploy.runtime import DECODER_DISABLED_OPTIMIZERS, DeployedSam, OrtGraph

    prov = provenance.start()
    folder = cached_export("litemedsam", engine="onnxruntime", decoder_precision="int8")
    key, emb = slice_embedding(args.data)
    coords, labels = labelled_points((torch.tensor([[[110.0, 120.0]]]), torch.tensor([[1]])),
                                     torch.tensor([[60.0, 70.0, 160.0, 180.0]]))
    result = {"model": "litemedsam", "slice_of": key, "calls_per_round": args.calls, "rounds": args.rounds, "runs": []}
    for threads in args.threads:
        variants = {}
        for precision in ("fp32", "int8"):
            deployed = DeployedSam(folder, engine="onnxruntime", threads=threads, decoder_precision=precision)
            sparse = deployed.prompt(coords, labels)[0]
            side = deployed.decoder_image(emb).arrays
            x = np.ascontiguousarray(emb.numpy())
            inputs = {"mask_decoder": (x, deployed.image_pe, sparse, deployed.no_mask_dense),
                      "cached_decoder": (*side, sparse)}
            for graph, feed in inputs.items():
                path = folder / f"{graph}{'' if precision == 'fp32' else '.int8'}.onnx"
                for optimisers, disabled in (("default", DECODER_DISABLED_OPTIMIZERS), ("+SkipLayerNormFusion", ())):
                    variants[(graph, precision, optimisers)] = (OrtGraph(path, threads, disabled), feed)
        times: dict[tuple, list[float]] = {v: [] for v in variants}
        names = list(variants)
        for r in range(args.rounds):
            for v in names[r % len(names):] + names[: r % len(names)]:
                run, feed = variants[v]
                run(*feed)  # warm-up
                t = time.perf_counter()
                for _ in range(args.calls):
                    run(*feed)
                times[v].append(1000 * (time.perf_counter() - t) / args.calls)
        for (graph, precision, optimisers), ts in times.items():
            row = {"graph": graph, "decoder_precision": precision, "optimisers": optimisers, "threads": threads,
                   "ms": statistics.median(ts), "ms_range": [min(ts), max(ts)], "rounds_ms": ts}
            result["runs"].append(row)
            print(f"threads {threads} {graph:15s} {precision} {optimisers:21s} {row['ms']:6.1f} ms "
                  f"({min(ts):.1f}-{max(ts):.1f})", flush=True)
    provenance.save(OUT, result, prov)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
