"""Image enlarging and ROI ("zoom-in") inference on validation cases: which input variant, if any, to make the default.

Variants: ``--resize`` (official = the model's own preprocessing, cv2 INTER_AREA for LiteMedSAM; bilinear;
cubic) x (whole slice, or ROI crops with each ``--margins`` value), all with box prompts from the labels:
``box``, a 2D box per class on every labelled slice (the protocol of ``evaluate --data``), or for volumes
``box3d``, one 3D box per class with CVPR24 slice-to-slice propagation. LiteMedSAM zero-shot, or with
``--adapter RUN`` an adapted run. Cases: the VALIDATION cases only (``make_split(shots=1, seed=0).val``, the
cases a fit of this split validates on; an adapter run's own ``split.json`` validation cases; zero-shot with
``--cases pool`` or on a split without validation cases, e.g. prostate's given split: every non-test case),
never the test cases, so that the choice of a default stays clean. Volumes are reassembled and scored in 3D with their
spacing (DSC, NSD 2 mm, HD95), 2D images with spacing 1.

Writes bench/results/zoom_<name>.json after every variant (resumable: finished variants are kept), with
per-case rows, means, the paired difference to ``official/full`` and provenance (bench/provenance.py).

    .venv/bin/python bench/bench_zoom.py --data ../shared/data/hippocampus --name hippocampus --prompts box box3d
    .venv/bin/python bench/bench_zoom.py --data ../shared/data/prostate_mri_2d --name prostate
    .venv/bin/python bench/bench_zoom.py --data ../shared/data/drive/training --label-dir 1st_manual \\
        --image-suffix _training --label-suffix _manual1 --name drive
    # an adapted run, scored on its own validation cases, under its tag
    .venv/bin/python bench/bench_zoom.py --data ../shared/data/hippocampus --name hippocampus --adapter RUN --tag k5
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import provenance  # noqa: E402
from bench_fewshot import write_json  # noqa: E402

BASELINE = "official/full"
CRITERION = ("mean DSC over the validation cases' (case, class) rows; a variant other than official/full wins "
             "only with a higher mean DSC than official/full")


def variant_names(resizes: list[str], margins: list[float]) -> list[str]:
    """``RESIZE/full`` and ``RESIZE/roiM`` for every resize and margin; official/full first."""
    names = [f"{r}/{'full' if m is None else f'roi{m:g}'}" for r in resizes for m in [None, *margins]]
    return sorted(names, key=lambda n: n != BASELINE)


def parse_variant(name: str) -> tuple[str, float | None]:
    resize, crop = name.split("/")
    return resize, None if crop == "full" else float(crop.removeprefix("roi"))


def predict(predictor, dataset, key: str, prompts: str):
    """(label, segmentation, spacing) of one case with box prompts from its label."""
    from medadapt.data.prompts import boxes3d_from_label
    from medadapt.infer.loaded import predict_loaded
    from medadapt.infer.volume import segment_volume_boxes3d

    image, label, spacing, axis = dataset.load(key)
    if prompts == "box3d":
        if axis is None:
            raise SystemExit("--prompts box3d needs volumes; this dataset holds 2D images")
        boxes, classes = boxes3d_from_label(label, slice_axis=axis)
        seg = segment_volume_boxes3d(predictor, image, boxes, slice_axis=axis, values=classes)
    else:
        seg = predict_loaded(predictor, image, label, axis, "box")
    return label, seg, spacing


def mean_finite(values) -> float:
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return statistics.fmean(vals) if vals else float("nan")


def summarise(rows: list[dict]) -> dict:
    per_class = {str(c): mean_finite(r["dsc"] for r in rows if r["class"] == c) for c in sorted({r["class"] for r in rows})}
    return {"dsc": mean_finite(r["dsc"] for r in rows), "nsd": mean_finite(r["nsd"] for r in rows),
            "hd95": mean_finite(r["hd95"] for r in rows), "dsc_per_class": per_class, "n_rows": len(rows)}


def paired(rows: list[dict], base: list[dict]) -> dict:
    """DSC difference to the baseline, row by row (same case and class)."""
    ref = {(r["case"], r["class"]): r["dsc"] for r in base}
    diffs = [r["dsc"] - ref[(r["case"], r["class"])] for r in rows if (r["case"], r["class"]) in ref]
    return {"mean_delta_dsc": mean_finite(diffs), "rows_better": int(sum(d > 0 for d in diffs)),
            "rows_worse": int(sum(d < 0 for d in diffs)), "rows": len(diffs)}


def print_table(data: dict) -> None:
    """One markdown table per model and prompt protocol: every variant against official/full."""
    for group, entry in data["runs"].items():
        sel = entry.get("selection") or {}
        print(f"{group}: {len(entry['cases'])} case(s) ({entry['cases_from']}); highest mean DSC: "
              f"`{sel.get('best')}`")
        print()
        print("| variant | DSC | Δ DSC vs official/full | rows better / worse | NSD | HD95 | images encoded | s |")
        print("|---|---|---|---|---|---|---|---|")
        for name, v in entry["variants"].items():
            vs = v.get("vs_baseline") or {}
            delta = "–" if name == BASELINE or not vs else f"{vs['mean_delta_dsc']:+.4f}"
            better = "–" if name == BASELINE or not vs else f"{vs['rows_better']} / {vs['rows_worse']}"
            print(f"| `{name}` | {v['dsc']:.4f} | {delta} | {better} | {v['nsd']:.4f} | {v['hd95']:.2f} | "
                  f"{v['images_encoded']} | {v['seconds']:.0f} |")
        print()


def main() -> int:
    import torch

    from medadapt.data.datasets import load_segmentation_dataset
    from medadapt.data.fewshot import load_split, make_split
    from medadapt.infer.factory import build_predictor
    from medadapt.metrics import case_metrics
    from medadapt.run import RunFolder

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", help="dataset spec (required unless --table-only)")
    ap.add_argument("--name", required=True)
    ap.add_argument("--label-dir", default=None)
    ap.add_argument("--image-suffix", default=None)
    ap.add_argument("--label-suffix", default=None)
    ap.add_argument("--resize", nargs="+", default=["official", "bilinear"])
    ap.add_argument("--margins", nargs="*", type=float, default=[0.5],
                    help="ROI margins (fraction of the box size); none: whole images only")
    ap.add_argument("--prompts", nargs="+", default=["box"], choices=["box", "box3d"])
    ap.add_argument("--adapter", type=Path, default=None, metavar="RUN", help="an adapted run (default: zero-shot)")
    ap.add_argument("--tag", default=None, help="result key of this model (default: zero-shot, or the run's name)")
    ap.add_argument("--cases", choices=["val", "pool"], default="val",
                    help="zero-shot: the split's validation cases, or every non-test case (none of them is ever "
                         "trained on by a zero-shot model); a split without validation cases uses the pool")
    ap.add_argument("--limit", type=int, default=None, help="only the first N validation cases (a smoke test)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out-json", type=Path, default=None)
    ap.add_argument("--table-only", action="store_true", help="print the table of the result file; runs nothing")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if "official" not in args.resize:
        ap.error("--resize must include official (the baseline every variant is compared with)")

    out_json = args.out_json or ROOT / "bench" / "results" / f"zoom_{args.name}.json"
    if args.table_only:
        print_table(json.loads(out_json.read_text()))
        return 0
    if not args.data:
        ap.error("--data is required")
    ds_kw = dict(label_dir=args.label_dir, image_suffix=args.image_suffix, label_suffix=args.label_suffix)
    dataset = load_segmentation_dataset(args.data, **{k: v for k, v in ds_kw.items() if v})
    if args.adapter is not None:
        if args.cases == "pool":
            ap.error("--cases pool holds an adapted run's training cases; use --cases val with --adapter")
        if not RunFolder(args.adapter).split_path.is_file():
            ap.error(f"{args.adapter} has no split.json: its validation cases are unknown")
        val, which = list(load_split(RunFolder(args.adapter).split_path, dataset).val), "the run's split.json val"
    else:
        val, which = list(make_split(dataset, shots=1, seed=0).val), "make_split(shots=1, seed=0).val"
        if args.cases == "pool" or not val:  # e.g. prostate: the given split has no validation list
            pool = make_split(dataset, seed=0)
            val, which = list(pool.train) + list(pool.val), "every non-test case of make_split(seed=0)"
    if not val:
        raise SystemExit("no validation cases")
    keys = val[: args.limit] if args.limit else val
    classes = sorted(dataset.classes) if dataset.classes else None
    tag = args.tag or ("zero-shot" if args.adapter is None else args.adapter.name)

    results = json.loads(out_json.read_text()) if out_json.exists() else {}
    results.update({"data": args.data, "criterion": CRITERION, "baseline": BASELINE})
    runs = results.setdefault("runs", {})
    prov = provenance.start(resumed=bool(runs))
    command = "bench/bench_zoom.py " + " ".join(sys.argv[1:])
    for prompts in args.prompts:
        group = f"{tag}/{prompts}"
        entry = runs.setdefault(group, {})
        if entry.get("cases") not in (None, keys):  # another case list: start this group again
            entry.clear()
        entry.update({"model": "litemedsam" if args.adapter is None else None,
                      "adapter": str(args.adapter) if args.adapter else None, "prompts": prompts,
                      "cases_from": which, "cases": keys, "limit": args.limit, "threads": args.threads})
        variants = entry.setdefault("variants", {})
        for name in variant_names(args.resize, args.margins):
            if name in variants:
                continue
            resize, margin = parse_variant(name)
            predictor = build_predictor(None if args.adapter else "litemedsam", adapter=args.adapter, resize=resize,
                                        roi_margin=margin)
            rows, start = [], time.perf_counter()
            for key in keys:
                label, seg, spacing = predict(predictor, dataset, key, prompts)
                rows += [{"case": key, **r} for r in case_metrics(label, seg, spacing, classes=classes)]
            variants[name] = {**summarise(rows), "resize": resize, "roi_margin": margin,
                              "seconds": time.perf_counter() - start, "images_encoded": predictor.images_encoded,
                              "rows": rows}
            base = variants.get(BASELINE)
            for v in variants.values():
                v["vs_baseline"] = paired(v["rows"], base["rows"]) if base else None
            best = max(variants, key=lambda n: (round(variants[n]["dsc"], 12), n == BASELINE))
            entry["selection"] = {"best": best, "dsc": variants[best]["dsc"],
                                  "baseline_dsc": base["dsc"] if base else None}
            results["provenance"] = provenance.finish(prov)
            results["command"] = command
            write_json(out_json, results)
            print(f"{group} {name}: DSC {variants[name]['dsc']:.4f} NSD {variants[name]['nsd']:.4f} "
                  f"({len(keys)} case(s), {variants[name]['seconds']:.0f} s)", flush=True)
        print(f"{group}: best {entry['selection']['best']} (DSC {entry['selection']['dsc']:.4f}, "
              f"official/full {entry['selection']['baseline_dsc']:.4f})", flush=True)
    print_table(results)
    print(f"wrote {out_json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
