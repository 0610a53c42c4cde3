"""``medadapt predict`` as one library call: files in, segmentations out, on any back-end.

Inputs (a file or a folder) are paired with their labels by name, the predictor is loaded once
(:func:`medadapt.deploy.backend.load_predictor`), the prompt source is resolved (an automatic-mode
adapter needs none; otherwise boxes from the labels), and every output is written into a staged
folder that replaces ``out`` only when every case succeeded.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from medadapt.data.prompt_files import read_prompt_file
from medadapt.deploy.backend import load_predictor
from medadapt.deploy.runtime import check_engine
from medadapt.errors import MedadaptError
from medadapt.infer.cases import (
    PROMPT_SOURCES,
    PredictOptions,
    load_case,
    predict_case,
    require_automatic,
    write_prediction,
)
from medadapt.infer.ensemble import check_mirror, check_prompt_mode
from medadapt.infer.factory import PredictorSpec
from medadapt.io.atomic import staged_dir
from medadapt.io.discovery import ALL_SUFFIXES, find_files, pair_by_name
from medadapt.precision import parse_precision

__all__ = ["predict_folder"]


def predict_folder(
    spec: PredictorSpec,
    input: Path,
    out: Path,
    *,
    prompts: str | None = None,
    labels: Path | None = None,
    image_suffix: str | None = None,
    label_suffix: str | None = None,
    options: PredictOptions,
    progress: Callable[[int], Callable[[], None]] | None = None,
) -> dict:
    """Segment every input under ``input`` into ``out``; returns counts and timing.

    ``options`` holds the per-case settings (``options.prompts`` is replaced by the resolved source);
    ``progress(n)`` is called once with the number of cases and returns the per-case callback.
    """
    _check_choice("--modality", options.modality, ("auto", "ct", "mr", "none"))
    _check_choice("--per", options.per, ("class", "component"))
    parse_precision(spec.precision)
    check_engine(spec.backend, spec.precision)
    options.prompts = prompts or "boxes-from-labels"
    if prompts is not None and prompts not in PROMPT_SOURCES:
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
    pairs = pair_by_name(images, label_files, image_suffix=image_suffix, label_suffix=label_suffix,
                         labels_root=labels)
    _check_unique_names(pairs)

    predictor = load_predictor(spec)
    run = spec.adapters[0] if spec.adapters else None
    if prompts is None:  # an automatic-mode adapter needs no prompt; anything else gets boxes from the labels
        options.prompts = "auto" if predictor.is_automatic else "boxes-from-labels"
        _check_labels_given(options.prompts, labels)
    elif prompts == "auto":
        require_automatic(predictor, run)
    check_prompt_mode(predictor, options.prompts)
    if options.slice_axis is None:  # an adapter trained on a chosen axis is applied along it
        options.slice_axis = predictor.slice_axis
    check_mirror(spec.mirror, options.prompts, run)
    start = time.perf_counter()
    advance = progress(len(pairs)) if progress else None
    with staged_dir(out) as stage:  # a bad input half-way leaves no outputs
        for pair in pairs:
            case = load_case(pair, options)
            seg = predict_case(predictor, case, options)
            write_prediction(stage, case, seg)
            if advance:
                advance()
    return {"cases": len(pairs), "seconds": time.perf_counter() - start,
            "images_encoded": predictor.images_encoded, "encoder_calls": predictor.encoder_calls}


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
