"""The ``medadapt`` command: one sub-command per pipeline stage (as nnU-Net v2)."""

from __future__ import annotations

import signal

import typer

import medadapt.cli.pretrain_cmd as pretrain_cmd
import medadapt.cli.simulate_cmd as simulate_cmd
from medadapt import __version__
from medadapt.cli import (
    demo_cmd,
    distill_cmd,
    evaluate_cmd,
    export_cmd,
    fit_cmd,
    merge_cmd,
    modality_cmd,
    models_cmd,
    predict_cmd,
    recipes_cmd,
    report_cmd,
    studio_cmd,
)

app = typer.Typer(
    name="medadapt",
    help="Adapt medical imaging foundation models from a few labelled scans; evaluate, export, deploy.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode="rich",
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"medadapt {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Show the version."),
) -> None:
    """medadapt command line."""


app.command("models")(models_cmd.models)
app.command("predict")(predict_cmd.predict)
app.command("evaluate")(evaluate_cmd.evaluate)
app.command("fit")(fit_cmd.fit)
app.command("pretrain")(pretrain_cmd.pretrain)
app.command("report")(report_cmd.report)
app.command("demo")(demo_cmd.demo)
app.command("export")(export_cmd.export)
app.command("distill")(distill_cmd.distill)
app.command("merge")(merge_cmd.merge)
app.command("fit-modalities")(modality_cmd.fit_modalities)
app.command("recipes")(recipes_cmd.recipes)
app.command("simulate")(simulate_cmd.simulate)
app.command("studio")(studio_cmd.studio)


def _exit_on_signal(signum, _frame) -> None:
    raise SystemExit(128 + signum)


def exit_cleanly_on_termination() -> None:
    """SIGTERM (``kill``, a batch scheduler) and SIGHUP end the command as an exception does, so
    temporary files and staged outputs are removed (Python's default would stop without cleaning up)."""
    for name in ("SIGTERM", "SIGHUP"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), _exit_on_signal)


def main() -> None:
    """The ``medadapt`` console script."""
    exit_cleanly_on_termination()
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
