"""One training run, whatever the task: the steps every fit command shares, with per-task hooks.

``medadapt fit`` (SAM, volumetric, classify), ``medadapt pretrain`` and ``medadapt distill`` run the same
skeleton: refuse to start over a run (``--resume`` continues it), read the data and choose the cases,
seed, build the model and the task, write the inputs, train with the shared
:class:`~medadapt.engine.trainer.Trainer`, summarise, save. :func:`run_task_fit` is that skeleton once;
a task fills the steps that differ by subclassing :class:`FitHooks` (data, model, task, configuration,
summary). Every check that can fail on user input runs before the run folder is written.
"""

from __future__ import annotations

import json
import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medadapt.engine.config import TrainConfig
from medadapt.engine.options import LoopOptions
from medadapt.engine.seed import seed_everything
from medadapt.engine.trainer import Trainer, TrainResult, TrainTask
from medadapt.run import RunFolder

__all__ = ["FitHooks", "default_device", "loop_config", "run_task_fit"]


def default_device() -> str:
    """The ``TrainConfig.device`` of the fit commands: the CPU unless a GPU is there."""
    return "cpu" if not torch.cuda.is_available() else "auto"


def loop_config(opts: LoopOptions, *, seed: int, default_steps: int, **fields: Any) -> TrainConfig:
    """The :class:`TrainConfig` of a run's :class:`LoopOptions` (``max_steps``: ``default_steps`` unless the
    options give steps or epochs); ``fields`` add the task's own settings (monitor, warm-up, ...)."""
    loop = dict(
        lr=opts.lr, weight_decay=opts.weight_decay, epochs=opts.epochs,
        max_steps=opts.max_steps if (opts.max_steps or opts.epochs) else default_steps,
        clip_grad_norm=opts.clip_grad_norm, precision=opts.precision, seed=seed, batch_size=opts.batch_size,
        progress=opts.progress, device=default_device(),
    )
    return TrainConfig(**{**loop, **fields})


class FitHooks(ABC):
    """The steps of one training command that differ by task; :func:`run_task_fit` calls them in order.

    One instance serves one run of the options ``opts`` (any model with ``out`` and ``seed``): a step keeps
    what later steps need as attributes. ``run`` and ``resume`` are set before the first step.
    """

    #: what the run folder holds, for the "already holds a ..." error
    what: str = "run"
    run: RunFolder
    resume: bool

    def __init__(self, opts: Any):
        self.opts, self.out, self.seed = opts, Path(opts.out), opts.seed

    def prepare(self) -> None:  # noqa: B027 (optional step)
        """Read the data and choose the cases; every check that needs no model. Runs before seeding."""

    @abstractmethod
    def train_config(self) -> TrainConfig:
        """The trainer's configuration (monitor, mode, length)."""

    def build_model(self) -> nn.Module | None:
        """The model with its recipe applied, after seeding (None: :meth:`build_task` builds it with its data)."""
        return None

    @abstractmethod
    def build_task(self, model: nn.Module | None, config: TrainConfig) -> TrainTask:
        """The :class:`TrainTask` the trainer runs."""

    @abstractmethod
    def write_inputs(self, task: TrainTask) -> None:
        """Write what the run was given (options, split) into the created run folder."""

    def before_fit(self, task: TrainTask) -> None:  # noqa: B027 (optional step)
        """Work timed with the session but not part of training (e.g. a baseline score)."""

    @abstractmethod
    def summarise(self, task: TrainTask, result: TrainResult, session_seconds: float) -> dict[str, Any]:
        """The run's summary (``result.json``); ``session_seconds``: this process's :meth:`before_fit` + training."""

    def save(self, summary: dict[str, Any]) -> None:
        """Write the summary (``result.json``)."""
        self.run.write_result(summary)

    def message(self, summary: dict[str, Any]) -> str | None:
        """One line for the command line (None: no ``message`` key)."""
        return None


def run_task_fit(hooks: FitHooks, *, resume: bool = False) -> dict[str, Any]:
    """Run ``hooks``' task from a new or resumed run folder; returns the summary (JSON types) and its message."""
    hooks.run, hooks.resume = RunFolder(hooks.out), resume
    hooks.run.guard_new(resume, what=hooks.what)
    hooks.prepare()
    config = hooks.train_config()
    seed_everything(hooks.seed)
    model = hooks.build_model()
    task = hooks.build_task(model, config)
    # Only now, with every input checked, does the run folder get written.
    hooks.out.mkdir(parents=True, exist_ok=True)
    hooks.write_inputs(task)
    start = time.perf_counter()
    hooks.before_fit(task)
    result = Trainer(config, task, hooks.out).fit(resume=resume)
    summary = hooks.summarise(task, result, time.perf_counter() - start)
    hooks.save(summary)
    summary = json.loads(json.dumps(summary, default=str))
    message = hooks.message(summary)
    if message is not None:
        summary["message"] = message
    return summary
