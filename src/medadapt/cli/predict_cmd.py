"""``medadapt predict``: prompted segmentation of 2D images, volumes and CVPR24 ``.npz`` files."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from medadapt.cli.common import (
    ADAPTER_HELP,
    MIRROR_HELP,
    RESIZE_HELP,
    ROI_HELP,
    console,
    progress_bar,
    set_threads,
    user_errors,
)
from medadapt.errors import MedadaptError


@user_errors
def predict(
    input: Path = typer.Option(..., "--input", "-i", help="Image/volume/.npz file, or a folder of them (recursive)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder; files keep the input names."),
    prompts: str | None = typer.Option(
        None,
        "--prompts",
        "-p",
        help="Prompt SOURCE: boxes-from-labels (2D box per class per slice), boxes3d-from-labels (one 3D box per "
        "class, CVPR24 propagation), points-from-labels, file-boxes (boxes inside CVPR24 .npz), auto (no prompt: "
        "an adapter fitted with --prompt auto), or a JSON/CSV prompt file. Default: auto for such an adapter, "
        "else boxes-from-labels.",
    ),
    labels: Path | None = typer.Option(None, "--labels", "-l", help="Label file or folder, matched to inputs by name."),
    model: str = typer.Option("litemedsam", "--model", "-m", help="Model name (see `medadapt models`)."),
    checkpoint: Path | None = typer.Option(None, "--checkpoint", help="Official checkpoint file for the model."),
    adapter: list[Path] | None = typer.Option(None, "--adapter", metavar="RUN", help=ADAPTER_HELP),
    slice_axis: int | None = typer.Option(None, "--slice-axis", help="Volume axis to slice (default: through-plane by spacing)."),
    modality: str = typer.Option("auto", "--modality", help="Intensity normalisation: auto | ct | mr | none."),
    window: str | None = typer.Option(None, "--window", help="CT window: a preset name (e.g. abdomen) or 'level,width'."),
    per: str = typer.Option("class", "--per", help="Boxes from labels: one per 'class' or per 'component'."),
    jitter: int = typer.Option(0, "--jitter", help="Random box jitter in pixels (evaluation robustness)."),
    n_pos: int = typer.Option(1, "--points", help="Positive points per object for points-from-labels."),
    n_neg: int = typer.Option(0, "--neg-points", help="Negative points per object for points-from-labels."),
    image_suffix: str | None = typer.Option(None, "--image-suffix", help="Suffix dropped from image names when pairing."),
    label_suffix: str | None = typer.Option(None, "--label-suffix", help="Suffix dropped from label names when pairing."),
    batch_size: int | None = typer.Option(None, "--batch-size", min=1,
                                           help="Slices per encoder call (default: 1 on a CPU, where it is fastest; 8 on a GPU)."),
    engine: str = typer.Option(
        "auto", "--engine",
        help="auto | torch | onnxruntime | openvino. auto: the fastest engine and precision within 0.005 DSC of "
             "PyTorch fp32 on the benchmark (CPU with bf16: openvino bf16; CPU without: openvino fp32; GPU or no "
             "OpenVINO: torch fp32; see docs/deploy.md).",
    ),
    precision: str | None = typer.Option(
        None, "--precision",
        help="fp32 | bf16 (torch autocast, openvino) | mixed (openvino: fp32 stem, bf16 rest; bf16's speed at fp32's "
             "DSC) | int8 (onnxruntime/openvino, needs --export). Default: what --engine auto picks, else fp32."
    ),
    export: Path | None = typer.Option(
        None, "--export", help="Folder from `medadapt export` (default with a runtime engine: export once into the cache)."
    ),
    ov_cache: Path | None = typer.Option(None, "--ov-cache", help="OpenVINO compiled-model cache (default EXPORT/ov_cache)."),
    cache_dir: Path | None = typer.Option(None, "--cache-dir", help="On-disk embedding cache (re-runs skip the encoder)."),
    threads: int | None = typer.Option(None, "--threads", help="CPU threads (torch and the runtime engines)."),
    seed: int = typer.Option(0, "--seed", help="Seed for jitter and random points."),
    mirror: bool = typer.Option(False, "--mirror", help=MIRROR_HELP),
    resize: str | None = typer.Option(None, "--resize", help=RESIZE_HELP),
    roi_margin: float | None = typer.Option(None, "--roi-margin", metavar="F", help=ROI_HELP),
) -> None:
    """Segment images or volumes with box / point prompts; outputs keep the input names and geometry."""
    from medadapt.deploy.auto import resolve_engine
    from medadapt.infer.cases import PredictOptions
    from medadapt.infer.factory import PredictorSpec, adapters_of
    from medadapt.infer.run_predict import run_task
    from medadapt.pipeline.predict import predict_folder

    set_threads(threads)
    if adapter and len(adapter) == 1 and run_task(adapter[0]) != "segment":  # 3D U-Net / classifier runs
        if resize is not None or roi_margin is not None:
            raise MedadaptError("--resize and --roi-margin apply to SAM-family models; this run has its own "
                                "preprocessing.", path=adapter[0], fix="drop --resize / --roi-margin.")
        _apply_other_run(adapter[0], input, out, engine=engine, precision=precision, batch_size=batch_size,
                         prompts=prompts, labels=labels)
        return
    engine, precision, notice = resolve_engine(engine, precision, export=export)
    if notice:
        console.print(f"[yellow]{notice}[/]")
    spec = PredictorSpec(
        model=model, checkpoint=checkpoint, adapters=adapters_of(adapter), backend=engine, precision=precision,
        export=export, batch_size=batch_size, threads=threads, cache_dir=cache_dir, ov_cache=ov_cache, mirror=mirror,
        resize=resize, roi_margin=roi_margin,
    )
    options = PredictOptions(slice_axis=slice_axis, modality=modality, window=window, per=per, jitter=jitter,
                             n_pos=n_pos, n_neg=n_neg, seed=seed)
    with progress_bar() as bar:
        done = predict_folder(
            spec, input, out, prompts=prompts, labels=labels, image_suffix=image_suffix, label_suffix=label_suffix,
            options=options, progress=lambda n: _advance(bar, bar.add_task("predict", total=n)),
        )
    console.print(
        f"wrote {done['cases']} prediction(s) to {out} in {done['seconds']:.1f} s "
        f"({done['images_encoded']} image(s) encoded in {done['encoder_calls']} encoder call(s))"
    )


def _advance(bar, task):
    return lambda: bar.advance(task)


def _apply_other_run(run: Path, source: Path, out: Path, *, engine, precision, batch_size, prompts, labels) -> None:
    """``predict --adapter RUN`` for a volumetric or classification run."""
    from medadapt.pipeline.apply import apply_run

    if prompts is not None or labels is not None:
        raise MedadaptError("--prompts and --labels apply to SAM-family runs; this run segments (classifies) "
                            "without prompts.", path=run, fix="drop --prompts / --labels.")
    start = time.perf_counter()
    with progress_bar() as bar:
        task = bar.add_task("predict", total=None)
        kind, where, n = apply_run(run, source, out, engine=engine, precision=precision, batch_size=batch_size,
                                   progress=lambda: bar.advance(task))
    console.print(f"wrote {'probabilities of ' if kind == 'classify' else ''}{n} {kind} prediction(s) to {where} "
                  f"in {time.perf_counter() - start:.1f} s")
