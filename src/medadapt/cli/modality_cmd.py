"""``medadapt fit-modalities``: one adapter per modality of a dataset (DAFT), one base model for all."""

from __future__ import annotations

from pathlib import Path

import typer

from medadapt.cli.common import console, set_threads, user_errors


@user_errors
def fit_modalities(
    data: str | None = typer.Option(None, "--data", "-d", help="Dataset spec whose cases carry a modality."),
    out: str | None = typer.Option(None, "--out", "-o", help="Bank folder: one run per modality + modalities.json."),
    modalities: str | None = typer.Option(None, "--modalities", help="Only these, comma-separated (e.g. ct,mr)."),
    default: str | None = typer.Option(None, "--default", help="Adapter for images whose modality is unknown."),
    min_cases: int = typer.Option(1, "--min-cases", help="Skip modalities with fewer cases."),
    model: str | None = typer.Option(None, "--model", "-m", help="Base model (default litemedsam)."),
    checkpoint: str | None = typer.Option(None, "--checkpoint", help="Official checkpoint file of the base model."),
    method: str | None = typer.Option(None, "--method", help="Recipe (see `medadapt fit --help`)."),
    prompt: str | None = typer.Option(None, "--prompt", help="box | point | hybrid | click | auto."),
    shots: int | None = typer.Option(None, "--shots", "-k", help="Training cases per modality (default 5)."),
    fraction: float | None = typer.Option(None, "--fraction", help="Share of each modality's pool instead."),
    seed: int | None = typer.Option(None, "--seed", help="Seed of the splits, initialisation and sampling."),
    max_steps: int | None = typer.Option(None, "--max-steps", help="Optimiser steps per modality (default 200)."),
    epochs: int | None = typer.Option(None, "--epochs", help="Epochs instead of --max-steps."),
    batch_size: int | None = typer.Option(None, "--batch-size", help="Slices per step (default 4)."),
    lr: float | None = typer.Option(None, "--lr", help="Learning rate (default 1e-4)."),
    lora_rank: int | None = typer.Option(None, "--lora-rank", help="LoRA rank (default 4)."),
    val_every: int | None = typer.Option(None, "--val-every", help="Validate every N steps and after the last (default 50)."),
    label_dir: str | None = typer.Option(None, "--label-dir", help="Label folder name inside --data."),
    cache_dir: str | None = typer.Option(None, "--cache-dir", help="On-disk embedding cache shared across runs."),
    config: Path | None = typer.Option(None, "--config", help="YAML file with any `medadapt fit` option."),
    resume: bool = typer.Option(False, "--resume", help="Continue killed runs from their last checkpoints."),
    threads: int | None = typer.Option(None, "--threads", help="Torch CPU threads."),
    no_progress: bool = typer.Option(False, "--no-progress", help="No progress bar."),
    settings: list[str] | None = typer.Option(
        None, "--set", help="Any other `medadapt fit` option KEY=VALUE (repeatable), e.g. --set n_val=2."
    ),
) -> None:
    """Fit one adapter per modality (CSV column, dataset.json, or CVPR24 CT_/MR_ name prefix).

    Predict with `medadapt predict --adapter OUT`: each image gets the adapter of its modality.
    """
    from medadapt.cli.common import with_settings
    from medadapt.pipeline.modality_bank import fit_modality_bank

    set_threads(threads)
    values = dict(
        data=data, out=out, model=model, checkpoint=checkpoint, method=method, prompt=prompt, shots=shots,
        fraction=fraction, seed=seed, max_steps=max_steps, epochs=epochs, batch_size=batch_size, lr=lr,
        lora_rank=lora_rank, val_every=val_every, label_dir=label_dir, cache_dir=cache_dir,
        progress=False if no_progress else None,
    )
    only = [m for m in (modalities or "").replace(" ", "").split(",") if m] or None
    bank = fit_modality_bank(with_settings(values, settings), config_file=config, resume=resume,
                             only=only, default=default, min_cases=min_cases)
    for mod, entry in bank["modalities"].items():
        console.print(f"{mod}: {entry['cases']} case(s), {len(entry['train_cases'])} trained on, "
                      f"best val DSC {entry['best_val_dsc']}"
                      + (f", keep the largest component of class(es) {entry['keep_largest']}"
                         if entry.get("keep_largest") else ""))
    console.print(f"[bold]bank written[/]: {bank['path']}")
