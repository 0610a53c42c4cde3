"""``medadapt models``: the model registry as a table."""

from __future__ import annotations

from rich.table import Table

from medadapt.cli.common import console, user_errors


@user_errors
def models() -> None:
    """List the foundation models medadapt knows, their input size, preprocessing and weights."""
    from medadapt.models.registry import list_models

    table = Table(title="medadapt models")
    for col in ("name", "architecture", "input", "preprocessing", "weights", "description"):
        table.add_column(col)
    for spec in list_models():
        table.add_row(
            spec.name,
            spec.encoder,
            f"{spec.image_size}",
            spec.normalization,
            "bundled" if spec.default_weights else f"--checkpoint {spec.checkpoint_file}",
            spec.description,
        )
    console.print(table)
