"""Latency of a corrective click on a cached volume: mask decoder + re-propagation, per engine.

For each of a few held-out hippocampus volumes (the fixed test split), every slice of the objects'
3D boxes is encoded once (not timed; the torch encoder, shared by all engines through an in-memory
embedding cache), then the CVPR 2025 protocol runs: a 3D box per class, then ``--clicks`` simulated
clicks per class. Timed: each ``InteractiveSession.click`` (re-decode the clicked slice, re-propagate
the 3D box chain where a slice's box changed). Reported per engine and thread count:

- ``ms_per_decoded_slice``: click time / slices re-decoded (decoder + box derivation + resize to the image);
- ``ms_per_click``: mean time of one click (all the slices it re-decoded);
- ``decoder_ms``: median of one bare decoder call (box + 1 point) on a cached embedding and the slice's cached
  prompt-free decoder work (``decoder_image``), as a click decodes, ``--repeats`` times.

With ``--rounds R`` (default 3) the whole measurement is repeated R times, the engines in a rotated order
each round, and every timing is the median over the rounds, with its range (``*_range``) and the rounds
themselves (``rounds``): timings on a small shared CPU move between runs by tens of per cent.

Engines: ``torch`` (the eager model), ``onnxruntime`` and ``openvino`` (the exported prompt encoder +
mask decoder graphs, exported into the medadapt cache on first use), and their faster, not equal,
mask decoders ``onnxruntime:int8`` (dynamic int8) and ``openvino:bf16``; each run also records the
final DSC per object and its mean difference from a reference run (``dsc_vs_reference``: the same engine's
fp32 decoder for a faster decoder, torch for an fp32 export). Writes
bench/results/interactive_latency.json with provenance (commit, UTC time, CPU, threads, load averages).

    .venv/bin/python bench/bench_interactive.py --volumes 2 --clicks 5 --threads 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import provenance  # noqa: E402

SHARED = Path(os.environ.get("MEDADAPT_SHARED", ROOT.parent / "shared"))
OUT = ROOT / "bench" / "results" / "interactive_latency.json"


def engine_predictor(name: str, torch_pred, threads: int):
    """A predictor decoding on ``name`` (``engine`` or ``engine:decoder precision``, e.g. ``onnxruntime:int8``)
    whose embeddings come from ``torch_pred`` (cached)."""
    engine, _, decoder = name.partition(":")
    if engine == "torch":
        return torch_pred
    from medadapt.deploy.backend import cached_export
    from medadapt.deploy.runtime import DeployedSam
    from medadapt.infer.predictor import SamPredictor

    decoder = decoder or "fp32"
    folder = cached_export("litemedsam", engine=engine, decoder_precision=decoder)
    deployed = DeployedSam(folder, engine=engine, threads=threads, decoder_precision=decoder)
    return SamPredictor(deployed, torch_pred.spec, batch_size=1,
                        encoder=lambda batch: torch_pred.encode(list(batch)))


def decoder_ms(predictor, embedding: torch.Tensor, repeats: int) -> float:
    """Median bare decoder call as a click makes it: on a slice decoded before (the slice's prompt-free decoder
    work, ``decoder_image``, is reused)."""
    box = torch.tensor([[60.0, 70.0, 160.0, 180.0]])
    pts = (torch.tensor([[[110.0, 120.0]]]), torch.tensor([[1]]))
    times = []
    with torch.no_grad():
        make = getattr(predictor.model, "decoder_image", None)
        image = None if make is None else make(embedding[None])
        extra = {} if image is None else {"decoder_image": image}
        for i in range(repeats + 2):
            t = time.perf_counter()
            predictor.model.decode(embedding[None], points=pts, boxes=box, **extra)
            if i >= 2:  # two warm-up calls
                times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


def measure(pred, torch_pred, dataset, keys: list[str], args) -> dict:
    """One pass of the protocol over ``keys`` with ``pred``: click timings, bare decoder time, final DSCs."""
    from medadapt.evaluate.interactive_run import simulate_case

    secs, slices, clicks, dsc_final = 0.0, 0, 0, []
    emb = None
    for key in keys:
        image, label, spacing, axis = dataset.load(key)
        res = simulate_case(pred, image, label, spacing, slice_axis=axis, case=key, n_clicks=args.clicks)
        secs += sum(res.seconds[1:])
        slices += sum(res.decoded_slices[1:])
        clicks += sum(len(o.clicks) for o in res.clicks.objects)
        dsc_final += [r["dsc"] for r in res.rows]
        if emb is None:
            vol = np.moveaxis(image, axis, 0)
            emb = torch_pred.encode([torch_pred.prepare(np.repeat(vol[vol.shape[0] // 2][..., None], 3, -1)).tensor])[0]
    return {"clicks": clicks, "decoded_slices": slices, "click_seconds": secs,
            "ms_per_click": 1000 * secs / max(clicks, 1), "ms_per_decoded_slice": 1000 * secs / max(slices, 1),
            "decoder_ms": decoder_ms(pred, emb, args.repeats), "dsc_final": dsc_final}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(SHARED / "data" / "hippocampus"))
    ap.add_argument("--volumes", type=int, default=2)
    ap.add_argument("--clicks", type=int, default=5)
    ap.add_argument("--threads", type=int, nargs="+", default=[2])
    ap.add_argument("--engines", nargs="+",
                    default=["torch", "onnxruntime", "openvino", "onnxruntime:int8", "openvino:bf16"])
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3, help="repeat everything, report medians over the rounds")
    args = ap.parse_args()

    from medadapt.data.datasets import load_segmentation_dataset
    from medadapt.data.fewshot import make_split
    from medadapt.infer.factory import build_predictor

    prov = provenance.start()
    result = {"threads": args.threads, "data": args.data, "clicks": args.clicks, "rounds": args.rounds,
              "protocol": "3D box per class from the label, then simulated CVPR 2025 clicks; zero-shot litemedsam",
              "runs": []}
    dataset = load_segmentation_dataset(args.data)
    keys = list(make_split(dataset, shots=1, seed=0).test)[: args.volumes]
    result["volumes"] = keys
    torch.set_num_threads(max(args.threads))
    torch_pred = build_predictor("litemedsam", use_cache=True)
    engines = []
    for engine in args.engines:
        if engine.endswith(":bf16"):
            from medadapt.deploy.runtime import cpu_has_bf16

            if not cpu_has_bf16():
                print(f"{engine}: skipped, this CPU has no bf16")
                continue
        engines.append(engine)
    for threads in args.threads:
        torch.set_num_threads(threads)
        preds = {engine: engine_predictor(engine, torch_pred, threads) for engine in engines}
        rounds: dict[str, list[dict]] = {engine: [] for engine in engines}
        for i in range(args.rounds):
            for engine in engines[i % len(engines):] + engines[: i % len(engines)]:  # rotated order
                rounds[engine].append(measure(preds[engine], torch_pred, dataset, keys, args))
                m = rounds[engine][-1]
                print(f"round {i + 1} {engine:12s} threads {threads}: {m['ms_per_decoded_slice']:.1f} ms / "
                      f"re-decoded slice, bare decoder {m['decoder_ms']:.1f} ms", flush=True)
        for engine in engines:
            rs = rounds[engine]
            run = {"engine": engine, "threads": threads, "clicks": rs[0]["clicks"],
                   "decoded_slices": rs[0]["decoded_slices"], "dsc_final": rs[0]["dsc_final"], "rounds": rs}
            for k in ("click_seconds", "ms_per_click", "ms_per_decoded_slice", "decoder_ms"):
                vals = [r[k] for r in rs]
                run[k] = statistics.median(vals)
                run[f"{k}_range"] = [min(vals), max(vals)]
            # reference: the same engine's fp32 decoder for a faster decoder, else torch; the clicks follow each
            # run's own masks, so this is the whole protocol's drift
            ref_name = engine.partition(":")[0] if ":" in engine else "torch"
            ref = next((r for r in result["runs"] if r["engine"] == ref_name and r["threads"] == threads), None)
            if ref is not None and ref_name != engine:
                run["dsc_reference"] = ref_name
                run["dsc_vs_reference"] = statistics.fmean(run["dsc_final"]) - statistics.fmean(ref["dsc_final"])
            result["runs"].append(run)
            lo, hi = run["ms_per_decoded_slice_range"]
            print(f"{engine:12s} threads {threads}: {run['ms_per_decoded_slice']:.1f} ms / re-decoded slice "
                  f"(rounds {lo:.1f}-{hi:.1f}), {run['ms_per_click']:.1f} ms / click, "
                  f"bare decoder {run['decoder_ms']:.1f} ms", flush=True)
    provenance.save(OUT, result, prov)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
