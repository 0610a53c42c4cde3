"""Clicks through the whole exported pipeline, as `medadapt simulate --engine onnxruntime` runs them.

``bench_interactive.py`` times the decoder side of a click on torch-encoded embeddings; here every
graph is the export's, run by ONNX Runtime in one process with torch doing the work between them
(image preparation, box derivation, mask resizing), as a user's session runs: the predictor
``medadapt simulate --engine onnxruntime`` loads, on the validation volumes of the fixed hippocampus
split, the command's protocol (a 3D box per class, then ``--clicks`` simulated clicks, its default
settings). Compared: ONNX Runtime's thread spinning in the prompt / decoder graphs' sessions (``off``:
``DeployedSam``'s default, ``deploy.runtime.DECODER_SPINNING``; ``on``: ONNX Runtime's own default), for
the int8 and the fp32 mask decoder. The image encoder's session spins in both.

Timings on a small shared CPU drift by tens of per cent over minutes, so the two settings alternate per
volume (the order alternating too), each running the whole protocol on its own predictor. They are not
interleaved click by click: spinning threads slow whatever else runs in the process, so two live sessions
would measure each other. Spinning is a thread setting, not a numerical one: every object's scores after
every step are checked equal between the settings. Reported per decoder and setting, median over
``--rounds`` with the range:

- ``ms_per_decoded_slice``: click time / slices the clicks re-decoded (the command's own figure);
- ``start_s``: seconds of the first interaction per volume (encoding the box's slices with the exported
  encoder, then decoding them).

Writes bench/results/click_pipeline.json with provenance.

    .venv/bin/python bench/bench_click_pipeline.py --volumes 3 --rounds 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import provenance  # noqa: E402

SHARED = Path(os.environ.get("MEDADAPT_SHARED", ROOT.parent / "shared"))
OUT = ROOT / "bench" / "results" / "click_pipeline.json"
SETTINGS = (False, True)  # decoder graphs' spinning: off (the default), on


def predictor(precision: str, spinning: bool, threads: int):
    """The predictor `simulate --engine onnxruntime --decoder-precision PRECISION` loads, its decoder graphs'
    spinning set to ``spinning``."""
    from medadapt.deploy.backend import load_predictor
    from medadapt.deploy.runtime import DeployedSam
    from medadapt.infer.factory import PredictorSpec

    pred = load_predictor(PredictorSpec(backend="onnxruntime", decoder_precision=precision, threads=threads))
    model = pred.model
    pred.model = DeployedSam(model.folder, engine=model.engine, precision=model.precision, threads=threads,
                             decoder_precision=model.decoder_precision, decoder_spinning=spinning)
    return pred


def measure_case(preds: dict[bool, object], dataset, key: str, clicks: int, turn: int) -> dict[bool, dict]:
    """One volume through the protocol with each setting in turn (the order alternating with ``turn``); per
    setting: start seconds, click seconds, slices the clicks re-decoded, and the per-object scores."""
    from medadapt.evaluate.interactive_run import simulate_case

    image, label, spacing, axis = dataset.load(key)
    out = {}
    for setting in SETTINGS if turn % 2 else SETTINGS[::-1]:
        res = simulate_case(preds[setting], image, label, spacing, slice_axis=axis, case=key, n_clicks=clicks)
        out[setting] = {"start_s": res.seconds[0], "click_s": sum(res.seconds[1:]),
                        "slices": sum(res.decoded_slices[1:]), "rows": res.rows}
    if out[False]["rows"] != out[True]["rows"]:
        raise AssertionError(f"{key}: the spinning settings gave different masks")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(SHARED / "data" / "hippocampus"))
    ap.add_argument("--volumes", type=int, default=3)
    ap.add_argument("--clicks", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--decoders", nargs="+", default=["int8", "fp32"])
    args = ap.parse_args()

    import torch

    from medadapt.data.datasets import load_segmentation_dataset
    from medadapt.data.fewshot import make_split

    torch.set_num_threads(args.threads)
    prov = provenance.start()
    dataset = load_segmentation_dataset(args.data)
    keys = list(make_split(dataset, shots=1, seed=0).val)[: args.volumes]
    preds = {p: {s: predictor(p, s, args.threads) for s in SETTINGS} for p in args.decoders}
    rounds = {(p, s): [] for p in args.decoders for s in SETTINGS}
    turn = 0
    for i in range(args.rounds):
        totals = {k: {"start_s": 0.0, "click_s": 0.0, "slices": 0} for k in rounds}
        for key in keys:
            for p in args.decoders[i % len(args.decoders):] + args.decoders[: i % len(args.decoders)]:
                turn += 1
                for s, m in measure_case(preds[p], dataset, key, args.clicks, turn).items():
                    for k in totals[(p, s)]:
                        totals[(p, s)][k] += m[k]
        for (p, s), t in totals.items():
            rounds[(p, s)].append({"ms_per_decoded_slice": 1000 * t["click_s"] / max(1, t["slices"]),
                                   "start_s": t["start_s"] / len(keys), "decoded_slices": t["slices"]})
            print(f"round {i + 1} decoder {p} spinning {'on' if s else 'off'}: "
                  f"{rounds[(p, s)][-1]['ms_per_decoded_slice']:.1f} ms / re-decoded slice, "
                  f"start {rounds[(p, s)][-1]['start_s']:.1f} s / volume", flush=True)
    result = {"data": args.data, "cases": keys, "clicks": args.clicks, "threads": args.threads, "rounds": args.rounds,
              "model": "litemedsam", "engine": "onnxruntime", "alternated": "per volume", "same_scores": True, "runs": []}
    for (p, s), rs in rounds.items():
        run = {"decoder_precision": p, "decoder_spinning": s, "decoded_slices": rs[0]["decoded_slices"], "rounds": rs}
        for k in ("ms_per_decoded_slice", "start_s"):
            vals = [r[k] for r in rs]
            run[k], run[f"{k}_range"] = statistics.median(vals), [min(vals), max(vals)]
        result["runs"].append(run)
    print(f"{'decoder':8s} {'spinning':9s} {'ms / re-decoded slice':>24s} {'start s / volume':>20s}")
    for r in result["runs"]:
        (lo, hi), (slo, shi) = r["ms_per_decoded_slice_range"], r["start_s_range"]
        print(f"{r['decoder_precision']:8s} {'on' if r['decoder_spinning'] else 'off':9s} "
              f"{r['ms_per_decoded_slice']:8.1f} ({lo:.1f}-{hi:.1f}) {r['start_s']:10.1f} ({slo:.1f}-{shi:.1f})")
    provenance.save(OUT, result, prov)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
