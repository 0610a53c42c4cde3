"""Shared CLI plumbing: user errors become one paragraph and exit code 2; rich consoles and progress."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import TypeVar

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from medadapt.errors import MedadaptError

console = Console()
err_console = Console(stderr=True)

F = TypeVar("F", bound=Callable)


def user_errors(func: F) -> F:
    """Turn :class:`MedadaptError` (and a few OS errors on outputs) into a readable message + exit 2."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except MedadaptError as err:
            err_console.print(f"[bold red]error:[/] {err}", highlight=False, soft_wrap=True)
            raise typer.Exit(code=MedadaptError.exit_code) from None
        except PermissionError as err:
            err_console.print(f"[bold red]error:[/] {err.filename}: permission denied. Fix: choose a writable --out folder.")
            raise typer.Exit(code=2) from None
        except KeyboardInterrupt:
            err_console.print("[yellow]interrupted[/]")
            raise typer.Exit(code=130) from None

    return wrapper  # type: ignore[return-value]


def progress_bar(**kwargs) -> Progress:
    """A rich progress bar; silent when stdout is not a terminal unless MEDADAPT_PROGRESS=1."""
    disable = not (sys.stdout.isatty() or os.environ.get("MEDADAPT_PROGRESS") == "1")
    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=disable,
        **kwargs,
    )


def set_threads(threads: int | None) -> None:
    if threads:
        import torch

        torch.set_num_threads(int(threads))


ADAPTER_HELP = (
    "A `medadapt fit` run folder (adapter weights). Repeat it for an ensemble of automatic-mode runs: their "
    "class logits are averaged, each run slicing volumes along its own trained axis (e.g. one axial, one "
    "sagittal: bench/results/fewshot_hippocampus.json)."
)
MIRROR_HELP = (
    "Automatic mode: also segment each image left-right mirrored and average the class logits (helps "
    "mirror-symmetric structures such as vessels; hurts classes told apart by side or orientation: "
    "bench/results/mirror_*.json)."
)

RESIZE_HELP = (
    "How images smaller than the model input (256 px for LiteMedSAM) are enlarged: official (the model's own "
    "preprocessing: cv2 INTER_AREA for LiteMedSAM, PIL bilinear for SAM), area, bilinear or cubic. Larger "
    "images are always shrunk the official way; masks are not affected. Default: bilinear for a zero-shot "
    "model (ahead of official on validation volumes: docs/benchmarks.md#zoom), official for an adapted run "
    "(what fit trains with)."
)
ROI_HELP = (
    "Zoom-in for small objects: segment each box prompt in a crop around its box, grown by this fraction of "
    "the box size on each side (at least 8 px), enlarged to the model input, and paste the mask back (e.g. "
    "0.5). Volumes: each slice's crop follows the propagated box. Default: off (whole images)."
)


def parse_int_list(text: str | None, *, option: str) -> list[int] | None:
    if text is None or text == "":
        return None
    try:
        return [int(t) for t in text.replace(" ", "").split(",") if t]
    except ValueError:
        raise MedadaptError(
            f"{option} expects comma-separated integers, got '{text}'.", fix=f"for example {option} 1,2"
        ) from None


def parse_settings(items: list[str] | None) -> dict[str, str]:
    """``--set key=value`` pairs (task-specific options; values are parsed by the task's config model)."""
    out: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise MedadaptError(f"--set expects KEY=VALUE, got '{item}'.", fix="for example --set lora_alpha=32")
        out[key.strip().replace("-", "_")] = value.strip()
    return out


def with_settings(values: dict, items: list[str] | None) -> dict:
    """Named options plus ``--set`` pairs; the same option given both ways is an error, not a silent override."""
    settings = parse_settings(items)
    clash = sorted(k for k in settings if values.get(k) is not None)
    if clash:
        raise MedadaptError(
            f"option(s) {', '.join(clash)} given both as --{clash[0].replace('_', '-')} and with --set.",
            fix="give each option once",
        )
    return {**{k: v for k, v in values.items() if v is not None}, **settings}
