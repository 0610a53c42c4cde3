"""``medadapt recipes``: the fine-tuning recipes with their trainable parameter counts on LiteMedSAM.

The counts are measured, not stored: each recipe is applied to a freshly built LiteMedSAM
(random weights; a count does not depend on the values) and its trainable parameters counted,
so the table cannot drift from the code. docs/recipes.md shows the same rows (bench/tables.py).
"""

from __future__ import annotations

import copy

from rich.table import Table

from medadapt.cli.common import console, user_errors


def recipe_rows() -> list[dict]:
    """One row per recipe: name, description, trainable / total parameters, whether the encoder stays frozen.
    ``peft-lora`` depends on ``--target-modules``, so its counts are None."""
    import torch

    from medadapt.adapt.recipes import RECIPES, apply_recipe
    from medadapt.models.registry import build_model

    torch.manual_seed(0)
    base = build_model("litemedsam", pretrained=False)
    rows = []
    for name, recipe in RECIPES.items():
        row = {"name": name, "description": recipe.description, "trainable": None, "total": None,
               "encoder_frozen": None}
        if name != "peft-lora":
            applied = apply_recipe(copy.deepcopy(base), name)
            row.update(trainable=applied.trainable, total=applied.total,
                       encoder_frozen=not applied.encoder_trainable)
        rows.append(row)
    return rows


@user_errors
def recipes() -> None:
    """List the fine-tuning recipes of `medadapt fit --method`, with trainable parameters on LiteMedSAM."""
    table = Table(title="medadapt fit --method (trainable parameters on LiteMedSAM)")
    for col, just in (("recipe", "left"), ("trainable", "right"), ("share", "right"),
                      ("encoder frozen", "left"), ("what trains", "left")):
        table.add_column(col, justify=just, no_wrap=col != "what trains")
    for r in recipe_rows():
        count = "by --target-modules" if r["trainable"] is None else f"{r['trainable']:,}"
        share = "" if r["trainable"] is None else f"{100 * r['trainable'] / r['total']:.2f} %"
        frozen = "depends" if r["encoder_frozen"] is None else ("yes" if r["encoder_frozen"] else "no")
        table.add_row(r["name"], count, share, frozen, r["description"])
    console.print(table)
    console.print("A frozen encoder lets `fit` encode each slice once (embedding cache). "
                  "Options of every recipe: docs/recipes.md.")
