"""Numeric precision: one type for every option that takes one, and one autocast helper.

``fp32`` and ``bf16`` are what torch runs (bf16 by autocast); ``mixed`` (fp32 stem, bf16 rest) and
``int8`` exist only for exported OpenVINO / ONNX Runtime graphs. Options parse their string once
with :func:`parse_precision`, so a bad value is one clear error wherever it comes from.

:func:`autocast` takes the device from the model or tensor it is given: a model moved to a GPU is
autocast on that GPU (``torch.autocast`` needs the device type, which a hard-coded ``"cpu"`` gets
wrong there).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from enum import Enum
from typing import Literal

import torch

from medadapt.errors import MedadaptError


class Precision(str, Enum):
    """A numeric precision. A ``str`` enum: ``Precision.BF16 == "bf16"`` and it serialises as ``"bf16"``."""

    FP32 = "fp32"
    BF16 = "bf16"
    MIXED = "mixed"
    INT8 = "int8"

    def __str__(self) -> str:
        return self.value


#: The precisions torch itself runs (training, torch inference): fp32, or bf16 autocast.
TORCH_PRECISIONS: tuple[Precision, ...] = (Precision.FP32, Precision.BF16)

#: The field type of option models whose precision torch runs (pydantic validates the two strings).
TorchPrecision = Literal["fp32", "bf16"]


def parse_precision(
    value: str | Precision,
    *,
    allowed: Iterable[str | Precision] | None = None,
    option: str = "--precision",
    fix: str | None = None,
) -> Precision:
    """``value`` as a :class:`Precision`; a :class:`MedadaptError` naming the allowed values otherwise.

    ``allowed`` narrows the choice (e.g. :data:`TORCH_PRECISIONS` where only torch runs the model);
    ``fix`` replaces the default advice in the error.
    """
    choices = [Precision(a) for a in allowed] if allowed is not None else list(Precision)
    names = ", ".join(c.value for c in choices)
    try:
        parsed = Precision(str(value.value if isinstance(value, Precision) else value).strip().lower())
    except ValueError:
        parsed = None
    if parsed is None or parsed not in choices:
        raise MedadaptError(f"{option} {value!r} is not one of {names}.",
                            fix=fix or f"use {option} {choices[0].value}")
    return parsed


def device_of(where: torch.nn.Module | torch.Tensor | torch.device | str | None) -> torch.device:
    """The device of a module (its first parameter, else buffer), a tensor, or a device name; CPU for None
    or a module without tensors."""
    if where is None:
        return torch.device("cpu")
    if isinstance(where, torch.Tensor):
        return where.device
    if isinstance(where, torch.nn.Module):
        for tensor in (*where.parameters(), *where.buffers()):
            return tensor.device
        return torch.device("cpu")
    return torch.device(where)


def autocast(
    precision: str | Precision,
    where: torch.nn.Module | torch.Tensor | torch.device | str | None = None,
) -> contextlib.AbstractContextManager:
    """bf16 autocast on the device of ``where`` for ``bf16``; a no-op context for ``fp32``.

    ``mixed`` and ``int8`` are not torch precisions: they raise a :class:`MedadaptError`.
    """
    p = parse_precision(precision, allowed=TORCH_PRECISIONS,
                        fix="use --precision fp32 or bf16 with torch; mixed and int8 need --engine openvino")
    if p is Precision.FP32:
        return contextlib.nullcontext()
    return torch.autocast(device_of(where).type, dtype=torch.bfloat16)


__all__ = ["TORCH_PRECISIONS", "Precision", "TorchPrecision", "autocast", "device_of", "parse_precision"]
