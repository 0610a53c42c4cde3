"""Few-shot adaptation matrix for SAM-family models: zero-shot vs k-shot recipes, box and auto modes.

Every fit runs as its own `medadapt fit` process (so its wall time and peak memory are its own),
trained on k volumes/patients of the dataset with a seed; every model is scored on the SAME fixed
held-out cases (never trained on), volumes reassembled and scored in 3D (DSC, NSD 2 mm, HD95).
Frozen-encoder embeddings go to one on-disk cache shared by all runs (reported: the first run pays
for encoding). Results: bench/results/fewshot_<name>.json and a markdown table (mean ± sd over seeds).

    .venv/bin/python bench/bench_fewshot.py --data ../shared/data/hippocampus --name hippocampus \
        --methods decoder decoder-lora --prompts box auto --shots 1 5 10 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

import provenance

ROOT = Path(__file__).resolve().parents[1]


def score(predictor, dataset, keys, mode):
    from medadapt.evaluate.segment_run import evaluate_dataset

    rows, info = evaluate_dataset(predictor, dataset, keys, mode=mode)
    agg = {}
    for m in ("dsc", "nsd", "hd95"):
        vals = np.array([r[m] for r in rows], dtype=float)
        agg[m] = float(np.mean(vals[np.isfinite(vals)])) if np.isfinite(vals).any() else float("nan")
    per_class = {}
    for c in sorted({r["class"] for r in rows}):
        per_class[str(c)] = float(np.nanmean([r["dsc"] for r in rows if r["class"] == c]))
    return {**agg, "dsc_per_class": per_class, "eval_seconds": info["seconds"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", help="dataset spec (required unless --table-only / --merge)")
    ap.add_argument("--name", required=True)
    ap.add_argument("--methods", nargs="+", default=["decoder", "decoder-lora"])
    ap.add_argument("--prompts", nargs="+", default=["box"])
    ap.add_argument("--shots", nargs="+", type=int, default=[1, 5])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--max-steps", type=int, default=150)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--method-lr", nargs="*", default=[], metavar="METHOD=LR",
                    help="per-recipe learning rate, e.g. decoder-lora=1e-3 (LoRA starts at zero and needs more)")
    ap.add_argument("--test-cases", type=int, default=None, help="score only the first N of the fixed test set")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--label-dir", default=None)
    ap.add_argument("--image-suffix", default=None)
    ap.add_argument("--label-suffix", default=None)
    ap.add_argument("--encoder-engine", default=None, help="fit --encoder-engine (e.g. openvino)")
    ap.add_argument("--cold-cache", action="store_true",
                    help="each fit fills its own empty embedding cache (a new user's wall time)")
    ap.add_argument("--fit-set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="more fit options for every run (fit --set), e.g. frozen_stages=2 precision=bf16")
    ap.add_argument("--tag", default="", help="appended to the method in the result keys, e.g. +ov-cold")
    ap.add_argument("--work", type=Path, default=ROOT / "bench" / "results" / "tmp")
    ap.add_argument("--merge", nargs="*", type=Path, default=[], metavar="JSON",
                    help="add the runs of other result files (e.g. a second queue's --name) to this one's, "
                         "then print the table; runs nothing")
    ap.add_argument("--table-only", action="store_true", help="print the table of the result file; runs nothing")
    ap.add_argument("--no-zero-shot", action="store_true",
                    help="skip the zero-shot box row (e.g. one file per seed of a recipe scored elsewhere beside it)")
    ap.add_argument("--ensemble", nargs="+", default=[], metavar="TAG",
                    help="fit nothing: score the ensemble of finished runs with these tags (e.g. +fs2-300 "
                         "+fs2-300-sag, one per member), per method/prompt/shots/seed, under key METHOD--tag")
    ap.add_argument("--runs-in", nargs="*", type=Path, default=[], metavar="DIR",
                    help="with --ensemble: folders holding the member run folders (default: --work/--name)")
    args = ap.parse_args()
    out_json = ROOT / "bench" / "results" / f"fewshot_{args.name}.json"
    if args.table_only or args.merge:
        results = json.loads(out_json.read_text())
        for other in args.merge:
            extra = json.loads(other.read_text())
            if extra["test_cases"] != results["test_cases"]:
                raise SystemExit(f"{other}: scored on other test cases; not merged")
            new = {k: v for k, v in extra["runs"].items() if k not in results["runs"]}
            results["runs"].update(new)
            print(f"merged {len(new)} run(s) from {other}")
        if args.merge:
            write_json(out_json, results)
        print_table(results)
        return 0
    if not args.data:
        ap.error("--data is required to run fits")

    import torch

    torch.set_num_threads(args.threads)
    from medadapt.data.datasets import load_segmentation_dataset
    from medadapt.data.fewshot import make_split
    from medadapt.infer.factory import build_predictor

    ds_kw = dict(label_dir=args.label_dir, image_suffix=args.image_suffix, label_suffix=args.label_suffix)
    dataset = load_segmentation_dataset(args.data, **{k: v for k, v in ds_kw.items() if v})
    test = list(make_split(dataset, shots=1, seed=0).test)
    if args.test_cases:
        test = test[: args.test_cases]
    work = args.work / args.name
    cache = work / "embedding_cache"
    work.mkdir(parents=True, exist_ok=True)
    results = json.loads(out_json.read_text()) if out_json.exists() else {}
    results.update({"data": args.data, "test_cases": test, "lr": args.lr,
                    "threads": args.threads, "cpu_count": os.cpu_count()})
    results.pop("max_steps", None)  # per run now (runs differ in budget)
    runs = results.setdefault("runs", {})
    prov = provenance.start(resumed=bool(runs))
    results["provenance"] = prov

    if "zero-shot/box" not in runs and not args.no_zero_shot:
        t = time.perf_counter()
        runs["zero-shot/box"] = {**score(build_predictor("litemedsam", cache_dir=cache), dataset, test, "box"),
                                 "wall_seconds": time.perf_counter() - t}
        write_json(out_json, results)

    if args.ensemble:
        score_ensembles(args, runs, dataset, test, cache, lambda: write_json(out_json, results))
        print_table(results)
        print(f"wrote {out_json}")
        return 0

    method_lr = {m: float(v) for m, v in (item.split("=") for item in args.method_lr)}
    results["method_lr"] = {**results.get("method_lr", {}), **method_lr}
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    for prompt, method, k, seed, key in pending(args, runs):
        run = work / key.replace("/", "_")
        cmd = [sys.executable, "-m", "medadapt.cli.main", "fit", "--data", args.data, "--out", str(run),
               "--method", method, "--prompt", prompt, "--shots", str(k), "--seed", str(seed),
               "--max-steps", str(args.max_steps), "--lr", str(method_lr.get(method, args.lr)),
               "--cache-dir", str(run / "embedding_cache" if args.cold_cache else cache),
               "--threads", str(args.threads), "--no-progress", "--val-every", str(args.max_steps // 3)]
        for opt, val in (("--label-dir", args.label_dir), ("--image-suffix", args.image_suffix),
                         ("--label-suffix", args.label_suffix)):
            if val:
                cmd += [opt, val]
        if args.encoder_engine:
            cmd += ["--encoder-engine", args.encoder_engine]
        for item in args.fit_set:
            cmd += ["--set", item]
        if (run / "checkpoint" / "last.pt").exists():
            cmd.append("--resume")
        run_prov = provenance.start(resumed="--resume" in cmd)
        t = time.perf_counter()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t
        if proc.returncode != 0:
            print(proc.stdout[-2000:], proc.stderr[-4000:], file=sys.stderr)
            runs[key] = {"error": proc.stderr[-500:]}
            continue
        fit = json.loads((run / "result.json").read_text())
        predictor = build_predictor(None, adapter=run, cache_dir=cache)
        s = score(predictor, dataset, test, prompt)
        if predictor.keep_largest:  # auto mode: also without the post-processing chosen on val
            predictor.keep_largest = []
            s["without_postprocessing"] = score(predictor, dataset, test, prompt)
            s["postprocessing"] = fit.get("postprocessing")
        runs[key] = {**s, "fit_wall_seconds": wall, "peak_rss_mb": fit.get("peak_rss_mb"),
                     "trainable_params": fit["trainable_params"], "adapter_bytes": fit["adapter_bytes"],
                     "best_val_dsc": fit.get("best_metric"), "lr": method_lr.get(method, args.lr),
                     "max_steps": args.max_steps, "train_slices": fit.get("train_slices"),
                     "encoder_engine": fit.get("encoder_engine", "torch"),
                     "embedding_cache": fit.get("embedding_cache"), "cold_cache": args.cold_cache,
                     "stem_cache": fit.get("stem_cache"), "fit_set": args.fit_set,
                     "threads": args.threads, "provenance": provenance.finish(run_prov)}
        results["provenance"] = provenance.finish(prov)
        write_json(out_json, results)
        print(key, {k2: runs[key][k2] for k2 in ("dsc", "nsd", "fit_wall_seconds")}, flush=True)

    print_table(results)
    print(f"wrote {out_json}")
    return 0


def pending(args, runs: dict):
    """(prompt, method, shots, seed, result key) of every run of the grid not in ``runs`` yet."""
    for prompt in args.prompts:
        for method in args.methods:
            for k in args.shots:
                for seed in args.seeds:
                    key = f"{method}{args.tag}/{prompt}/k{k}/s{seed}"
                    if key not in runs:
                        yield prompt, method, k, seed, key


def score_ensembles(args, runs: dict, dataset, test: list, cache: Path, save) -> None:
    """``--ensemble``: each member scored alone, then the ensemble (``predict --adapter A --adapter B``)."""
    from medadapt.infer.factory import build_predictor

    dirs = args.runs_in or [args.work / args.name]
    for prompt, method, k, seed, key in pending(args, runs):
        members = []
        for tag in args.ensemble:
            name = f"{method}{tag}_{prompt}_k{k}_s{seed}"
            found = [d / name for d in dirs if (d / name / "adapter" / "adapter.json").is_file()]
            if not found:
                raise SystemExit(f"no finished run {name} in {', '.join(map(str, dirs))}")
            members.append(found[0])
        alone = {}
        for tag, run in zip(args.ensemble, members, strict=True):
            alone[f"{method}{tag}"] = score(build_predictor(None, adapter=run, cache_dir=cache),
                                            dataset, test, prompt)
        t = time.perf_counter()
        ensemble = build_predictor(None, adapter=members, cache_dir=cache)
        runs[key] = {**score(ensemble, dataset, test, prompt), "wall_seconds": time.perf_counter() - t,
                     "provenance": provenance.finish(provenance.start()),
                     "members": [str(m) for m in members], "members_alone": alone,
                     "keep_largest": ensemble.keep_largest, "threads": args.threads,
                     "adapter_bytes": sum(json.loads((m / "result.json").read_text())["adapter_bytes"]
                                          for m in members)}
        save()
        print(key, {m: round(v["dsc"], 4) for m, v in alone.items()}, "ensemble", round(runs[key]["dsc"], 4),
              flush=True)


def write_json(path: Path, data: dict) -> None:
    """Atomic: a killed benchmark never leaves a half-written result file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


PROMPT_ORDER = ("box", "point", "hybrid", "auto")
METHOD_ORDER = ("decoder", "decoder-lora", "decoder-adapter", "lora", "encoder-lora", "adapter", "encoder-adapter",
                "bias", "norm", "full")


def _group_order(group: str) -> tuple:
    """zero-shot first, then by prompt mode, recipe, variant tag, shots."""
    parts = group.split("/")
    if len(parts) < 3:
        return (-1,)
    method, _, tag = parts[0].partition("+")
    return (PROMPT_ORDER.index(parts[1]) if parts[1] in PROMPT_ORDER else 9,
            METHOD_ORDER.index(method) if method in METHOD_ORDER else 99, tag, int(parts[2].lstrip("k") or 0))


def print_table(results: dict) -> None:
    runs = results["runs"]
    groups: dict[str, list[dict]] = {}
    for key, r in runs.items():
        if "error" in r:
            continue
        parts = key.split("/")
        groups.setdefault("/".join(parts[:3]) if len(parts) > 2 else key, []).append(r)
    groups = dict(sorted(groups.items(), key=lambda item: _group_order(item[0])))
    print(f"\nheld-out cases: {len(results['test_cases'])}; mean ± sd over seeds")
    print("| run | n seeds | steps | DSC | NSD 2mm | HD95 mm | fit s | peak MB | trainable | adapter KiB |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for g, rs in groups.items():
        def ms(m, rs=rs):
            v = np.array([r.get(m, np.nan) for r in rs], dtype=float)
            v = v[np.isfinite(v)]
            if not len(v):
                return "–"
            return f"{v.mean():.3f} ± {v.std(ddof=1):.3f}" if len(v) > 1 else f"{v.mean():.3f}"
        # a resumed run's process did only the rest of its fit: its time and memory are not a fit's
        whole = [r for r in rs if not (r.get("provenance") or {}).get("resumed")]
        fit_s = np.mean([r.get("fit_wall_seconds", np.nan) for r in whole]) if whole else np.nan
        peak = np.mean([r.get("peak_rss_mb") or np.nan for r in whole]) if whole else np.nan
        tp = rs[0].get("trainable_params", "–")
        ab = rs[0].get("adapter_bytes")
        print(f"| {g} | {len(rs)} | {rs[0].get('max_steps', '–')} | {ms('dsc')} | {ms('nsd')} | {ms('hd95')} | "
              f"{'–' if np.isnan(fit_s) else f'{fit_s:.0f}'} | {'–' if np.isnan(peak) else f'{peak:.0f}'} | "
              f"{tp if isinstance(tp, str) else f'{tp:,}'} | {'–' if ab is None else f'{ab / 1024:.0f}'} |")


if __name__ == "__main__":
    sys.exit(main())
