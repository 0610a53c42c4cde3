"""``medadapt distill``: embedding distillation of a SAM-family image encoder into a smaller student."""

from __future__ import annotations

from pathlib import Path

import typer

from medadapt.cli.common import console, set_threads, user_errors


@user_errors
def distill(
    data: str | None = typer.Option(None, "--data", "-d", help="Dataset spec: MSD folder, CSV, IMG:MASK folders, .npz folder."),
    out: str | None = typer.Option(None, "--out", "-o", help="Run folder (student/, checkpoint/, logs)."),
    teacher: str | None = typer.Option(None, "--teacher", help="Teacher model (default litemedsam)."),
    teacher_checkpoint: str | None = typer.Option(None, "--teacher-checkpoint", help="Teacher weights (default: bundled)."),
    student: str | None = typer.Option(None, "--student", help="Student model (default litemedsam_student_s)."),
    teacher_input: str | None = typer.Option(
        None, "--teacher-input", help="student: the teacher sees the student's input; own: its own resolution."),
    flip: str | None = typer.Option(
        None, "--flip", help="embedding (flip the cached teacher embedding), input (encode flipped inputs), none."),
    init: str | None = typer.Option(None, "--init", help="teacher (seed matching blocks, default) | random."),
    split: str | None = typer.Option(None, "--split", help="Reuse a split.json; its train cases are distilled on."),
    shots: int | None = typer.Option(None, "--shots", "-k", help="Training volumes (default: the whole pool)."),
    fraction: float | None = typer.Option(None, "--fraction", help="Share of the training pool."),
    seed: int | None = typer.Option(None, "--seed", help="Seed of the split, flips and order."),
    slices: str | None = typer.Option(None, "--slices", help="all (default) | labelled."),
    max_train_slices: int | None = typer.Option(None, "--max-train-slices", help="Evenly subsample training slices."),
    max_val_slices: int | None = typer.Option(None, "--max-val-slices", help="Validation slices (default 32)."),
    max_steps: int | None = typer.Option(None, "--max-steps", help="Optimiser steps (default 500)."),
    epochs: int | None = typer.Option(None, "--epochs", help="Epochs instead of --max-steps."),
    batch_size: int | None = typer.Option(None, "--batch-size", help="Slices per step (default 8)."),
    lr: float | None = typer.Option(None, "--lr", help="Peak learning rate (default 5e-4)."),
    val_every: int | None = typer.Option(None, "--val-every", help="Validate every N steps and after the last (default 50)."),
    image_size: int | None = typer.Option(None, "--image-size", help="Input side (default: the student's)."),
    cache_dir: str | None = typer.Option(None, "--cache-dir", help="On-disk cache of teacher embeddings."),
    label_dir: str | None = typer.Option(None, "--label-dir", help="Label folder name inside --data."),
    config: Path | None = typer.Option(None, "--config", help="YAML file with any of these options."),
    resume: bool = typer.Option(False, "--resume", help="Continue a killed run from its last checkpoint."),
    threads: int | None = typer.Option(None, "--threads", help="Torch CPU threads."),
    no_progress: bool = typer.Option(False, "--no-progress", help="No progress bar."),
) -> None:
    """Distil a teacher's image encoder into a smaller student (embedding MSE, flips on both views)."""
    from medadapt.deploy.distill import DistillOptions, run_distill

    set_threads(threads)
    values = dict(
        data=data, out=out, teacher=teacher, teacher_checkpoint=teacher_checkpoint, student=student,
        teacher_input=teacher_input, flip=flip, init=init, split=split, shots=shots, fraction=fraction, seed=seed,
        slices=slices, max_train_slices=max_train_slices, max_val_slices=max_val_slices, max_steps=max_steps, epochs=epochs, batch_size=batch_size,
        lr=lr, val_every=val_every, image_size=image_size, cache_dir=cache_dir, label_dir=label_dir,
        progress=False if no_progress else None,
    )
    opts = DistillOptions.build(values, config)
    result = run_distill(opts, resume=resume)
    console.print(
        f"[bold]distill done[/]: {result['student']} ({result['student_params']:,} parameters) from "
        f"{result['teacher']} ({result['teacher_params']:,}) on {result['train_slices']} slice(s), "
        f"{result['steps']} steps, best val MSE {result.get('best_metric')}, {result['distill_seconds']:.0f} s; "
        f"student: {Path(opts.out) / 'student'}"
    )
