"""`medadapt recipes`: every recipe listed, with parameter counts measured on LiteMedSAM."""

from __future__ import annotations

from typer.testing import CliRunner

from medadapt.adapt.recipes import RECIPES
from medadapt.cli.main import app
from medadapt.cli.recipes_cmd import recipe_rows
from medadapt.models.registry import build_model


def test_recipes_command_lists_every_recipe():
    result = CliRunner().invoke(app, ["recipes"], catch_exceptions=False, terminal_width=200)
    assert result.exit_code == 0
    for name in RECIPES:
        assert name in result.output
    decoder = sum(p.numel() for p in build_model("litemedsam", pretrained=False).mask_decoder.parameters())
    assert f"{decoder:,}" in result.output


def test_recipe_rows_counts():
    rows = {r["name"]: r for r in recipe_rows()}
    model = build_model("litemedsam", pretrained=False)
    total = sum(p.numel() for p in model.parameters())
    prompt = sum(p.numel() for p in model.prompt_encoder.parameters())
    assert rows["full"]["trainable"] == total - prompt
    assert rows["decoder"]["encoder_frozen"] is True and rows["adapter"]["encoder_frozen"] is False
    assert rows["peft-lora"]["trainable"] is None  # depends on --target-modules
    assert 0 < rows["decoder-lora"]["trainable"] < rows["lora"]["trainable"] < rows["adapter"]["trainable"]
