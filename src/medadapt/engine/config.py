"""Training configuration: one validated object shared by every task.

``TrainConfig`` is a pydantic model so a YAML file, CLI overrides and Python code all go through
the same checks. Unknown keys and bad values become one :class:`MedadaptError` that names the key
(and the closest valid key for typos) instead of a pydantic traceback.

Units: ``lr`` is the peak learning rate reached after warm-up; every ``*_steps`` / ``val_every`` /
``log_every`` counts *optimiser* steps (one step = ``grad_accum`` micro-batches); ``patience`` counts
validations.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from medadapt.errors import MedadaptError


class TrainConfig(BaseModel):
    """Hyper-parameters of one training run (see the module docstring for units)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    # optimiser
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: float = Field(1e-4, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = Field(1e-8, gt=0)
    # schedule
    schedule: Literal["cosine", "poly", "constant"] = "cosine"
    warmup_steps: int | None = Field(None, ge=0)
    warmup_ratio: float | None = Field(None, ge=0, lt=1)
    poly_power: float = Field(0.9, gt=0)
    min_lr_ratio: float = Field(0.0, ge=0, le=1)
    # length
    epochs: int | None = Field(10, gt=0)
    max_steps: int | None = Field(None, gt=0)
    # step mechanics
    grad_accum: int = Field(1, ge=1)
    clip_grad_norm: float | None = Field(None, gt=0)
    precision: Literal["fp32", "bf16"] = "fp32"
    device: Literal["auto", "cpu"] = "auto"
    # validation, best checkpoint, early stopping
    val_every: int | None = Field(None, gt=0)  # every N steps and at the end; None: at each epoch end
    monitor: str | None = None
    mode: Literal["max", "min"] = "max"
    min_delta: float = Field(0.0, ge=0)
    patience: int | None = Field(None, gt=0)
    restore_best: bool = True
    # reproducibility and data loading (the task builds its loaders from these)
    seed: int = 0
    deterministic: bool = True
    num_workers: int = Field(0, ge=0)
    batch_size: int = Field(1, ge=1)
    # logging
    log_every: int = Field(10, ge=1)
    progress: bool = True
    tensorboard: bool = True

    def __init__(self, **data: Any):
        try:
            super().__init__(**data)
        except ValidationError as err:
            raise _config_error(err, None) from None

    @model_validator(mode="after")
    def _check_consistency(self) -> TrainConfig:
        if self.epochs is None and self.max_steps is None:
            raise ValueError("set `epochs` or `max_steps` (or both; training stops at whichever comes first)")
        if self.warmup_steps is not None and self.warmup_ratio is not None:
            raise ValueError("set only one of `warmup_steps` and `warmup_ratio`")
        if not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError("`betas` must both lie in [0, 1)")
        return self

    # ----------------------------------------------------------------- construction helpers
    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str | Path | None = None) -> TrainConfig:
        """Validate ``data``; errors name ``source`` (a file) when given."""
        if not isinstance(data, Mapping):
            raise MedadaptError(
                f"a training configuration must be a mapping of keys to values, not {type(data).__name__}",
                path=source,
            )
        try:
            return cls(**{str(k): v for k, v in data.items()})  # __init__ raises MedadaptError
        except MedadaptError as err:
            if source is None:
                raise
            raise MedadaptError(err.what, path=source, fix=err.fix) from None

    @classmethod
    def from_yaml(cls, path: str | Path, *, section: str | None = None) -> TrainConfig:
        """Read a YAML file; ``section`` picks a top-level key (e.g. ``train``) of a larger file."""
        path = Path(path)
        if not path.is_file():
            raise MedadaptError("training configuration file not found", path=path,
                                fix="check the path of the YAML file")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise MedadaptError(f"not valid YAML ({err})", path=path, fix="fix the YAML syntax") from None
        if section is not None:
            if not isinstance(data, Mapping) or section not in data:
                raise MedadaptError(f"no `{section}:` section", path=path,
                                    fix=f"add a `{section}:` mapping with the training options")
            data = data[section] or {}
        return cls.from_dict(data, source=path)

    def override(self, **changes: Any) -> TrainConfig:
        """A validated copy with ``changes`` applied (``model_copy`` would skip validation)."""
        return self.from_dict({**self.model_dump(), **changes})

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-compatible dict (tuples become lists)."""
        return self.model_dump(mode="json")


def _config_error(err: ValidationError, source: str | Path | None) -> MedadaptError:
    known = list(TrainConfig.model_fields)
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(config)"
        if e["type"] == "extra_forbidden":
            close = difflib.get_close_matches(str(e["loc"][0]), known, n=1)
            hint = f" (did you mean `{close[0]}`?)" if close else ""
            lines.append(f"unknown key `{key}`{hint}")
        else:
            msg = e["msg"].removeprefix("Value error, ")
            lines.append(f"`{key}`: {msg}" if e["loc"] else msg)
    return MedadaptError(
        "invalid training configuration: " + "; ".join(lines),
        path=source,
        fix="valid keys are " + ", ".join(known),
    )


def read_options_yaml(path: str | Path) -> dict[str, Any]:
    """A ``--config`` YAML of command options as a dict with ``snake_case`` keys (any task)."""
    try:
        loaded = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise MedadaptError(f"cannot read the config ({err}).", path=path) from None
    if not isinstance(loaded, dict):
        raise MedadaptError("the config must be a mapping of option: value.", path=path)
    return {str(k).replace("-", "_"): v for k, v in loaded.items()}
