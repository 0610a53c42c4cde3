"""``medadapt pretrain``: supervised 3D pretraining on several partially labelled datasets."""

from __future__ import annotations

from pathlib import Path

import typer

from medadapt.cli.common import console, set_threads, user_errors
from medadapt.errors import MedadaptError


def parse_labels(text: str) -> dict[int, str]:
    """``"1=anterior,2=posterior"`` → ``{1: "anterior", 2: "posterior"}``."""
    out: dict[int, str] = {}
    for item in text.split(","):
        value, sep, name = item.partition("=")
        try:
            out[int(value.strip())] = name.strip()
        except ValueError:
            raise MedadaptError(f"--labels expects VALUE=CLASS pairs, got '{text}'.",
                                fix="for example --labels 1=anterior,2=posterior") from None
        if not sep or not name.strip():
            raise MedadaptError(f"--labels expects VALUE=CLASS pairs, got '{text}'.",
                                fix="for example --labels 1=anterior,2=posterior")
    return out


@user_errors
def pretrain(
    data: list[str] | None = typer.Option(None, "--data", "-d", help="Dataset spec (repeatable: one per dataset)."),
    labels: list[str] | None = typer.Option(
        None, "--labels",
        help="Per --data, in order: stored label value = template class, e.g. 1=liver,2=spleen. "
        "Classes a dataset does not list are unlabelled there (masked out, not background). Default: its own names.",
    ),
    out: str | None = typer.Option(None, "--out", "-o", help="Output folder (model.pt, model.json, logs)."),
    model: str | None = typer.Option(None, "--model", "-m", help="unet3d (default) | swinunetr."),
    checkpoint: str | None = typer.Option(None, "--checkpoint", help="Initial weights (any supported layout)."),
    max_steps: int | None = typer.Option(None, "--max-steps", help="Optimiser steps (default 200)."),
    epochs: int | None = typer.Option(None, "--epochs", help="Epochs instead of --max-steps."),
    batch_size: int | None = typer.Option(None, "--batch-size", help="Volumes per step (default 2)."),
    lr: float | None = typer.Option(None, "--lr", help="Learning rate (default 1e-3)."),
    seed: int | None = typer.Option(None, "--seed", help="Seed of the crops and initialisation."),
    precision: str | None = typer.Option(None, "--precision", help="fp32 | bf16."),
    config: Path | None = typer.Option(
        None, "--config", help="YAML with any option, and `datasets: [{data, labels: {1: liver}}]`, `classes: [...]`."
    ),
    resume: bool = typer.Option(False, "--resume", help="Continue a killed run from its last checkpoint."),
    threads: int | None = typer.Option(None, "--threads", help="Torch CPU threads."),
    no_progress: bool = typer.Option(False, "--no-progress", help="No progress bar."),
    settings: list[str] | None = typer.Option(
        None, "--set", help="Other option KEY=VALUE (repeatable), e.g. --set roi=32 --set filters=16,32,64,128 "
        "--set strides=1,2,2,2 --set head=text --set spacing=native.",
    ),
) -> None:
    """Pretrain a 3D segmenter on datasets whose label sets differ (partial labels, class template).

    Each template class gets one sigmoid output; a class is trained only on the datasets that label it.
    Each dataset's fixed held-out volumes (the test set of `medadapt fit`) are left out. Writes
    OUT/model.pt, which `medadapt fit --task volumetric --checkpoint OUT/model.pt` adapts. Several GPUs:
    `accelerate launch -m medadapt.cli.main pretrain ...`.
    """
    from medadapt.cli.common import with_settings
    from medadapt.engine.pretrain import run_pretrain

    set_threads(threads)
    values: dict = {}
    if data:
        if labels and len(labels) != len(data):
            raise MedadaptError(f"{len(labels)} --labels for {len(data)} --data.",
                                fix="give one --labels per --data, in the same order (or none).")
        values["datasets"] = [
            {"data": d, "labels": parse_labels(labels[i]) if labels else None} for i, d in enumerate(data)
        ]
    elif labels:
        raise MedadaptError("--labels needs --data.", fix="pass --data SPEC --labels 1=name.")
    values.update(out=out, model=model, checkpoint=checkpoint, max_steps=max_steps, epochs=epochs,
                  batch_size=batch_size, lr=lr, seed=seed, precision=precision,
                  progress=False if no_progress else None)
    result = run_pretrain(with_settings(values, settings), config, resume)
    console.print(result["message"])
