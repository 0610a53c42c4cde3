"""``medadapt simulate``: the CVPR 2025 interactive protocol (box, then simulated corrective clicks) on a dataset."""

from __future__ import annotations

import math
from pathlib import Path

import typer
from rich.table import Table

from medadapt.cli.common import RESIZE_HELP, ROI_HELP, console, progress_bar, set_threads, user_errors
from medadapt.infer.interactive import CLICK_REACH, CLICK_WINDOW


@user_errors
def simulate(
    data: str = typer.Option(..., "--data", help="Dataset spec; its fixed held-out test cases are used."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder for per_case.csv and summary.json."),
    adapter: list[Path] | None = typer.Option(None, "--adapter", metavar="RUN", help="A `medadapt fit` run (default: zero-shot); several automatic-mode runs: their ensemble starts the objects (--start auto) and its first SAM-family member decodes the clicks."),
    model: str | None = typer.Option(None, "--model", help="Zero-shot model when no --adapter (litemedsam)."),
    split: Path | None = typer.Option(None, "--split", help="A split.json whose test cases to use (default: the run's, else the fixed test set)."),
    clicks: int = typer.Option(5, "--clicks", min=0, help="Corrective clicks per object after the initial prompt."),
    start: str = typer.Option("box3d", "--start", help="box3d (one 3D box per class, volumes) | box2d (a 2D box per class and slice) | auto (an automatic-mode adapter's prediction)."),
    plane: str = typer.Option("volume", "--plane", help="volume: click at the deepest voxel of the largest 3D error (official) | slice: on the slice where that error is largest."),
    seed: int = typer.Option(42, "--seed", help="Draw among equally deep click points (42: the official clicks)."),
    mask_feedback: bool = typer.Option(False, "--mask-feedback/--no-mask-feedback", help="Feed the previous low-res mask back as the dense prompt (for models trained with mask prompts; LiteMedSAM was not)."),
    click_reach: int = typer.Option(CLICK_REACH, "--click-reach", min=0, help="Carry each click to up to this many neighbouring slices on each side while the mask there is in the state the click corrects (0: the clicked slice only)."),
    click_window: str = typer.Option(str(CLICK_WINDOW), "--click-window", metavar="F|none", help="A click changes its slice only within a square of F times the object's box side around it (FocalClick-style local refinement; the default was chosen on validation cases); none: the whole slice."),
    cases: int | None = typer.Option(None, "--cases", min=1, help="Only the first N test cases."),
    cases_from: str = typer.Option("test", "--cases-from", help="test (the split's held-out test cases) | val (its validation cases, for choosing settings)."),
    clicks_out: Path | None = typer.Option(None, "--clicks-out", help="Folder for one click JSON per case (replayable)."),
    replay: Path | None = typer.Option(None, "--replay", help="Replay the click files of this folder (CASE.json, as --clicks-out writes) instead of simulating; scores the final masks."),
    label_dir: str | None = typer.Option(None, "--label-dir", help="Label folder name."),
    image_suffix: str | None = typer.Option(None, "--image-suffix", help="Image name suffix rule."),
    label_suffix: str | None = typer.Option(None, "--label-suffix", help="Label name suffix rule."),
    tolerance_mm: float = typer.Option(2.0, "--tolerance-mm", help="NSD tolerance in mm."),
    n_boot: int = typer.Option(1000, "--bootstrap", help="Bootstrap resamples for the 95 % CIs."),
    cache_dir: Path | None = typer.Option(None, "--cache-dir", help="Embedding cache folder (reused across runs)."),
    threads: int | None = typer.Option(None, "--threads", help="CPU threads (torch and the runtime engines)."),
    engine: str = typer.Option("torch", "--engine", help="torch | onnxruntime | openvino: the base model (+ adapter) exported once into the medadapt cache and run there."),
    decoder_precision: str = typer.Option("fp32", "--decoder-precision", help="Mask decoder precision: fp32 | int8 (--engine onnxruntime) | bf16 (--engine openvino, a bf16 CPU). Faster clicks, not equal to fp32 (docs/interactive.md#latency)."),
    resize: str | None = typer.Option(None, "--resize", help=RESIZE_HELP),
    roi_margin: float | None = typer.Option(None, "--roi-margin", metavar="F", help=ROI_HELP + " In a session every slice of an object is encoded in one crop around its box, so clicks reuse it."),
) -> None:
    """Box + N simulated clicks per object; DSC/NSD after every interaction, their AUCs, final DSC/NSD, seconds.

    Each click goes to the centre of the largest error region (missed: positive, extra: negative), as the
    CVPR 2025 interactive challenge. Writes per_case.csv (per case and class: dsc_0..N, nsd_0..N, dsc_auc,
    nsd_auc, final dsc/nsd/hd95) and summary.json.
    """
    from medadapt.deploy.backend import load_predictor
    from medadapt.evaluate.simulate import simulate_dataset

    set_threads(threads)
    with progress_bar() as bar:
        result = simulate_dataset(
            data, out, adapter=adapter, model=model, split=split, clicks=clicks, start=start, plane=plane, seed=seed,
            mask_feedback=mask_feedback, click_reach=click_reach, click_window=click_window, cases=cases, cases_from=cases_from, clicks_out=clicks_out, replay=replay, label_dir=label_dir,
            image_suffix=image_suffix, label_suffix=label_suffix, tolerance_mm=tolerance_mm, n_boot=n_boot,
            cache_dir=cache_dir, resize=resize, roi_margin=roi_margin, engine=engine, decoder_precision=decoder_precision,
            threads=threads, load=load_predictor, progress=lambda n: _advance(bar, bar.add_task("simulate", total=n)),
        )
    if not result.replayed:
        _print(result.summary, clicks)
    console.print(result.message)


def _advance(bar, task):
    return lambda: bar.advance(task)


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
