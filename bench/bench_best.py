"""``fit --method best`` on medadapt's k-shot split, scored on the fixed test volumes like every other bench.

For one dataset and each k and seed this runs the selection exactly as ``medadapt fit --method best``
does (:func:`medadapt.pipeline.best.fit_best`: K-fold cross-validation over the k training cases of
``medadapt.data.fewshot.make_split``'s split, within ``--budget``, then the winner fitted on all k),
then scores the run on the split's fixed test volumes with ``medadapt evaluate``'s code path
(:func:`medadapt.pipeline.evaluate.evaluate`: a 3D run, a SAM-family run or the ensemble run, whichever
won), aggregated as ``bench_nnunet.py`` and ``bench_fewshot.py`` aggregate theirs (mean over test
volumes and classes of DSC, NSD at 2 mm and HD95, finite values). The test volumes are asserted equal
to those of ``bench/results/side_by_side.json`` (hippocampus: the same 20 volumes as every other
table). Each run records the chosen candidate, every candidate's CV score, status and time
(``selection.json``), the budget, the selection and final-fit wall times, thread count and provenance
(``bench/provenance.py``), and merges into ``bench/results/best_<name>.json`` under ``best/k<k>/s<seed>``.

    .venv/bin/python bench/bench_best.py --data ../shared/data/hippocampus --name hippocampus \\
        --shots 1 5 10 --seeds 0 1 2 --budget 30m --threads 2

    # smoke run (nothing written to bench/results): tiny steps, the first 2 test volumes
    .venv/bin/python bench/bench_best.py --data ../shared/data/hippocampus --name hippocampus \\
        --shots 5 --seeds 0 --budget 3m --max-steps 5 --test-cases 2 --candidates unet3d-scratch --threads 1

``--max-steps`` or ``--test-cases`` make a smoke run: printed, never merged into the results file.
A finished ``k``/``seed`` run is kept in the JSON and skipped on the next invocation (``--force`` reruns it).
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import provenance  # noqa: E402
from bench_nnunet import aggregate_rows  # noqa: E402

SIDE_BY_SIDE = ROOT / "bench" / "results" / "side_by_side.json"


def _rows(per_case: Path) -> list[dict]:
    with per_case.open(newline="") as f:
        return [{"case": r["case"], "class": int(r["class"]), **{m: float(r[m]) for m in ("dsc", "nsd", "hd95")}}
                for r in csv.DictReader(f)]


def one_run(args, k: int, seed: int, test: list[str], classes: list[int]) -> dict:
    from medadapt.pipeline.best import fit_best
    from medadapt.pipeline.evaluate import evaluate

    run = (args.work / f"{args.name}_k{k}_s{seed}").resolve()
    shutil.rmtree(run, ignore_errors=True)
    values = {"data": args.data, "out": str(run), "shots": k, "seed": seed, "max_steps": args.max_steps,
              **dataset_options(args)}
    t = time.perf_counter()
    result = fit_best(values, budget=args.budget, folds=args.folds, candidates=args.candidates,
                      notify=lambda line: print(f"  {line}", flush=True))
    fit_wall = time.perf_counter() - t
    selection = json.loads((run / "selection.json").read_text())
    split = json.loads((run / "split.json").read_text())
    assert split["test"] == test, "the run's test volumes differ from the benchmark's fixed test set"
    assert not set(selection["train_cases"]) & set(test)
    scored = test[: args.test_cases] if args.test_cases else test
    eval_split = run / "bench_eval_split.json"
    eval_split.write_text(json.dumps({**split, "test": scored}))
    t = time.perf_counter()
    evaluate(out=run / "eval", data=args.data, adapters=[run], split=str(eval_split), n_boot=0, **dataset_options(args))
    scores = aggregate_rows(_rows(run / "eval" / "per_case.csv"), classes)
    return {
        "shots": k, "seed": seed, "chosen": selection["chosen"], "budget_seconds": selection["budget_seconds"],
        "folds": selection["folds"], "cv_dsc": result["selection"]["cv_dsc"],
        "candidates": selection["candidates"], "rule": selection["rule"],
        "selection_seconds": selection["cv_seconds"], "final_fit_seconds": selection["final_fit_seconds"],
        "fit_wall_seconds": fit_wall, "over_budget_seconds": selection["over_budget_seconds"],
        "eval_seconds": time.perf_counter() - t, "threads": args.threads, "train_cases": selection["train_cases"],
        **scores,
    }


def dataset_options(args) -> dict:
    """The dataset options given (``--label-dir``, ``--image-suffix``, ``--label-suffix``), as fit and evaluate take them."""
    return {k: getattr(args, k) for k in ("label_dir", "image_suffix", "label_suffix") if getattr(args, k)}


def candidate_note(c: dict) -> str:
    """One candidate of a selection: its mean CV DSC, or why it was not scored."""
    if c.get("cv_dsc") is not None:
        return f"{c['name']} {c['cv_dsc']:.3f}"
    reason = c.get("reason") or c.get("status") or "not run"
    return f"{c['name']}: {reason.replace('|', '/')}"


def print_table(data: dict) -> None:
    print("| k | seed | chosen | CV DSC | test DSC | NSD 2 mm | HD95 mm | fit s (selection + final) | budget s | "
          "candidates (CV DSC, or why not scored) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in sorted(data.get("runs", {}).values(), key=lambda r: (r["shots"], r["seed"])):
        cv = "–" if r.get("cv_dsc") is None else f"{r['cv_dsc']:.3f}"
        notes = "; ".join(candidate_note(c) for c in r.get("candidates") or []) or "–"
        print(f"| {r['shots']} | {r['seed']} | {r['chosen']} | {cv} | {r['dsc']:.3f} | {r['nsd']:.3f} | "
              f"{r['hd95']:.2f} | {r['fit_wall_seconds']:.0f} | {r['budget_seconds']:.0f} | {notes} |")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "hippocampus"))
    ap.add_argument("--name", default="hippocampus")
    for flag in ("--label-dir", "--image-suffix", "--label-suffix"):  # as medadapt fit's dataset options
        ap.add_argument(flag, default=None)
    ap.add_argument("--shots", nargs="+", type=int, default=[5])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--budget", default="30m")
    ap.add_argument("--folds", type=int, default=None)
    ap.add_argument("--candidates", nargs="+", default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-steps", type=int, default=None, help="smoke run: every candidate's steps (not written)")
    ap.add_argument("--test-cases", type=int, default=0, help="smoke run: score the first N test volumes (not written)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/medadapt_bench_best"))
    ap.add_argument("--force", action="store_true", help="rerun k/seed runs the results file already holds")
    ap.add_argument("--table", action="store_true", help="print the table of the results file only")
    args = ap.parse_args()
    out_json = ROOT / "bench" / "results" / f"best_{args.name}.json"
    if args.table:
        print_table(json.loads(out_json.read_text()))
        return 0

    import torch

    from medadapt.data.datasets import load_segmentation_dataset
    from medadapt.data.fewshot import make_split
    from medadapt.io.atomic import write_json

    torch.set_num_threads(args.threads)
    smoke = bool(args.max_steps or args.test_cases)
    dataset = load_segmentation_dataset(args.data, **dataset_options(args))
    test = list(make_split(dataset, shots=1, seed=0).test)  # the fixed test set (independent of k and seed)
    if args.name == "hippocampus" and SIDE_BY_SIDE.is_file():
        assert test == json.loads(SIDE_BY_SIDE.read_text())["test"], "not the side-by-side table's test volumes"
    classes = sorted(dataset.classes)
    data = json.loads(out_json.read_text()) if out_json.is_file() else {}
    prov = provenance.start()
    for k in args.shots:
        for seed in args.seeds:
            key = f"best/k{k}/s{seed}"
            if key in data.get("runs", {}) and not args.force and not smoke:
                print(f"{key}: in {out_json.name} already (--force reruns it)")
                continue
            print(f"{key}: fit --method best, budget {args.budget}", flush=True)
            run = one_run(args, k, seed, test, classes)
            print(f"{key}: chose {run['chosen']}, test DSC {run['dsc']:.4f}", flush=True)
            if smoke:
                print(json.dumps({k_: v for k_, v in run.items() if k_ != "candidates"}, indent=2))
                continue
            run["provenance"] = provenance.finish(dict(prov))
            data.update({"data": args.data, "dataset": dataset.name, "test_cases": test,
                         "class_names": {str(c): dataset.classes[c] for c in classes},
                         "metric_note": "mean over test volumes and classes of DSC, NSD (2 mm) and HD95 (finite "
                                        "values), as bench_nnunet.py and bench_fewshot.py aggregate their runs",
                         "provenance": run["provenance"]})
            data.setdefault("runs", {})[key] = run
            write_json(out_json, data)
    if smoke:
        print("smoke run (--max-steps / --test-cases): not written to", out_json)
    elif data:
        print_table(data)
        print(f"wrote {out_json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
