"""``medadapt simulate``: the CVPR 2025 interactive protocol (box, then simulated corrective clicks) on a dataset."""

from __future__ import annotations

import math
from pathlib import Path

import typer
from rich.table import Table

from medadapt.cli.common import console, progress_bar, set_threads, user_errors
from medadapt.errors import MedadaptError
from medadapt.io.discovery import resolve_spec

STARTS = ("box3d", "box2d", "auto")


@user_errors
def simulate(
    data: str = typer.Option(..., "--data", help="Dataset spec; its fixed held-out test cases are used."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder for per_case.csv and summary.json."),
    adapter: Path | None = typer.Option(None, "--adapter", metavar="RUN", help="A `medadapt fit` run (default: zero-shot)."),
    model: str | None = typer.Option(None, "--model", help="Zero-shot model when no --adapter (litemedsam)."),
    split: Path | None = typer.Option(None, "--split", help="A split.json whose test cases to use (default: the run's, else the fixed test set)."),
    clicks: int = typer.Option(5, "--clicks", min=0, help="Corrective clicks per object after the initial prompt."),
    start: str = typer.Option("box3d", "--start", help="box3d (one 3D box per class, volumes) | box2d (a 2D box per class and slice) | auto (an automatic-mode adapter's prediction)."),
    plane: str = typer.Option("volume", "--plane", help="volume: click at the deepest voxel of the largest 3D error (official) | slice: on the slice where that error is largest."),
    seed: int = typer.Option(42, "--seed", help="Draw among equally deep click points (42: the official clicks)."),
    mask_feedback: bool = typer.Option(False, "--mask-feedback/--no-mask-feedback", help="Feed the previous low-res mask back as the dense prompt (for models trained with mask prompts; LiteMedSAM was not)."),
    cases: int | None = typer.Option(None, "--cases", min=1, help="Only the first N test cases."),
    clicks_out: Path | None = typer.Option(None, "--clicks-out", help="Folder for one click JSON per case (replayable)."),
    replay: Path | None = typer.Option(None, "--replay", help="Replay the click files of this folder (CASE.json, as --clicks-out writes) instead of simulating; scores the final masks."),
    label_dir: str | None = typer.Option(None, "--label-dir", help="Label folder name."),
    image_suffix: str | None = typer.Option(None, "--image-suffix", help="Image name suffix rule."),
    label_suffix: str | None = typer.Option(None, "--label-suffix", help="Label name suffix rule."),
    tolerance_mm: float = typer.Option(2.0, "--tolerance-mm", help="NSD tolerance in mm."),
    n_boot: int = typer.Option(1000, "--bootstrap", help="Bootstrap resamples for the 95 % CIs."),
    cache_dir: Path | None = typer.Option(None, "--cache-dir", help="Embedding cache folder (reused across runs)."),
    threads: int | None = typer.Option(None, "--threads", help="Torch CPU threads."),
) -> None:
    """Box + N simulated clicks per object; DSC/NSD after every interaction, their AUCs, final DSC/NSD, seconds.

    Each click goes to the centre of the largest error region (missed: positive, extra: negative), as the
    CVPR 2025 interactive challenge. Writes per_case.csv (per case and class: dsc_0..N, nsd_0..N, dsc_auc,
    nsd_auc, final dsc/nsd/hd95) and summary.json.
    """
    from medadapt.data.clicks import save_clicks
    from medadapt.data.datasets import load_segmentation_dataset
    from medadapt.data.fewshot import load_split, make_split
    from medadapt.evaluate.interactive_run import simulate_case
    from medadapt.evaluate.summary import summarize, write_per_case_csv, write_summary_json
    from medadapt.infer.factory import build_predictor
    from medadapt.io.atomic import staged_dir
    from medadapt.run import SUMMARY, RunFolder

    set_threads(threads)
    if start not in STARTS:
        raise MedadaptError(f"--start '{start}' is not one of {', '.join(STARTS)}.", fix="use --start box3d")
    if plane not in ("volume", "slice"):
        raise MedadaptError(f"--plane '{plane}' is not volume or slice.", fix="use --plane volume")
    dataset = load_segmentation_dataset(data, label_dir=label_dir, image_suffix=image_suffix, label_suffix=label_suffix)
    if split is None and adapter is not None and RunFolder(adapter).split_path.is_file():
        split = RunFolder(adapter).split_path
    the_split = load_split(split, dataset) if split is not None else make_split(dataset, shots=1, seed=0)
    keys = list(the_split.test)[:cases] if cases else list(the_split.test)
    if not keys:
        raise MedadaptError("the split has no test cases.", path=split or dataset.root)
    predictor = build_predictor(model, adapter=adapter, cache_dir=cache_dir)
    if start == "auto" and not predictor.is_automatic:
        raise MedadaptError("--start auto needs an adapter trained with --prompt auto.", fix="pass --adapter RUN or --start box3d.")
    classes = sorted(dataset.classes)
    if replay is not None:
        rows = _replay(predictor, dataset, keys, replay, classes, tolerance_mm)
        out.mkdir(parents=True, exist_ok=True)
        summary = summarize(rows, n_boot=n_boot)
        summary["settings"] = {"data": resolve_spec(data), "adapter": str(adapter) if adapter else None,
                               "model": predictor.spec.name, "replay": str(replay), "tolerance_mm": tolerance_mm}
        write_per_case_csv(out / "per_case.csv", rows)
        write_summary_json(out / SUMMARY, summary)
        console.print(f"replayed {len(keys)} click file(s); wrote {out / 'per_case.csv'} and {out / SUMMARY}")
        return
    rows, seconds, decoded, records = [], [], [], {}
    with progress_bar() as bar:
        task = bar.add_task("simulate", total=len(keys))
        for key in keys:
            image, label, spacing, axis = dataset.load(key)
            if axis is not None and predictor.slice_axis is not None:
                axis = predictor.slice_axis
            res = simulate_case(predictor, image, label, spacing, slice_axis=axis, case=key, n_clicks=clicks,
                                start=start, classes=classes, tolerance_mm=tolerance_mm, seed=seed, plane=plane,
                                mask_feedback=mask_feedback)
            rows += res.rows
            seconds.append(res.seconds)
            decoded.append(res.decoded_slices)
            if res.clicks is not None:
                records[key] = res.clicks
            bar.advance(task)
    metrics = ["dsc", "nsd", "hd95", "dsc_auc", "nsd_auc",
               *[f"dsc_{k}" for k in range(clicks + 1)], *[f"nsd_{k}" for k in range(clicks + 1)]]
    summary = summarize(rows, metrics, n_boot=n_boot)
    summary["seconds_per_interaction"] = _per_interaction(seconds)
    summary["decoded_slices_per_interaction"] = _per_interaction(decoded)
    clicked = [(s, d) for per_s, per_d in zip(seconds, decoded, strict=True) for s, d in zip(per_s[1:], per_d[1:], strict=True) if d]
    summary["ms_per_decoded_slice"] = 1000 * sum(s for s, _ in clicked) / max(1, sum(d for _, d in clicked))
    summary["settings"] = {
        "data": resolve_spec(data), "adapter": str(adapter) if adapter else None, "model": predictor.spec.name,
        "split": str(split) if split else "default test set", "clicks": clicks, "start": start, "plane": plane,
        "seed": seed, "mask_feedback": mask_feedback, "tolerance_mm": tolerance_mm,
        "protocol": "CVPR 2025 interactive: AUC over the predictions after clicks 1..N (trapezoid, unit step)",
        "encoder_calls": predictor.encoder_calls, "images_encoded": predictor.images_encoded,
    }
    out.mkdir(parents=True, exist_ok=True)
    if clicks_out is not None and records:
        with staged_dir(clicks_out) as stage:
            for key, rec in records.items():
                save_clicks(stage / f"{key}.json", rec)
    write_per_case_csv(out / "per_case.csv", rows)
    write_summary_json(out / SUMMARY, summary)
    _print(summary, clicks)
    console.print(f"wrote {out / 'per_case.csv'} and {out / SUMMARY}")


def _replay(predictor, dataset, keys, folder: Path, classes, tolerance_mm: float) -> list[dict]:
    """Rows (case, class, dsc, nsd, hd95) of the masks the click files of ``folder`` give; all checked first."""
    from medadapt.data.clicks import load_clicks
    from medadapt.infer.interactive import InteractiveSession
    from medadapt.metrics.segmentation import case_metrics

    rows = []
    for key in keys:
        path = Path(folder) / f"{key}.json"
        record = load_clicks(path)
        image, label, spacing, axis = dataset.load(key)
        if axis is not None and predictor.slice_axis is not None:
            axis = predictor.slice_axis
        session = InteractiveSession(predictor, image, slice_axis=axis, name=key)
        session.replay(record, path=path)
        rows += [{"case": key, **r} for r in case_metrics(label, session.labels(), spacing, classes=classes,
                                                          tolerance_mm=tolerance_mm, cvpr24=True)]
    return rows


def _per_interaction(values: list[list[float]]) -> list[float]:
    """Mean over cases of each interaction's value (index 0: the initial prediction)."""
    n = max((len(v) for v in values), default=0)
    return [float(sum(v[k] for v in values) / len(values)) for k in range(n)]


def _print(summary: dict, clicks: int) -> None:
    table = Table(title="interactive simulation (mean over cases)")
    overall = summary["overall"]
    table.add_column("interaction")
    table.add_column("DSC")
    table.add_column("NSD")
    table.add_column("s")
    secs = summary["seconds_per_interaction"]
    for k in range(clicks + 1):
        name = "box / start" if k == 0 else f"click {k}"
        table.add_row(name, f"{overall[f'dsc_{k}']['mean']:.4f}", f"{overall[f'nsd_{k}']['mean']:.4f}",
                      f"{secs[k]:.3f}" if k < len(secs) else "")
    console.print(table)
    auc = overall["dsc_auc"]["mean"], overall["nsd_auc"]["mean"]
    console.print(f"DSC-AUC {auc[0]:.4f}  NSD-AUC {auc[1]:.4f}  final DSC {overall['dsc']['mean']:.4f}  "
                  f"final NSD {overall['nsd']['mean']:.4f}  ms per re-decoded slice "
                  f"{summary['ms_per_decoded_slice']:.1f}" if not math.isnan(auc[0]) else "no scores")
