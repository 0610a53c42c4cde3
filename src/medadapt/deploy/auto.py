"""``--engine auto`` and the fit's default encoder: the fastest engine that keeps the results.

**predict** (:func:`choose_engine`): the fastest engine and precision whose DSC stays within
:data:`DSC_TOLERANCE` of eager PyTorch fp32 on the deployment benchmark (volumes section of
``bench/results/deploy.json``). There OpenVINO bf16 is the fastest such setting on a CPU with bf16
units, OpenVINO fp32 without them (mixed precision needs bf16 units too), ONNX Runtime fp32 without
OpenVINO; int8 and torch bf16 move DSC by more than the tolerance. On a GPU: PyTorch fp32. The rule is :data:`AUTO_TABLE`,
first matching row wins; ``tests/test_engine_auto.py`` checks it against the benchmark file.

**fit** (:func:`fit_encoder_engine`): the embedding cache is filled by OpenVINO fp32 when it is
installed (the same embeddings within float32 rounding, which the float16 cache cannot tell apart,
and faster than eager PyTorch on a CPU), else by PyTorch (also on a GPU).

Either way the first use of a runtime engine exports the model once into the medadapt cache
(``MEDADAPT_CACHE``, default ``~/.cache/medadapt``); later runs reuse it. Explicit flags win.
"""

from __future__ import annotations

import importlib.util
from typing import NamedTuple

import torch

from medadapt.deploy.export import read_manifest
from medadapt.deploy.runtime import SUPPORTED, cpu_has_bf16

DSC_TOLERANCE = 0.005


class AutoRow(NamedTuple):
    device: str  # "cuda" | "cpu"
    needs: tuple[str, ...]  # what the machine must offer: "openvino", "onnxruntime", "bf16" (CPU bf16 units)
    engine: str
    precision: str


# First row whose device and needs match wins.
AUTO_TABLE: tuple[AutoRow, ...] = (
    AutoRow("cuda", (), "torch", "fp32"),
    AutoRow("cpu", ("openvino", "bf16"), "openvino", "bf16"),
    AutoRow("cpu", ("openvino",), "openvino", "fp32"),
    AutoRow("cpu", ("onnxruntime",), "onnxruntime", "fp32"),
    AutoRow("cpu", (), "torch", "fp32"),
)
NO_OPENVINO = "OpenVINO is not installed: using {engine} fp32 (pip install openvino for faster CPU inference)."


def openvino_available() -> bool:
    return importlib.util.find_spec("openvino") is not None


def machine() -> tuple[str, set[str]]:
    """(device, capabilities) as :data:`AUTO_TABLE` names them."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    offers: set[str] = set()
    if importlib.util.find_spec("onnxruntime") is not None:
        offers.add("onnxruntime")
    if openvino_available():
        offers.add("openvino")
        if cpu_has_bf16():
            offers.add("bf16")
    return device, offers


def choose_engine(precision: str | None = None, *, export=None,
                  where: tuple[str, set[str]] | None = None) -> tuple[str, str, str | None]:
    """(engine, precision, notice or None) for ``--engine auto``. An explicit ``precision`` keeps its value
    and takes the first row whose engine supports it; an ``export`` folder fixes the engine to its format."""
    device, offers = where or machine()
    only = None
    if export is not None:
        only = "onnxruntime" if read_manifest(export, verify=False).get("format") == "onnx" else "openvino"
        device = "cpu"  # exports run on the CPU
    for row in AUTO_TABLE:
        if row.device != device or not set(row.needs) <= offers or (only and row.engine != only):
            continue
        if precision is not None and precision not in SUPPORTED[row.engine]:
            continue
        notice = NO_OPENVINO.format(engine=row.engine) if device == "cpu" and "openvino" not in offers else None
        return row.engine, precision or row.precision, notice
    return only or "torch", precision or "fp32", None


def resolve_engine(engine: str, precision: str | None, *, export=None) -> tuple[str, str, str | None]:
    """(engine, precision, notice or None) of ``predict``'s flags: ``auto`` chosen here, else as given (fp32
    when no precision is given)."""
    if engine == "auto":
        return choose_engine(precision, export=export)
    return engine, precision or "fp32", None


def fit_encoder_engine(requested: str) -> tuple[str, str | None]:
    """(engine, notice or None) that fills a fit's embedding cache; ``auto``: OpenVINO fp32 when installed."""
    if requested != "auto" or torch.cuda.is_available():
        return ("torch" if requested == "auto" else requested), None
    if openvino_available():
        return "openvino", None
    return "torch", "OpenVINO is not installed: the embedding cache is filled by PyTorch (pip install openvino: about 2x faster)."
