"""TrainConfig: YAML loading, validation errors as MedadaptError, round trip."""

from __future__ import annotations

import pytest

from medadapt.engine.config import TrainConfig
from medadapt.errors import MedadaptError


def test_yaml_round_trip(tmp_path):
    path = tmp_path / "train.yaml"
    path.write_text(
        "optimizer: sgd\nlr: 0.01\nmomentum: 0.8\nbetas: [0.8, 0.99]\nschedule: poly\npoly_power: 2.0\n"
        "warmup_ratio: 0.1\nmax_steps: 100\nepochs: null\ngrad_accum: 4\nclip_grad_norm: 1.0\n"
        "precision: bf16\nval_every: 10\nmonitor: dice\nmode: max\npatience: 3\nseed: 7\n"
    )
    cfg = TrainConfig.from_yaml(path)
    assert cfg.optimizer == "sgd" and cfg.lr == 0.01 and cfg.betas == (0.8, 0.99)
    assert cfg.max_steps == 100 and cfg.epochs is None and cfg.grad_accum == 4 and cfg.patience == 3
    d = cfg.to_dict()
    assert d["betas"] == [0.8, 0.99]  # JSON-ready
    assert TrainConfig.from_dict(d) == cfg


def test_section_of_larger_file(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("model: litemedsam\ntrain:\n  lr: 0.001\n  epochs: 3\n")
    assert TrainConfig.from_yaml(path, section="train").epochs == 3
    with pytest.raises(MedadaptError, match="no `optim:` section"):
        TrainConfig.from_yaml(path, section="optim")


def test_unknown_key_is_named_with_suggestion(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("lr: 0.1\nwarmup_step: 10\n")
    with pytest.raises(MedadaptError) as info:
        TrainConfig.from_yaml(path)
    msg = str(info.value)
    assert "unknown key `warmup_step`" in msg and "did you mean `warmup_steps`" in msg
    assert str(path) in msg and info.value.fix


@pytest.mark.parametrize(
    "data, fragment",
    [
        ({"lr": -1}, "`lr`"),
        ({"optimizer": "adam"}, "`optimizer`"),
        ({"epochs": None, "max_steps": None}, "set `epochs` or `max_steps`"),
        ({"warmup_steps": 5, "warmup_ratio": 0.1}, "only one of"),
        ({"betas": [0.9, 1.5]}, "betas"),
        ({"precision": "fp16"}, "`precision`"),
    ],
)
def test_bad_values(data, fragment):
    with pytest.raises(MedadaptError, match="invalid training configuration") as info:
        TrainConfig.from_dict(data)
    assert fragment in str(info.value)


def test_direct_construction_also_raises_medadapt_error():
    with pytest.raises(MedadaptError, match="unknown key `learning_rate`"):
        TrainConfig(learning_rate=0.1)


def test_override_validates():
    cfg = TrainConfig(lr=0.1)
    assert cfg.override(lr=0.2).lr == 0.2 and cfg.lr == 0.1
    with pytest.raises(MedadaptError):
        cfg.override(grad_accum=0)


def test_file_errors(tmp_path):
    with pytest.raises(MedadaptError, match="not found"):
        TrainConfig.from_yaml(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("lr: [0.1\n")
    with pytest.raises(MedadaptError, match="not valid YAML"):
        TrainConfig.from_yaml(bad)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("3\n")
    with pytest.raises(MedadaptError, match="must be a mapping"):
        TrainConfig.from_yaml(scalar)
