"""``medadapt simulate`` as one library call: the CVPR 2025 interactive protocol over a dataset's test cases.

Each case goes through :func:`medadapt.evaluate.interactive_run.simulate_case` (an initial prompt, then
corrective clicks); the per-case rows become ``per_case.csv`` and a ``summary.json`` with the AUCs, the
seconds and the decoder work per interaction. With ``replay``, the click files another simulation wrote
are applied instead and the final masks scored.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medadapt.data.clicks import load_clicks, save_clicks
from medadapt.data.datasets import load_segmentation_dataset
from medadapt.data.fewshot import load_split, make_split
from medadapt.errors import MedadaptError
from medadapt.evaluate.interactive_run import simulate_case
from medadapt.evaluate.segment_run import source_volume
from medadapt.evaluate.summary import adapter_settings, summarize, write_per_case_csv, write_summary_json
from medadapt.infer.factory import PredictorSpec, adapters_of, load_predictor
from medadapt.infer.interactive import CLICK_REACH, CLICK_WINDOW, InteractiveSession, check_click_window
from medadapt.io.atomic import staged_dir
from medadapt.io.discovery import resolve_spec
from medadapt.metrics.segmentation import case_metrics
from medadapt.run import SUMMARY, RunFolder

__all__ = ["PLANES", "STARTS", "SUBSETS", "Simulation", "simulate_dataset"]

STARTS = ("box3d", "box2d", "auto")
PLANES = ("volume", "slice")
SUBSETS = ("test", "val")  # val: for choosing session settings (click reach) without looking at test cases


@dataclass
class Simulation:
    """The summary written, and whether it is a replay (final scores only, no per-interaction curve)."""

    summary: dict
    replayed: bool
    message: str


def simulate_dataset(
    data: str,
    out: Path,
    *,
    adapter: Path | Sequence[Path] | None = None,
    model: str | None = None,
    split: Path | None = None,
    clicks: int = 5,
    start: str = "box3d",
    plane: str = "volume",
    seed: int = 42,
    mask_feedback: bool = False,
    click_reach: int = CLICK_REACH,
    click_window: float | str | None = CLICK_WINDOW,
    cases: int | None = None,
    cases_from: str = "test",
    clicks_out: Path | None = None,
    replay: Path | None = None,
    label_dir: str | None = None,
    image_suffix: str | None = None,
    label_suffix: str | None = None,
    tolerance_mm: float = 2.0,
    n_boot: int = 1000,
    cache_dir: Path | None = None,
    resize: str | None = None,
    roi_margin: float | None = None,
    engine: str = "torch",
    decoder_precision: str = "fp32",
    threads: int | None = None,
    load: Callable[[PredictorSpec], Any] = load_predictor,
    progress: Callable[[int], Callable[[], None]] | None = None,
) -> Simulation:
    """Simulate (or ``replay``) the interactions on the test cases of ``split`` (default: the run's split,
    else the dataset's fixed test set) and write ``per_case.csv`` + ``summary.json`` into ``out``.

    ``cases_from="val"`` uses the split's validation cases instead (to choose settings such as
    ``click_reach`` or ``click_window`` without the test cases).

    ``engine`` / ``decoder_precision`` / ``threads`` pick the back-end of the :class:`PredictorSpec` that
    ``load`` turns into a predictor: the torch one here; the CLI passes
    :func:`medadapt.deploy.backend.load_predictor`, which also runs ONNX Runtime / OpenVINO exports.

    ``progress(n)`` is called once with the number of cases and returns the per-case callback.
    """
    if start not in STARTS:
        raise MedadaptError(f"--start '{start}' is not one of {', '.join(STARTS)}.", fix="use --start box3d")
    if plane not in PLANES:
        raise MedadaptError(f"--plane '{plane}' is not volume or slice.", fix="use --plane volume")
    click_window = check_click_window(click_window)
    if cases_from not in SUBSETS:
        raise MedadaptError(f"--cases-from '{cases_from}' is not test or val.", fix="use --cases-from test")
    dataset = load_segmentation_dataset(data, label_dir=label_dir, image_suffix=image_suffix, label_suffix=label_suffix)
    runs = adapters_of(adapter)  # several: an ensemble
    if split is None and runs and RunFolder(runs[0]).split_path.is_file():
        split = RunFolder(runs[0]).split_path
    the_split = load_split(split, dataset) if split is not None else make_split(dataset, shots=1, seed=0)
    pool = list(the_split.val if cases_from == "val" else the_split.test)
    keys = pool[:cases] if cases else pool
    if not keys:
        raise MedadaptError(f"the split has no {cases_from} cases.", path=split or dataset.root,
                            fix="give a --split with such cases (`medadapt fit` writes one into its run).")
    predictor = load(PredictorSpec(model=model, adapters=runs, backend=engine, decoder_precision=decoder_precision,
                                   threads=threads, cache_dir=cache_dir, resize=resize, roi_margin=roi_margin))
    resize = getattr(predictor, "resize", resize)  # the one in use (an ensemble's members each resolve their own)
    if start == "auto" and not predictor.is_automatic:
        raise MedadaptError("--start auto needs an adapter trained with --prompt auto.", fix="pass --adapter RUN or --start box3d.")
    classes = sorted(dataset.classes)
    if replay is not None:
        rows = _replay(predictor, dataset, keys, replay, classes, tolerance_mm)
        out.mkdir(parents=True, exist_ok=True)
        summary = summarize(rows, n_boot=n_boot)
        summary["settings"] = {"data": resolve_spec(data), **adapter_settings(runs),
                               "model": predictor.spec.name, "replay": str(replay), "tolerance_mm": tolerance_mm,
                               "resize": resize, "roi_margin": roi_margin}
        write_per_case_csv(out / "per_case.csv", rows)
        write_summary_json(out / SUMMARY, summary)
        return Simulation(summary, True, f"replayed {len(keys)} click file(s); wrote {out / 'per_case.csv'} and "
                                         f"{out / SUMMARY}")
    rows, seconds, decoded, records = [], [], [], {}
    advance = progress(len(keys)) if progress else None
    for key in keys:
        image, label, spacing, axis = dataset.load(key)
        if axis is not None and predictor.slice_axis is not None:
            axis = predictor.slice_axis
        res = simulate_case(predictor, image, label, spacing, slice_axis=axis, case=key, n_clicks=clicks,
                            start=start, classes=classes, tolerance_mm=tolerance_mm, seed=seed, plane=plane,
                            mask_feedback=mask_feedback, click_reach=click_reach, click_window=click_window,
                            volume=source_volume(predictor, dataset.case(key)))
        rows += res.rows
        seconds.append(res.seconds)
        decoded.append(res.decoded_slices)
        if res.clicks is not None:
            records[key] = res.clicks
        if advance:
            advance()
    metrics = ["dsc", "nsd", "hd95", "dsc_auc", "nsd_auc",
               *[f"dsc_{k}" for k in range(clicks + 1)], *[f"nsd_{k}" for k in range(clicks + 1)]]
    summary = summarize(rows, metrics, n_boot=n_boot)
    summary["seconds_per_interaction"] = _per_interaction(seconds)
    summary["decoded_slices_per_interaction"] = _per_interaction(decoded)
    clicked = [(s, d) for per_s, per_d in zip(seconds, decoded, strict=True)
               for s, d in zip(per_s[1:], per_d[1:], strict=True) if d]
    summary["ms_per_decoded_slice"] = 1000 * sum(s for s, _ in clicked) / max(1, sum(d for _, d in clicked))
    summary["settings"] = {
        "data": resolve_spec(data), **adapter_settings(runs), "model": predictor.spec.name,
        "split": str(split) if split else "default test set", "cases_from": cases_from, "cases": keys,
        "clicks": clicks, "click_reach": click_reach, "click_window": click_window, "start": start, "plane": plane,
        "seed": seed, "mask_feedback": mask_feedback, "tolerance_mm": tolerance_mm, "resize": resize,
        "roi_margin": roi_margin, "engine": engine, "decoder_precision": decoder_precision,
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
    return Simulation(summary, False, f"wrote {out / 'per_case.csv'} and {out / SUMMARY}")


def _replay(predictor, dataset, keys, folder: Path, classes, tolerance_mm: float) -> list[dict]:
    """Rows (case, class, dsc, nsd, hd95) of the masks the click files of ``folder`` give; all checked first."""
    rows = []
    for key in keys:
        path = Path(folder) / f"{key}.json"
        record = load_clicks(path)
        image, label, spacing, axis = dataset.load(key)
        if axis is not None and predictor.slice_axis is not None:
            axis = predictor.slice_axis
        session = InteractiveSession(predictor, image, slice_axis=axis, name=key, volume=source_volume(predictor, dataset.case(key)))
        session.replay(record, path=path)
        rows += [{"case": key, **r} for r in case_metrics(label, session.labels(), spacing, classes=classes,
                                                          tolerance_mm=tolerance_mm, cvpr24=True)]
    return rows


def _per_interaction(values: list[list[float]]) -> list[float]:
    """Mean over cases of each interaction's value (index 0: the initial prediction)."""
    n = max((len(v) for v in values), default=0)
    return [float(sum(v[k] for v in values) / len(values)) for k in range(n)]
