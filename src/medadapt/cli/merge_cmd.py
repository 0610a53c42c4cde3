"""``medadapt merge``: one full safetensors checkpoint from an adapter run or a distilled student."""

from __future__ import annotations

from pathlib import Path

import typer

from medadapt.cli.common import console, user_errors
from medadapt.errors import MedadaptError


@user_errors
def merge(
    out: Path = typer.Option(..., "--out", "-o", help="Checkpoint to write (.safetensors; a .json goes beside it)."),
    adapter: Path | None = typer.Option(None, "--adapter", help="A `medadapt fit` run (or its adapter/ folder)."),
    checkpoint: Path | None = typer.Option(
        None, "--checkpoint", help="Base weights for --adapter (default: the ones the adapter names)."),
    student: Path | None = typer.Option(None, "--student", help="A `medadapt distill` run (or its student/ folder)."),
    teacher: str | None = typer.Option(
        None, "--teacher", help="Teacher whose prompt encoder and decoder join the student (default: the distill teacher)."),
    teacher_checkpoint: Path | None = typer.Option(None, "--teacher-checkpoint", help="Teacher weights (default: bundled)."),
) -> None:
    """Fold an adapter into its base model, or join a distilled encoder to its teacher's decoder.

    Load the result with `medadapt predict --model NAME --checkpoint FILE`.
    """
    from medadapt.deploy.merge import check_out_file, merge_adapter_run, merge_student

    if (adapter is None) == (student is None):
        raise MedadaptError("give exactly one of --adapter RUN and --student DISTILL_RUN.",
                            fix="merge --adapter RUN --out FILE, or merge --student RUN --teacher NAME --out FILE")
    check_out_file(out)
    if adapter is not None:
        if teacher or teacher_checkpoint:
            raise MedadaptError("--teacher / --teacher-checkpoint go with --student, not --adapter.")
        info = merge_adapter_run(adapter, out, checkpoint=checkpoint)
    else:
        if checkpoint is not None:
            raise MedadaptError("--checkpoint goes with --adapter; for the teacher use --teacher-checkpoint.")
        info = merge_student(student, out, teacher=teacher, teacher_checkpoint=teacher_checkpoint)
    console.print(
        f"wrote {out} ({info['tensors']} tensors, {info['params']:,} parameters, {info['file']['bytes'] / 2**20:.1f} MiB); "
        f"load it with `medadapt predict --model {info['model']} --checkpoint {out}`"
    )
