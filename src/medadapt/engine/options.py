"""Option models of the training commands, built from shared parts, and one way to build them.

The training commands share groups of options: which labelled cases train (:class:`SampleOptions`,
and with a validation count and a test share :class:`SplitOptions`), how a 2D or slice dataset is read
(:class:`LayoutOptions`), the LoRA recipe (:class:`LoraOptions`), the training loop
(:class:`LoopOptions`, :class:`ValidationOptions`; both plus warm-up steps: :class:`OptimOptions`) and a
3D backbone's architecture (:class:`VolumeArchOptions`). A command's option model inherits the parts it
has instead of re-declaring their fields, and re-declares one field only where its default differs. The
parts stay flat (inherited fields, not nested models): ``--lr``, ``--set key=value``, YAML configs and the
``fit_config.json`` of earlier runs all use flat keys. The loop's ranges are :class:`TrainConfig`'s, so a
bad value fails with the option's name before any data is read.

:func:`build_options` merges a YAML config under the command-line values and turns the first
validation problem into one :class:`~medadapt.errors.MedadaptError` naming the option.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from medadapt.engine.config import read_options_yaml
from medadapt.errors import MedadaptError
from medadapt.precision import TorchPrecision

__all__ = [
    "LayoutOptions",
    "LoopOptions",
    "LoraOptions",
    "OptimOptions",
    "SampleOptions",
    "SplitOptions",
    "ValidationOptions",
    "VolumeArchOptions",
    "build_options",
    "merge_options",
]

M = TypeVar("M", bound=BaseModel)


class SampleOptions(BaseModel):
    """Which labelled cases train: k shots or a label fraction, the seed, or a given split file."""

    model_config = ConfigDict(extra="forbid")

    shots: int | None = Field(5, ge=1)
    fraction: float | None = Field(None, gt=0, le=1)
    seed: int = 0
    split: str | None = None  # reuse a split.json


class SplitOptions(SampleOptions):
    """:class:`SampleOptions` plus how many of the cases validate and which are held out for testing."""

    n_val: int | None = Field(None, ge=0)
    test: float | None = Field(None, ge=0)  # None: the benchmark's fixed test third; 0: every case trains


class LayoutOptions(BaseModel):
    """How a 2D / slice dataset is read: file pairing and intensity normalisation."""

    model_config = ConfigDict(extra="forbid")

    image_suffix: str | None = None
    label_suffix: str | None = None
    label_dir: str | None = None
    modality: str = "auto"
    window: str | None = None


class VolumeArchOptions(BaseModel):
    """Architecture of a 3D backbone (SwinUNETR: feature_size, depths, num_heads; U-Net: filters, strides);
    None keeps the registered model's value."""

    model_config = ConfigDict(extra="forbid")

    feature_size: int | None = Field(None, ge=12)
    depths: list[int] | None = None
    num_heads: list[int] | None = None
    filters: list[int] | None = None
    strides: list[int] | None = None


class LoraOptions(BaseModel):
    """The LoRA recipe's rank, scale and target modules (None: the recipe's own targets)."""

    model_config = ConfigDict(extra="forbid")

    lora_rank: int = Field(4, ge=1)
    lora_alpha: float | None = None
    target_modules: list[str] | None = None


class LoopOptions(BaseModel):
    """The training loop: length, batch, optimiser step, precision and progress display."""

    model_config = ConfigDict(extra="forbid")

    epochs: int | None = Field(None, ge=1)
    max_steps: int | None = Field(None, ge=1, description="default: the command's own unless epochs is given")
    batch_size: int = Field(4, ge=1)
    lr: float = Field(1e-4, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    clip_grad_norm: float | None = Field(1.0, gt=0)
    precision: TorchPrecision = "fp32"
    progress: bool = True


class ValidationOptions(BaseModel):
    """How often the run validates (optimiser steps) and early stopping (validations without a gain)."""

    model_config = ConfigDict(extra="forbid")

    val_every: int | None = Field(50, ge=1)
    patience: int | None = Field(None, ge=1)


class OptimOptions(LoopOptions, ValidationOptions):
    """The training loop with validation and warm-up steps."""

    warmup_steps: int = Field(10, ge=0)


def merge_options(values: dict[str, Any], config_file: Path | None = None,
                  saved: dict[str, Any] | None = None) -> dict[str, Any]:
    """``saved`` (a resumed run's options) < the YAML ``config_file`` < command-line ``values`` (None = not given)."""
    merged: dict[str, Any] = dict(saved or {})
    if config_file is not None:
        merged.update(read_options_yaml(config_file))
    merged.update({k: v for k, v in values.items() if v is not None})
    return merged


def build_options(cls: type[M], merged: dict[str, Any], config_file: Path | None, command: str, *,
                  did_you_mean: bool = False, fix: str | None = None) -> M:
    """``cls(**merged)``, or one MedadaptError naming the first bad option of ``medadapt {command}``.

    ``did_you_mean`` checks unknown keys first and suggests the closest option name.
    """
    if did_you_mean:
        known = list(cls.model_fields)
        unknown = [k for k in merged if k not in known]
        if unknown:
            key = unknown[0]
            close = difflib.get_close_matches(key, known, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise MedadaptError(f"unknown option '{key}' for {command}{hint}.", path=config_file,
                                fix="valid options are " + ", ".join(known) + ".")
    try:
        return cls(**merged)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "options"
        if did_you_mean:
            raise MedadaptError(
                f"invalid option '{where}' for {command}: {first['msg']} (got {first.get('input')!r}).",
                path=config_file, fix=fix or f"see `medadapt {command.split()[0]} --help` and docs/recipes.md.",
            ) from None
        raise MedadaptError(f"invalid {command} option '{where}': {first['msg']}.", path=config_file,
                            fix=fix or f"see `medadapt {command} --help` for the accepted values.") from None
