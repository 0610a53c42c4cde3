"""Choose the interactive session's click reach on validation volumes (never on the test volumes).

The click reach (:mod:`medadapt.infer.interactive`) carries a click to up to R neighbouring slices on
each side while the mask there is in the state the click corrects. This script runs the CVPR 2025
protocol of ``medadapt simulate`` (a 3D box per class, then N clicks at the deepest voxel of the largest
error) on the validation cases of the fixed split (``make_split(shots=5, seed=0)``, the cases a 5-shot
fit validates on), for every configuration (zero-shot, or a ``medadapt fit`` run) and every R. Each case
is encoded and box-propagated once per configuration; every R then continues from a copy of that start,
so the sweep costs the clicks only.

Writes bench/results/interactive_<name>_val.json after every case (entries as bench_clicks.py writes,
one per configuration and R; ``selection`` holds the R with the highest mean DSC-AUC over all
configurations' objects, ties to the smaller R), with provenance (bench/provenance.py).

    .venv/bin/python bench/bench_click_reach.py --data ../shared/data/hippocampus --name hippocampus \\
        --reach 0 1 2 4 8 --config zero-shot --config decoder-click/s0=RUN_CLICK --cache-dir CACHE
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import torch  # noqa: E402

import provenance  # noqa: E402
from bench_clicks import summarise_rows  # noqa: E402
from bench_fewshot import write_json  # noqa: E402
from medadapt.data.datasets import load_segmentation_dataset  # noqa: E402
from medadapt.data.fewshot import load_split, make_split  # noqa: E402
from medadapt.evaluate.interactive_run import simulate_clicks, start_session  # noqa: E402
from medadapt.infer.factory import build_predictor  # noqa: E402
from medadapt.infer.interactive import InteractiveSession  # noqa: E402
from medadapt.run import RunFolder  # noqa: E402

CRITERION = "mean DSC-AUC over the validation objects of all configurations; ties to the smaller reach"


def choose(entries: dict, reaches: list[int]) -> int:
    """The reach with the highest mean DSC-AUC over every configuration's objects (ties: smaller)."""
    score = {r: statistics.fmean(row["dsc_auc"] for e in entries.values() if e["click_reach"] == r
                                 for row in e["rows"]) for r in reaches}
    return max(reaches, key=lambda r: (round(score[r], 12), -r))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--name", required=True)
    ap.add_argument("--config", action="append", required=True, metavar="NAME[=RUN]")
    ap.add_argument("--reach", type=int, nargs="+", required=True)
    ap.add_argument("--clicks", type=int, default=5)
    ap.add_argument("--plane", default="volume")
    ap.add_argument("--cases", type=int, default=None, help="only the first N validation cases")
    ap.add_argument("--target", type=float, default=0.90)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--cache-dir", type=Path, default=None)
    ap.add_argument("--out-json", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    out_json = args.out_json or ROOT / "bench" / "results" / f"interactive_{args.name}_val.json"
    dataset = load_segmentation_dataset(args.data)
    val = list(make_split(dataset, shots=5, seed=0).val)
    configs = []
    for config in args.config:
        name, _, run = config.partition("=")
        if run and RunFolder(Path(run)).split_path.is_file():
            run_val = list(load_split(RunFolder(Path(run)).split_path, dataset).val)
            if run_val != val:
                raise SystemExit(f"{run} validates on {run_val}, not on the fixed split's {val}")
        fit = None
        if run:
            result = json.loads((Path(run) / "result.json").read_text())
            fit = {k: result.get(k) for k in ("method", "prompt", "shots", "seed", "steps", "best_metric",
                                             "train_cases", "fit_seconds")}
        predictor = build_predictor(None, adapter=Path(run) if run else None, cache_dir=args.cache_dir)
        configs.append((name, run, fit, predictor))
    keys = val[: args.cases] if args.cases else val
    classes = sorted(dataset.classes)
    prov = provenance.start()
    rows: dict[tuple[str, int], list[dict]] = {(n, r): [] for n, *_ in configs for r in args.reach}
    done = []
    for key in keys:
        image, label, spacing, axis = dataset.load(key)
        for name, _, _, predictor in configs:
            ax = predictor.slice_axis if axis is not None and predictor.slice_axis is not None else axis
            session = InteractiveSession(predictor, image, slice_axis=ax, name=key)
            ids = start_session(session, label, classes, "box3d")
            started = copy.deepcopy(session.objects)
            for reach in args.reach:
                session.objects = copy.deepcopy(started)
                session.click_reach = reach
                res = simulate_clicks(session, ids, label, spacing, case=key, n_clicks=args.clicks,
                                      classes=classes, plane=args.plane)
                rows[(name, reach)] += res.rows
            print(f"{key} {name}: " + " ".join(
                f"R{r} {statistics.fmean(x['dsc_auc'] for x in rows[(name, r)]):.3f}" for r in args.reach), flush=True)
        done.append(key)
        entries = {}
        for name, _run, fit, _ in configs:
            for reach in args.reach:
                entry = summarise_rows([{k: v for k, v in r.items()} for r in rows[(name, reach)]],
                                       args.clicks, args.target)
                entry.update({"config": f"{name}, reach {reach}", "click_reach": reach, "fit": fit,
                              "clicks": args.clicks, "plane": args.plane, "cases_from": "val", "case_keys": done,
                              "threads": args.threads, "seconds_per_interaction": None,
                              "ms_per_decoded_slice": None,
                              "rows": [{k: r[k] for k in ("case", "class", "dsc_auc", "dsc_0", f"dsc_{args.clicks}")}
                                       for r in rows[(name, reach)]]})
                entries[f"{name}/reach{reach}"] = entry
        chosen = choose(entries, args.reach)
        command = "bench/bench_click_reach.py " + " ".join(sys.argv[1:])
        finished = provenance.finish(prov)
        for e in entries.values():
            e["provenance"] = finished
            e["command"] = command
        write_json(out_json, {"data": args.data, "runs": entries, "provenance": finished,
                              "selection": {"criterion": CRITERION, "reaches": args.reach, "cases": done,
                                            "click_reach": chosen}})
        print(f"after {len(done)} case(s): click reach {chosen}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
