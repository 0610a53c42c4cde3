"""The one fit skeleton (engine/fit_template.run_task_fit): step order, the new-run guard, resume, the
summary and its message, and no run folder when a check fails."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from medadapt.engine.fit_template import FitHooks, loop_config, run_task_fit
from medadapt.engine.options import LoopOptions
from medadapt.errors import MedadaptError


class ToyOptions(LoopOptions):
    out: str
    seed: int = 0
    fail_in_prepare: bool = False


class _Task:
    def __init__(self, model: nn.Module):
        self.model = model
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(16, 3, generator=g)
        self.y = self.x.sum(1, keepdim=True)

    def parameters_to_train(self):
        return list(self.model.parameters())

    def train_batches(self, epoch):
        return [(self.x[i : i + 4], self.y[i : i + 4]) for i in range(0, 16, 4)]

    def training_step(self, batch):
        x, y = batch
        return nn.functional.mse_loss(self.model(x), y), {}

    def validate(self):
        return {"val_mse": nn.functional.mse_loss(self.model(self.x), self.y).item()}


class ToyFit(FitHooks):
    what = "toy run"

    def __init__(self, opts: ToyOptions):
        super().__init__(opts)
        self.calls: list[str] = []

    def prepare(self):
        self.calls.append("prepare")
        if self.opts.fail_in_prepare:
            raise MedadaptError("bad data")

    def train_config(self):
        self.calls.append("train_config")
        return loop_config(self.opts, seed=self.seed, default_steps=3, val_every=2, monitor="val_mse", mode="min",
                           tensorboard=False)

    def build_model(self):
        self.calls.append("build_model")
        self.first_weight = torch.randn(1).item()  # drawn after seeding: the same for the same seed
        return nn.Linear(3, 1)

    def build_task(self, model, config):
        self.calls.append("build_task")
        assert config.max_steps == 3 and (self.resume or not self.out.exists())  # nothing written yet
        return _Task(model)

    def write_inputs(self, task):
        self.calls.append("write_inputs")
        (self.out / "inputs.json").write_text(json.dumps({"seed": self.seed}))

    def before_fit(self, task):
        self.calls.append("before_fit")

    def summarise(self, task, result, session_seconds):
        self.calls.append("summarise")
        return {"steps": result.steps, "resumed": self.resume, "session": session_seconds >= 0}

    def message(self, summary):
        return f"done in {summary['steps']} steps"


def test_steps_run_in_order_and_the_summary_is_saved(tmp_path):
    hooks = ToyFit(ToyOptions(out=str(tmp_path / "run"), progress=False))
    summary = run_task_fit(hooks)
    assert hooks.calls == ["prepare", "train_config", "build_model", "build_task", "write_inputs", "before_fit",
                           "summarise"]
    assert summary == {"steps": 3, "resumed": False, "session": True, "message": "done in 3 steps"}
    saved = json.loads((tmp_path / "run" / "result.json").read_text())
    assert saved == {"steps": 3, "resumed": False, "session": True}  # the message is for the command line only
    again = ToyFit(ToyOptions(out=str(tmp_path / "other"), progress=False))
    run_task_fit(again)
    assert again.first_weight == hooks.first_weight  # seeded before the model is built


def test_a_run_is_not_started_over_but_resumes(tmp_path):
    opts = ToyOptions(out=str(tmp_path / "run"), progress=False)
    run_task_fit(ToyFit(opts))
    with pytest.raises(MedadaptError, match="already holds a toy run"):
        run_task_fit(ToyFit(opts))
    assert run_task_fit(ToyFit(opts), resume=True)["resumed"] is True


def test_a_failed_check_writes_no_run_folder(tmp_path):
    hooks = ToyFit(ToyOptions(out=str(tmp_path / "run"), fail_in_prepare=True, progress=False))
    with pytest.raises(MedadaptError, match="bad data"):
        run_task_fit(hooks)
    assert hooks.calls == ["prepare"] and not (tmp_path / "run").exists()


def test_loop_config_fills_the_shared_loop_options():
    opts = ToyOptions(out="x", lr=0.5, epochs=2, batch_size=7, clip_grad_norm=None, precision="bf16")
    cfg = loop_config(opts, seed=4, default_steps=99, monitor="dice")
    assert (cfg.lr, cfg.epochs, cfg.max_steps, cfg.batch_size, cfg.clip_grad_norm, cfg.precision, cfg.seed,
            cfg.monitor) == (0.5, 2, None, 7, None, "bf16", 4, "dice")  # epochs given: no default step count
    assert loop_config(ToyOptions(out="x"), seed=0, default_steps=99).max_steps == 99
