"""Trainer on a toy regression task: learning, accumulation, clipping, validation, resume, logs."""

from __future__ import annotations

import csv
import json
import random

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from medadapt.engine.checkpointing import load_checkpoint
from medadapt.engine.config import TrainConfig
from medadapt.engine.trainer import Trainer, TrainTask
from medadapt.errors import MedadaptError


class Killed(RuntimeError):
    """Stands in for a killed process."""


class ToyTask:
    """y = x @ w + noise; a small MLP whose first layer is frozen (like a frozen encoder).

    Every source of randomness the trainer must restore on resume is used: DataLoader shuffling
    (torch), dropout (torch), input jitter (numpy) and a python ``random`` coin.
    """

    def __init__(self, n=48, batch_size=8, *, dropout=0.1, jitter=0.01, shuffle=True, seed=0,
                 kill_at=None, metrics=None, sized=True):
        g = torch.Generator().manual_seed(seed)
        w = torch.randn(4, 1, generator=g)
        self.x = torch.randn(n, 4, generator=g)
        self.y = self.x @ w + 0.05 * torch.randn(n, 1, generator=g)
        self.vx = torch.randn(32, 4, generator=g)
        self.vy = self.vx @ w
        torch.manual_seed(seed)
        self.model = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 16), nn.Dropout(dropout),
                                   nn.Linear(16, 1))
        self.model[0].requires_grad_(False)
        self.batch_size, self.shuffle, self.jitter, self.sized = batch_size, shuffle, jitter, sized
        self.kill_at = kill_at  # (epoch, batch index)
        self.metrics = list(metrics) if metrics is not None else None  # scripted validation values
        self.saved_at: list[tuple[int, object]] = []  # (micro-batches seen, out_dir) per save_best
        self.steps_seen = 0
        self._epoch = 0
        self._batch = 0

    def parameters_to_train(self):
        return [p for p in self.model.parameters() if p.requires_grad]

    def train_batches(self, epoch):
        self._epoch, self._batch = epoch, 0
        loader = DataLoader(TensorDataset(self.x, self.y), batch_size=self.batch_size, shuffle=self.shuffle)
        return loader if self.sized else (b for b in loader)

    def training_step(self, batch):
        if self.kill_at == (self._epoch, self._batch):
            raise Killed("simulated kill")
        self._batch += 1
        self.steps_seen += 1
        x, y = batch
        if self.jitter:
            x = x + torch.from_numpy(np.random.normal(0, self.jitter, x.shape).astype(np.float32))
            x = x * (1.0 + 0.001 * random.random())
        loss = nn.functional.mse_loss(self.model(x), y)
        return loss, {"mse": loss.detach()}

    def validate(self):
        if self.metrics is not None:
            return {"score": self.metrics.pop(0)} if self.metrics else {"score": 0.0}
        mse = nn.functional.mse_loss(self.model(self.vx), self.vy).item()
        return {"val_mse": mse, "neg_mse": -mse}

    def save_best(self, out_dir):
        self.saved_at.append((self.steps_seen, out_dir))

    def state_dict(self):
        return {"steps_seen": self.steps_seen}

    def load_state_dict(self, state):
        self.steps_seen = state["steps_seen"]


def cfg(**kw) -> TrainConfig:
    base = dict(lr=0.02, epochs=4, schedule="cosine", warmup_steps=2, monitor="neg_mse", log_every=1,
                progress=False, tensorboard=False, restore_best=False, weight_decay=0.0)
    return TrainConfig(**{**base, **kw})


def trainable(task) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in task.model.named_parameters() if p.requires_grad}


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_toy_task_is_a_train_task():
    assert isinstance(ToyTask(), TrainTask)


def test_loss_decreases_and_result(tmp_path):
    task = ToyTask()
    res = Trainer(cfg(epochs=6, lr=0.03), task, tmp_path).fit()
    first, last = res.history[0], res.history[-1]
    assert last["val_mse"] < 0.5 * first["val_mse"]
    assert last["train_loss"] < first["train_loss"]
    assert res.steps == 6 * 6 and res.epochs_run == 6 and not res.stopped_early
    assert res.monitor == "neg_mse" and res.best_metric == max(h["neg_mse"] for h in res.history)
    assert res.peak_rss_mb > 10 and res.wall_time_s > 0
    assert "forward" not in vars(task.model)  # accelerate's patching undone
    json.dumps(res.to_dict())


def test_accumulation_equals_larger_batch(tmp_path):
    # 20 samples: 8 + 8 + 4 as batches, or micro-batches of 2 with grad_accum 4 (last window 2 of 4)
    common = dict(dropout=0.0, jitter=0.0, shuffle=False, n=20)
    big, small = ToyTask(batch_size=8, **common), ToyTask(batch_size=2, **common)
    Trainer(cfg(epochs=2, grad_accum=1), big, tmp_path / "big").fit()
    res = Trainer(cfg(epochs=2, grad_accum=4), small, tmp_path / "small").fit()
    assert res.steps == 6
    a, b = trainable(big), trainable(small)
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=1e-5)
    # and it really trained
    assert not torch.allclose(a["4.weight"], ToyTask(**common).model[4].weight)


def test_clipping_bounds_the_update(tmp_path):
    task = ToyTask(dropout=0.0, jitter=0.0, shuffle=False)
    before = torch.cat([p.detach().flatten().clone() for p in task.parameters_to_train()])
    c = cfg(optimizer="sgd", momentum=0.0, lr=1.0, schedule="constant", warmup_steps=0, max_steps=1,
            clip_grad_norm=0.01)
    Trainer(c, task, tmp_path).fit()
    after = torch.cat([p.detach().flatten() for p in task.parameters_to_train()])
    assert (after - before).norm().item() == pytest.approx(0.01, rel=1e-4)
    rows = read_csv(tmp_path / "metrics.csv")
    grad_norm = [float(r["value"]) for r in rows if r["name"] == "grad_norm"]
    assert grad_norm and grad_norm[0] > 0.01  # pre-clip norm is logged


def test_lr_follows_schedule_in_the_loop(tmp_path):
    task = ToyTask()
    Trainer(cfg(epochs=2, warmup_steps=4, lr=0.1), task, tmp_path).fit()  # 12 steps
    lrs = [float(r["value"]) for r in read_csv(tmp_path / "metrics.csv") if r["name"] == "lr"]
    assert len(lrs) == 12
    assert lrs[0] == pytest.approx(0.025) and lrs[3] == pytest.approx(0.1)
    assert lrs[8] == pytest.approx(0.05)  # cosine midpoint of steps 4..12
    assert lrs[-1] < lrs[4]


def test_early_stopping(tmp_path):
    task = ToyTask(metrics=[0.5, 0.6, 0.55, 0.6, 0.59, 0.9])  # best 0.6 at the 2nd validation
    res = Trainer(cfg(monitor="score", val_every=2, patience=3, epochs=10), task, tmp_path).fit()
    assert res.stopped_early and res.steps == 10  # 5 validations, 2 steps apart
    assert res.best_metric == 0.6 and res.best_step == 4
    assert len(res.history) == 5


def test_val_every_sets_the_validation_points(tmp_path):
    # 6 steps per epoch: with val_every=4 validations come at 4, 8, 12, ... and the end only, not
    # also at every epoch's end (6, 12, 18); without val_every, once per epoch.
    stepped = Trainer(cfg(val_every=4, epochs=4), ToyTask(), tmp_path / "a").fit()
    assert [h["step"] for h in stepped.history] == [4, 8, 12, 16, 20, 24]
    per_epoch = Trainer(cfg(epochs=4), ToyTask(), tmp_path / "b").fit()
    assert [h["step"] for h in per_epoch.history] == [6, 12, 18, 24]
    ends_off_grid = Trainer(cfg(val_every=5, epochs=4), ToyTask(), tmp_path / "c").fit()
    assert [h["step"] for h in ends_off_grid.history] == [5, 10, 15, 20, 24]  # the final weights too


def test_best_hook_only_on_improvement(tmp_path):
    task = ToyTask(metrics=[0.3, 0.1, 0.2, 0.05, 0.4])  # one validation per epoch of 6 steps
    res = Trainer(cfg(monitor="score", mode="min", epochs=5), task, tmp_path).fit()
    assert task.saved_at == [(6, tmp_path), (12, tmp_path), (24, tmp_path)]  # 0.3, 0.1, 0.05
    assert res.best_metric == 0.05 and res.best_step == 24
    best = load_checkpoint(tmp_path / "checkpoint" / "best.pt")
    assert best["metric"] == 0.05 and best["step"] == 24


def test_min_delta_blocks_tiny_improvements(tmp_path):
    task = ToyTask(metrics=[0.5, 0.505, 0.52])
    res = Trainer(cfg(monitor="score", epochs=3, min_delta=0.01), task, tmp_path).fit()
    assert res.best_metric == 0.52 and res.best_step == 18


def test_restore_best_loads_best_weights(tmp_path):
    task = ToyTask(metrics=[0.9, 0.1, 0.2])
    Trainer(cfg(monitor="score", epochs=3, restore_best=True), task, tmp_path).fit()
    best = load_checkpoint(tmp_path / "checkpoint" / "best.pt")
    assert best["step"] == 6
    for k, v in trainable(task).items():
        torch.testing.assert_close(v, best["model"][k])
    last = load_checkpoint(tmp_path / "checkpoint" / "last.pt")
    assert not torch.equal(last["model"]["4.weight"], best["model"]["4.weight"])


# 6 micro-batches per epoch. Mid-epoch case: grad_accum 2, validations (and checkpoints) at steps
# 2, 4, 6, 8...; step 8 is after micro-batch 4 of epoch 2, and the kill comes one micro-batch later.
@pytest.mark.parametrize("kill_at, val_every", [((2, 0), None), ((2, 5), 2)])
def test_kill_and_resume_matches_uninterrupted(tmp_path, kill_at, val_every):
    c = cfg(val_every=val_every, grad_accum=2 if val_every else 1, clip_grad_norm=1.0)
    ref_task = ToyTask()
    ref = Trainer(c, ref_task, tmp_path / "ref").fit()

    killed = ToyTask(kill_at=kill_at)
    with pytest.raises(Killed):
        Trainer(c, killed, tmp_path / "run").fit()
    saved = load_checkpoint(tmp_path / "run" / "checkpoint" / "last.pt")
    if val_every is None:
        assert saved["run"]["epoch"] == 2 and saved["run"]["batches_done"] == 0  # lost only epoch 3
    else:
        assert saved["run"]["epoch"] == 2 and saved["run"]["batches_done"] > 0  # mid-epoch checkpoint

    resumed_task = ToyTask()  # a fresh process: new model, same seed
    res = Trainer(c, resumed_task, tmp_path / "run").fit(resume=True)
    a, b = trainable(ref_task), trainable(resumed_task)
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=1e-6, rtol=0)
    assert res.steps == ref.steps and res.epochs_run == 4
    assert res.best_metric == pytest.approx(ref.best_metric, abs=1e-6)
    assert [h["step"] for h in res.history] == [h["step"] for h in ref.history]
    assert resumed_task.steps_seen == ref_task.steps_seen  # task state restored
    # the CSV holds each (step, split, name) once, as the uninterrupted run's does
    rows = read_csv(tmp_path / "run" / "metrics.csv")
    keys = [(r["step"], r["split"], r["name"]) for r in rows]
    assert len(keys) == len(set(keys)) == len(read_csv(tmp_path / "ref" / "metrics.csv"))


def test_checkpoint_is_weights_only_and_trainable_only(tmp_path):
    task = ToyTask()
    Trainer(cfg(epochs=1), task, tmp_path).fit()
    raw = torch.load(tmp_path / "checkpoint" / "last.pt", weights_only=True)
    assert set(raw["model"]) == {"2.weight", "2.bias", "4.weight", "4.bias"}  # frozen layer 0 absent
    for key in ("optimizer", "scheduler", "rng", "run", "config", "task"):
        assert key in raw
    assert raw["run"]["finished"] and raw["task"] == {"steps_seen": 6}
    torch.load(tmp_path / "checkpoint" / "best.pt", weights_only=True)


def test_resume_of_finished_run_trains_nothing(tmp_path):
    Trainer(cfg(epochs=2), ToyTask(), tmp_path).fit()
    task = ToyTask()
    res = Trainer(cfg(epochs=2), task, tmp_path).fit(resume=True)
    assert task.steps_seen == 12 and res.steps == 12  # restored, not retrained
    # a longer run continues from there
    res = Trainer(cfg(epochs=3), task, tmp_path).fit(resume=True)
    assert res.steps == 18 and res.epochs_run == 3


def test_resume_without_checkpoint_is_clear(tmp_path):
    with pytest.raises(MedadaptError, match="no checkpoint to resume"):
        Trainer(cfg(), ToyTask(), tmp_path).fit(resume=True)


def test_logs_and_config(tmp_path):
    c = cfg(epochs=2, tensorboard=True)
    Trainer(c, ToyTask(), tmp_path).fit()
    assert json.loads((tmp_path / "config.json").read_text()) == c.to_dict()
    rows = read_csv(tmp_path / "metrics.csv")
    assert {r["split"] for r in rows} == {"train", "val"}
    assert {r["name"] for r in rows if r["split"] == "train"} == {"loss", "lr", "mse"}
    val = [r for r in rows if r["split"] == "val" and r["name"] == "val_mse"]
    assert [int(r["step"]) for r in val] == [6, 12] and [int(r["epoch"]) for r in val] == [0, 1]
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))


def test_bf16_on_cpu(tmp_path):
    task = ToyTask()
    res = Trainer(cfg(precision="bf16", epochs=3, lr=0.03), task, tmp_path).fit()
    assert res.history[-1]["val_mse"] < res.history[0]["val_mse"]
    assert "forward" not in vars(task.model)
    # the next fp32 run in the same process still works (accelerate keeps a singleton state)
    Trainer(cfg(epochs=1), ToyTask(), tmp_path / "fp32").fit()


def test_iterable_without_len(tmp_path):
    task = ToyTask(sized=False)
    res = Trainer(cfg(schedule="constant", warmup_steps=0, epochs=2, grad_accum=4), task, tmp_path).fit()
    assert res.steps == 4  # 6 micro-batches per epoch: windows of 4 and 2
    with pytest.raises(MedadaptError, match="needs the run length"):
        Trainer(cfg(schedule="cosine"), ToyTask(sized=False), tmp_path / "b").fit()
    empty = ToyTask(sized=False, n=0, shuffle=False)
    with pytest.raises(MedadaptError, match="no training batches"):
        Trainer(cfg(schedule="constant", epochs=None, max_steps=5), empty, tmp_path / "c").fit()


def test_nan_loss_and_bad_monitor_are_clear(tmp_path):
    class NanTask(ToyTask):
        def training_step(self, batch):
            loss, logs = super().training_step(batch)
            return loss * float("nan"), logs

    with pytest.raises(MedadaptError, match="loss became nan"):
        Trainer(cfg(), NanTask(), tmp_path / "nan").fit()
    with pytest.raises(MedadaptError, match="`dice` is not among"):
        Trainer(cfg(monitor="dice"), ToyTask(), tmp_path / "mon").fit()
    with pytest.raises(MedadaptError, match="several metrics"):
        Trainer(cfg(monitor=None), ToyTask(), tmp_path / "none").fit()
