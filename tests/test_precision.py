"""Precision type and the device-following autocast helper."""

import pytest
import torch

from medadapt.errors import MedadaptError
from medadapt.precision import TORCH_PRECISIONS, Precision, autocast, device_of, parse_precision


def test_parse_accepts_every_value_and_enum():
    for name in ("fp32", "bf16", "mixed", "int8"):
        assert parse_precision(name) is Precision(name)
    assert parse_precision(" BF16 ") is Precision.BF16
    assert parse_precision(Precision.INT8) is Precision.INT8
    assert Precision.BF16 == "bf16" and str(Precision.MIXED) == "mixed"


def test_parse_rejects_unknown_value_listing_the_choices():
    with pytest.raises(MedadaptError) as err:
        parse_precision("fp16")
    msg = str(err.value)
    assert "'fp16'" in msg and "fp32, bf16, mixed, int8" in msg and "Fix:" in msg


def test_parse_narrowed_choice():
    assert parse_precision("bf16", allowed=TORCH_PRECISIONS) is Precision.BF16
    with pytest.raises(MedadaptError, match="not one of fp32, bf16"):
        parse_precision("int8", allowed=TORCH_PRECISIONS, option="--precision")


def test_device_of():
    lin = torch.nn.Linear(2, 2)
    assert device_of(lin) == torch.device("cpu")
    assert device_of(torch.zeros(1)) == torch.device("cpu")
    assert device_of(torch.nn.ReLU()) == torch.device("cpu")
    assert device_of("meta") == torch.device("meta")
    assert device_of(torch.nn.Linear(2, 2, device="meta")).type == "meta"
    assert device_of(None) == torch.device("cpu")


def test_autocast_bf16_runs_matmul_in_bf16_and_fp32_does_not():
    lin = torch.nn.Linear(4, 4)
    x = torch.randn(2, 4)
    with autocast("bf16", lin):
        assert lin(x).dtype == torch.bfloat16
    with autocast(Precision.FP32, lin):
        assert lin(x).dtype == torch.float32
    with autocast("bf16", x):
        assert lin(x).dtype == torch.bfloat16


def test_autocast_uses_the_device_of_the_model(monkeypatch):
    seen = []
    real = torch.autocast

    def spy(device_type, *args, **kwargs):
        seen.append(device_type)
        return real("cpu", *args, **kwargs)

    monkeypatch.setattr(torch, "autocast", spy)
    autocast("bf16", torch.nn.Linear(2, 2, device="meta"))
    autocast("bf16", torch.zeros(1))
    assert seen == ["meta", "cpu"]


def test_autocast_rejects_export_only_precisions():
    with pytest.raises(MedadaptError, match="openvino"):
        autocast("int8", torch.nn.Linear(2, 2))
