"""3D recipes vs LiteMedSAM slice-wise recipes on the SAME held-out hippocampus volumes.

    .venv/bin/python bench/bench_side_by_side.py            # score, write the JSON, print the table
    .venv/bin/python bench/bench_side_by_side.py --refresh-3d   # keep the LiteMedSAM rows, re-read the 3D ones
    .venv/bin/python bench/bench_side_by_side.py --table    # print the table of the JSON only

The 3D rows come from ``bench/results/volumetric.json`` (``bench_volumetric.py``: target ``both``, i.e.
anterior + posterior, k = 5, 3 seeds; the best recipe by mean DSC and every other k = 5 recipe for
context), already scored on the fixed 20-volume held-out set of :mod:`medadapt.data.fewshot`.

The LiteMedSAM rows re-score the adapters that ``bench_fewshot.py`` trained (k = 5, 3 seeds; their own
table scores only the first 5 held-out volumes) on all 20 of those volumes, with the same metric code
(:func:`medadapt.evaluate.segment_run.evaluate_dataset`: volumes reassembled from slices, DSC, NSD 2 mm,
HD95 per class): zero-shot with boxes, the ``decoder`` recipe with boxes, and the ``decoder`` recipe in
``auto`` mode (no prompt). Box mode takes one box per class and slice from the GROUND-TRUTH labels: an
oracle prompt the 3D models and auto mode never get, so only auto mode compares like with like.

The held-out list is asserted equal to the ``test`` list of a volumetric run's ``split.json`` when the
volumetric work folder is still there. Embeddings go to the few-shot benchmark's on-disk cache
(eager PyTorch fp32 encoder, as in the few-shot table). Writes ``bench/results/side_by_side.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import provenance  # noqa: E402
from bench_fewshot import score  # noqa: E402

HIPPO = ROOT.parent / "shared" / "data" / "hippocampus"
FEWSHOT = ROOT / "bench" / "results" / "tmp" / "hippocampus"
VOLUMETRIC = ROOT / "bench" / "results" / "volumetric.json"
OUT = ROOT / "bench" / "results" / "side_by_side.json"
SAM_RUNS = {  # row name -> (bench_fewshot run-folder prefix, prompt mode)
    "LiteMedSAM decoder, box (oracle) k5": ("decoder+ov-cold_box_k5_s", "box"),
    "LiteMedSAM decoder, auto k5": ("decoder+ov-400_auto_k5_s", "auto"),
}


def _mean_sd(values: list[float]) -> str:
    v = [x for x in values if x is not None and np.isfinite(x)]
    if not v:
        return "–"
    return f"{np.mean(v):.3f} ± {np.std(v, ddof=1):.3f}" if len(v) > 1 else f"{v[0]:.3f}"


def table(result: dict) -> str:
    lines = [f"held-out hippocampus volumes: {result['n_test']} (the same for every row); mean ± sd over seeds",
             "| model / recipe | prompt | seeds | DSC | NSD 2 mm | HD95 mm |", "|---|---|---|---|---|---|"]
    for name, row in result["rows"].items():
        lines.append(f"| {name} | {row['prompt']} | {len(row['dsc'])} | {_mean_sd(row['dsc'])} | "
                     f"{_mean_sd(row['nsd'])} | {_mean_sd(row['hd95'])} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--volumetric-work", type=Path, default=Path("/tmp/medadapt_bench_volumetric"))
    ap.add_argument("--table", action="store_true")
    ap.add_argument("--refresh-3d", action="store_true",
                    help="keep the LiteMedSAM rows of the JSON, re-read only volumetric.json")
    args = ap.parse_args()
    if args.table:
        print(table(json.loads(OUT.read_text())))
        return 0

    import torch

    torch.set_num_threads(args.threads)
    from medadapt.data.datasets import load_segmentation_dataset
    from medadapt.data.fewshot import make_split
    from medadapt.infer.factory import build_predictor
    from medadapt.io.atomic import write_json

    dataset = load_segmentation_dataset(HIPPO)
    test = list(make_split(dataset, shots=1, seed=0).test)
    splits = sorted((args.volumetric_work / "runs").glob("*/split.json"))
    if splits:
        vol_test = json.loads(splits[0].read_text())["test"]
        if sorted(vol_test) != sorted(test):
            sys.exit(f"the volumetric runs were scored on other volumes ({splits[0]}); refusing to compare.")

    rows: dict[str, dict] = {}
    prov = provenance.start(resumed=args.refresh_3d)
    cache = FEWSHOT / "embedding_cache"
    start = time.perf_counter()
    sam_runs = {} if args.refresh_3d else SAM_RUNS
    if args.refresh_3d:
        old = json.loads(OUT.read_text())
        rows = {k: v for k, v in old["rows"].items() if k.startswith("LiteMedSAM")}
        start -= old["seconds"]
    else:
        s = score(build_predictor("litemedsam", cache_dir=cache), dataset, test, "box")
        rows["LiteMedSAM zero-shot, box (oracle)"] = {"prompt": "box from labels", "runs": ["litemedsam"],
                                                      **{m: [s[m]] for m in ("dsc", "nsd", "hd95")}}
        print("zero-shot", s["dsc"], flush=True)
    for name, (prefix, mode) in sam_runs.items():
        row = {"prompt": "box from labels" if mode == "box" else "none (auto)", "runs": [],
               "dsc": [], "nsd": [], "hd95": []}
        for seed in args.seeds:
            run = FEWSHOT / f"{prefix}{seed}"
            if not (run / "adapter").is_dir():
                sys.exit(f"{run} is missing: run bench_fewshot.py for it first (see docs/benchmarks.md).")
            s = score(build_predictor(None, adapter=run, cache_dir=cache), dataset, test, mode)
            row["runs"].append(str(run.relative_to(ROOT)))
            for m in ("dsc", "nsd", "hd95"):
                row[m].append(s[m])
            print(name, seed, s["dsc"], flush=True)
        rows[name] = row

    vol = json.loads(VOLUMETRIC.read_text())
    if vol["runs"] and next(iter(vol["runs"].values()))["n_test"] != len(test):
        sys.exit("volumetric.json was scored on a different number of held-out volumes.")
    k5 = [r for r in vol["runs"].values() if r["target"] == "both" and r["shots"] == 5]
    methods = sorted({r["method"] for r in k5}, key=lambda m: -np.mean([r["dsc"] for r in k5 if r["method"] == m]))
    for i, method in enumerate(methods):
        sel = [r for r in k5 if r["method"] == method]
        rows[f"3D U-Net {method} k5{' (best 3D)' if i == 0 else ''}"] = {
            "prompt": "none", "runs": [f"volumetric.json both/k5/s{r['seed']}/{method}" for r in sel],
            **{m: [r[m] for r in sel] for m in ("dsc", "nsd", "hd95")},
        }
    result = {"n_test": len(test), "test": test, "seconds": time.perf_counter() - start, "rows": rows,
              "provenance": provenance.finish(prov)}
    write_json(OUT, result)
    print(table(result))
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
