"""``medadapt predict``: prompted segmentation of 2D images, volumes and CVPR24 ``.npz`` files."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from medadapt.cli.common import (
    ADAPTER_HELP,
    MIRROR_HELP,
    check_mirror,
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
    engine: str = typer.Option("torch", "--engine", help="torch | onnxruntime | openvino (see `medadapt export`)."),
    precision: str = typer.Option(
        "fp32", "--precision",
        help="fp32 | bf16 (torch autocast, openvino) | mixed (openvino: fp32 stem, bf16 rest; bf16's speed at fp32's "
             "DSC) | int8 (onnxruntime/openvino, needs --export)."
    ),
    export: Path | None = typer.Option(
        None, "--export", help="Folder from `medadapt export` (default with a runtime engine: export once into the cache)."
    ),
    ov_cache: Path | None = typer.Option(None, "--ov-cache", help="OpenVINO compiled-model cache (default EXPORT/ov_cache)."),
    cache_dir: Path | None = typer.Option(None, "--cache-dir", help="On-disk embedding cache (re-runs skip the encoder)."),
    threads: int | None = typer.Option(None, "--threads", help="CPU threads (torch and the runtime engines)."),
    seed: int = typer.Option(0, "--seed", help="Seed for jitter and random points."),
    mirror: bool = typer.Option(False, "--mirror", help=MIRROR_HELP),
) -> None:
    """Segment images or volumes with box / point prompts; outputs keep the input names and geometry."""
    from medadapt.deploy.engine import build_engine_predictor
    from medadapt.deploy.runtime import check_engine
    from medadapt.infer.cases import (
        PROMPT_SOURCES,
        PredictOptions,
        load_case,
        predict_case,
        require_automatic,
        write_prediction,
    )
    from medadapt.infer.ensemble import check_prompt_mode
    from medadapt.io.atomic import staged_dir
    from medadapt.io.discovery import ALL_SUFFIXES, find_files, pair_by_name

    set_threads(threads)
    _check_choice("--modality", modality, ("auto", "ct", "mr", "none"))
    _check_choice("--per", per, ("class", "component"))
    _check_choice("--precision", precision, ("fp32", "bf16", "mixed", "int8"))
    check_engine(engine, precision)
    options = PredictOptions(
        prompts=prompts or "boxes-from-labels", slice_axis=slice_axis, modality=modality, window=window, per=per,
        jitter=jitter, n_pos=n_pos, n_neg=n_neg, seed=seed,
    )
    if prompts is not None and prompts not in PROMPT_SOURCES:
        from medadapt.data.prompt_files import read_prompt_file

        prompt_path = Path(prompts)
        if not prompt_path.is_file():
            raise MedadaptError(
                f"--prompts '{prompts}' is neither a prompt source nor an existing prompt file.",
                fix=f"use one of {', '.join(PROMPT_SOURCES)} or the path of a JSON/CSV prompt file.",
            )
        options.prompt_map = read_prompt_file(prompt_path)
    if prompts is not None:
        _check_labels_given(prompts, labels)

    images = find_files(input, ALL_SUFFIXES, what="input")
    label_files = find_files(labels, ALL_SUFFIXES, what="label") if labels is not None else None
    pairs = pair_by_name(
        images, label_files, image_suffix=image_suffix, label_suffix=label_suffix, labels_root=labels
    )
    _check_unique_names(pairs)

    predictor = build_engine_predictor(
        model, engine=engine, precision=precision, export=export, checkpoint=checkpoint, adapter=adapter,
        batch_size=batch_size, threads=threads, cache_dir=cache_dir, ov_cache=ov_cache,
    )
    run = adapter[0] if adapter else None
    if prompts is None:  # an automatic-mode adapter needs no prompt; anything else gets boxes from the labels
        options.prompts = "auto" if predictor.is_automatic else "boxes-from-labels"
        _check_labels_given(options.prompts, labels)
    elif prompts == "auto":
        require_automatic(predictor, run)
    check_prompt_mode(predictor, options.prompts)
    if options.slice_axis is None:  # an adapter trained on a chosen axis is applied along it
        options.slice_axis = predictor.slice_axis
    check_mirror(mirror, options.prompts, run)
    predictor.mirror = mirror
    start = time.perf_counter()
    with progress_bar() as bar, staged_dir(out) as stage:  # a bad input half-way leaves no outputs
        task = bar.add_task("predict", total=len(pairs))
        for pair in pairs:
            case = load_case(pair, options)
            seg = predict_case(predictor, case, options)
            write_prediction(stage, case, seg)
            bar.advance(task)
    elapsed = time.perf_counter() - start
    console.print(
        f"wrote {len(pairs)} prediction(s) to {out} in {elapsed:.1f} s "
        f"({predictor.images_encoded} image(s) encoded in {predictor.encoder_calls} encoder call(s))"
    )


def _check_labels_given(prompts: str, labels: Path | None) -> None:
    if prompts.endswith("-from-labels") and labels is None:
        raise MedadaptError(f"--prompts {prompts} needs --labels.", fix="pass --labels FILE|DIR.")


def _check_choice(option: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise MedadaptError(f"{option} '{value}' is not one of {', '.join(choices)}.", fix=f"use {option} {choices[0]}")


def _check_unique_names(pairs) -> None:
    seen: dict[str, Path] = {}
    for p in pairs:
        if p.image.name in seen:
            raise MedadaptError(
                f"two inputs share the file name '{p.image.name}' ({seen[p.image.name]} and {p.image}); "
                "outputs keep input names, so one would overwrite the other.",
                fix="predict the two folders separately.",
            )
        seen[p.image.name] = p.image
