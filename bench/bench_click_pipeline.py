"""Clicks through the whole exported pipeline, as `medadapt simulate --engine onnxruntime` runs them.

``bench_interactive.py`` times the decoder side of a click on torch-encoded embeddings; here every
graph is the export's, run by ONNX Runtime in one process with torch doing the work between them
(image preparation, box derivation, mask resizing), as a user's session runs: ``simulate_dataset``
(the command's own code) on the validation volumes of the fixed hippocampus split, a 3D box per class,
then ``--clicks`` simulated clicks. Variants: the mask decoder's precision (int8, fp32) and ONNX Runtime's
thread spinning in the prompt / decoder graphs' sessions (``off``: ``DeployedSam``'s default,
``deploy.runtime.DECODER_SPINNING``; ``on``: ONNX Runtime's own default). The image encoder's session
spins in both. Reported per variant, median over ``--rounds`` (variants in a rotated order each round)
with the range:

- ``ms_per_decoded_slice``: click time / slices the clicks re-decoded (the command's own figure);
- ``start_s``: seconds of the first interaction per volume (encoding the box's slices with the exported
  encoder, then decoding them), to show what the setting does to the encoder side.

The final DSCs of a variant are recorded, and must equal between the two spinning settings (a thread
setting, not a numerical one). Writes bench/results/click_pipeline.json with provenance.

    .venv/bin/python bench/bench_click_pipeline.py --volumes 3 --rounds 3
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import provenance  # noqa: E402

SHARED = Path(os.environ.get("MEDADAPT_SHARED", ROOT.parent / "shared"))
OUT = ROOT / "bench" / "results" / "click_pipeline.json"


def loader(spinning: bool):
    """``deploy.backend.load_predictor`` with the decoder graphs' spinning set to ``spinning``."""
    from medadapt.deploy.backend import load_predictor
    from medadapt.deploy.runtime import DeployedSam

    def load(spec):
        predictor = load_predictor(spec)
        model = predictor.model
        predictor.model = DeployedSam(model.folder, engine=model.engine, precision=model.precision,
                                      threads=spec.threads, decoder_precision=model.decoder_precision,
                                      decoder_spinning=spinning)
        return predictor

    return load


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(SHARED / "data" / "hippocampus"))
    ap.add_argument("--volumes", type=int, default=3)
    ap.add_argument("--clicks", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()

    import torch

    from medadapt.evaluate.simulate import simulate_dataset

    torch.set_num_threads(args.threads)
    prov = provenance.start()
    variants = [(precision, spinning) for precision in ("int8", "fp32") for spinning in (False, True)]
    rounds: dict[tuple, list[dict]] = {v: [] for v in variants}
    cases = None
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.rounds):
            for precision, spinning in variants[i % len(variants):] + variants[: i % len(variants)]:
                sim = simulate_dataset(args.data, Path(tmp) / "out", clicks=args.clicks, cases=args.volumes,
                                       cases_from="val", engine="onnxruntime", decoder_precision=precision,
                                       threads=args.threads, n_boot=0, load=loader(spinning))
                s = sim.summary
                cases = s["settings"]["cases"]
                per_case = (Path(tmp) / "out" / "per_case.csv").read_text().splitlines()
                final = [float(r["dsc"]) for r in csv.DictReader(per_case) if r.get("dsc") not in (None, "")]
                rounds[(precision, spinning)].append({
                    "ms_per_decoded_slice": s["ms_per_decoded_slice"], "start_s": s["seconds_per_interaction"][0],
                    "dsc": statistics.fmean(final), "per_case": per_case})
                print(f"round {i + 1} decoder {precision} spinning {'on' if spinning else 'off'}: "
                      f"{s['ms_per_decoded_slice']:.1f} ms / re-decoded slice, start {s['seconds_per_interaction'][0]:.1f} s"
                      f" / volume", flush=True)
    result = {"data": args.data, "cases": cases, "clicks": args.clicks, "threads": args.threads, "rounds": args.rounds,
              "model": "litemedsam", "engine": "onnxruntime", "runs": []}
    for (precision, spinning), rs in rounds.items():
        run = {"decoder_precision": precision, "decoder_spinning": spinning, "dsc": rs[0]["dsc"],
               "same_results_every_round": all(r["per_case"] == rs[0]["per_case"] for r in rs),
               "rounds": [{k: v for k, v in r.items() if k != "per_case"} for r in rs]}
        for key in ("ms_per_decoded_slice", "start_s"):
            vals = [r[key] for r in rs]
            run[key], run[f"{key}_range"] = statistics.median(vals), [min(vals), max(vals)]
        other = rounds[(precision, not spinning)][0]["per_case"]
        run["same_results_as_other_spinning"] = rs[0]["per_case"] == other
        result["runs"].append(run)
    print(f"{'decoder':8s} {'spinning':9s} {'ms / slice':>22s} {'start s / volume':>22s}")
    for r in result["runs"]:
        lo, hi = r["ms_per_decoded_slice_range"]
        slo, shi = r["start_s_range"]
        print(f"{r['decoder_precision']:8s} {'on' if r['decoder_spinning'] else 'off':9s} "
              f"{r['ms_per_decoded_slice']:6.1f} ({lo:.1f}-{hi:.1f}) {r['start_s']:10.1f} ({slo:.1f}-{shi:.1f})")
    provenance.save(OUT, result, prov)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
