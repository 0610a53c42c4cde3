"""Choose the interactive session's click reach and click window on validation cases (never on test cases).

The click reach (:mod:`medadapt.infer.interactive`) carries a click to up to R neighbouring slices on
each side while the mask there is in the state the click corrects. This script runs the CVPR 2025
protocol of ``medadapt simulate`` (a 3D box per class, then N clicks at the deepest voxel of the largest
error) on the validation cases of the fixed split (``make_split(shots=5, seed=0)``, the cases a 5-shot
fit validates on), for every configuration (zero-shot, or a ``medadapt fit`` run) and every R. Each case
is encoded and box-propagated once per configuration; every R then continues from a copy of that start,
so the sweep costs the clicks only. ``--window`` sweeps the click window (``none``: a click may change its
whole slice; a number f: only a square of f x the box side around it) the same way, for every reach.

Writes bench/results/interactive_<name>_val.json after every case (entries as bench_clicks.py writes,
one per configuration, R and window; ``selection`` holds the (R, window) with the highest mean DSC-AUC
over all configurations' objects, ties to the smaller R and then to no window / the smaller window), with
provenance (bench/provenance.py). The session defaults are chosen from these files by the same
criterion pooled over every dataset's validation objects (:func:`pooled_choice`).

    .venv/bin/python bench/bench_click_reach.py --data ../shared/data/hippocampus --name hippocampus \\
        --reach 0 1 2 4 8 --config zero-shot --config decoder-click/s0=RUN_CLICK --cache-dir CACHE
    .venv/bin/python bench/bench_click_reach.py --data ../shared/data/drive/training --name drive \\
        --label-dir 1st_manual --image-suffix _training --label-suffix _manual1 \\
        --reach 0 --window none 0.25 0.5 1 --config zero-shot --config decoder-box/s0=RUN_BOX
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
from medadapt.errors import MedadaptError  # noqa: E402
from medadapt.evaluate.interactive_run import simulate_clicks, start_session  # noqa: E402
from medadapt.infer.factory import build_predictor  # noqa: E402
from medadapt.infer.interactive import InteractiveSession, check_click_window  # noqa: E402
from medadapt.run import RunFolder  # noqa: E402

CRITERION = ("mean DSC-AUC over the validation objects of all configurations; ties to the smaller reach, "
             "then to no window or the smaller window")


def _setting(entry: dict) -> tuple[int, float | None]:
    return entry["click_reach"], entry.get("click_window")


def _order(setting: tuple[int, float | None]) -> tuple:
    reach, window = setting
    return (-reach, 1 if window is None else 0, -(window or 0.0))  # larger is preferred on ties


def choose(entries: dict, settings: list[tuple[int, float | None]] | None = None) -> tuple[int, float | None]:
    """The (reach, window) with the highest mean DSC-AUC over every configuration's objects (see CRITERION)."""
    settings = settings or sorted({_setting(e) for e in entries.values()}, key=_order)
    score = {st: statistics.fmean(row["dsc_auc"] for e in entries.values() if _setting(e) == st
                                  for row in e["rows"]) for st in settings}
    return max(settings, key=lambda st: (round(score[st], 12), _order(st)))


def pooled_choice(files: list[Path]) -> tuple[int, float | None]:
    """The session default over several datasets' sweep files: the same criterion over all their objects,
    among the settings every file swept."""
    entries = {}
    common = None
    for f in files:
        data = json.loads(Path(f).read_text())
        entries.update({f"{f.name}:{k}": e for k, e in data["runs"].items()})
        swept = {_setting(e) for e in data["runs"].values()}
        common = swept if common is None else common & swept
    return choose(entries, sorted(common or (), key=_order))



def _window(text: str) -> float | None:
    """``--window`` values: the session's own rule (``check_click_window``), as argparse errors."""
    try:
        return check_click_window(text)
    except MedadaptError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--name", required=True)
    ap.add_argument("--config", action="append", required=True, metavar="NAME[=RUN]")
    ap.add_argument("--reach", type=int, nargs="+", required=True)
    ap.add_argument("--window", type=_window, nargs="+", default=[None], metavar="F|none",
                    help="click windows to sweep (none: the whole slice)")
    for flag in ("--label-dir", "--image-suffix", "--label-suffix"):  # 2D image folders (DRIVE), as simulate takes them
        ap.add_argument(flag, default=None)
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
    dataset = load_segmentation_dataset(args.data, **{k: getattr(args, k) for k in ("label_dir", "image_suffix",
                                                                                    "label_suffix") if getattr(args, k)})
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
    settings = [(r, w) for r in args.reach for w in args.window]
    rows: dict[tuple[str, tuple], list[dict]] = {(n, st): [] for n, *_ in configs for st in settings}
    done = []
    for key in keys:
        image, label, spacing, axis = dataset.load(key)
        for name, _, _, predictor in configs:
            ax = predictor.slice_axis if axis is not None and predictor.slice_axis is not None else axis
            session = InteractiveSession(predictor, image, slice_axis=ax, name=key)
            ids = start_session(session, label, classes, "box3d")
            started = copy.deepcopy(session.objects)
            for reach, window in settings:
                session.objects = copy.deepcopy(started)
                session.click_reach, session.click_window = reach, window
                res = simulate_clicks(session, ids, label, spacing, case=key, n_clicks=args.clicks,
                                      classes=classes, plane=args.plane)
                rows[(name, (reach, window))] += res.rows
            print(f"{key} {name}: " + " ".join(
                f"R{r}/W{w} {statistics.fmean(x['dsc_auc'] for x in rows[(name, (r, w))]):.3f}" for r, w in settings),
                flush=True)
        done.append(key)
        entries = {}
        for name, _run, fit, _ in configs:
            for reach, window in settings:
                entry = summarise_rows([{k: v for k, v in r.items()} for r in rows[(name, (reach, window))]],
                                       args.clicks, args.target)
                label_w = "" if window is None else f", window {window:g}"
                entry.update({"config": f"{name}, reach {reach}{label_w}", "click_reach": reach,
                              "click_window": window, "fit": fit,
                              "clicks": args.clicks, "plane": args.plane, "cases_from": "val", "case_keys": done,
                              "threads": args.threads, "seconds_per_interaction": None,
                              "ms_per_decoded_slice": None,
                              "rows": [{k: r[k] for k in ("case", "class", "dsc_auc", "dsc_0", f"dsc_{args.clicks}")}
                                       for r in rows[(name, (reach, window))]]})
                entries[f"{name}/reach{reach}" + ("" if window is None else f"/window{window:g}")] = entry
        chosen = choose(entries, settings)
        command = "bench/bench_click_reach.py " + " ".join(sys.argv[1:])
        finished = provenance.finish(prov)
        for e in entries.values():
            e["provenance"] = finished
            e["command"] = command
        write_json(out_json, {"data": args.data, "runs": entries, "provenance": finished,
                              "selection": {"criterion": CRITERION, "reaches": args.reach, "windows": args.window,
                                            "cases": done, "click_reach": chosen[0], "click_window": chosen[1]}})
        print(f"after {len(done)} case(s): click reach {chosen[0]}, click window {chosen[1]}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
