"""The training loop shared by 2D SAM, 3D segmentation and classification tasks.

A task (:class:`TrainTask`) owns the model, the data and the maths of one step; the
:class:`Trainer` owns everything around it: optimiser + schedule, accumulation, clipping, bf16
autocast, validation, best checkpoint, early stopping, resume and logs.

Devices: ``accelerate.Accelerator`` prepares the model and optimiser, so the same loop runs on one
CPU, one GPU, or several GPUs / nodes under ``accelerate launch`` / ``torchrun`` (DDP). Logging and
saving happen on the main process only.

Counting: a *step* is one optimiser update (``grad_accum`` micro-batches). ``val_every``,
``log_every``, ``max_steps`` and the schedule count steps; ``patience`` counts validations.

Resume: ``checkpoint/last.pt`` is written after every epoch and at every validation. A resumed run
restores the weights, optimiser, scheduler, task state and RNGs, and (for a checkpoint taken
mid-epoch) replays the epoch's data iterator up to the checkpoint, so with the same seed it ends
with the same weights as an uninterrupted run, and writes the task's artifact again at its end (from
``best.pt``): a kill between a checkpoint and the artifact leaves none missing or stale. The scheduler
is not passed through ``accelerator.prepare``: accelerate's wrapper steps it once per process, we step
it once per update.
"""

from __future__ import annotations

import contextlib
import logging
import math
import resource
import time
from collections.abc import Iterable, Iterator, Mapping, Sized
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import broadcast_object_list, send_to_device
from torch import Tensor, nn
from torch.utils.data import DataLoader

from medadapt.engine.checkpointing import (
    capture_rng_state,
    load_checkpoint,
    load_trainable_state_dict,
    restore_rng_state,
    save_checkpoint,
    trainable_state_dict,
)
from medadapt.engine.config import TrainConfig
from medadapt.engine.logging import RunLogger
from medadapt.engine.optim import build_optimizer, build_scheduler
from medadapt.engine.seed import seed_everything
from medadapt.errors import MedadaptError
from medadapt.io.atomic import write_json
from medadapt.run import RunFolder

log = logging.getLogger("medadapt.engine")


@runtime_checkable
class TrainTask(Protocol):
    """What a task gives the trainer.

    During :meth:`Trainer.fit`, ``task.model`` is the *prepared* model while ``training_step`` runs
    (the DDP wrapper under several processes, the same object otherwise) and the plain model during
    ``validate`` and ``save_best``. Under DDP, ``training_step`` must run the trainable computation
    through ``self.model(...)`` so gradients are synchronised.

    Optional methods, used when present:

    * ``state_dict() -> dict`` / ``load_state_dict(dict)``: task state to resume (weights_only-safe
      values only: tensors, numbers, strings, lists, dicts).
    * ``save_best(out_dir: Path)``: called on the main process each time the monitored metric
      improves (and once at the end when the task reports no validation metrics); the task writes
      its adapter artifact there.
    """

    model: nn.Module

    def parameters_to_train(self) -> Iterable[nn.Parameter] | Iterable[Mapping[str, Any]]:
        """Trainable parameters, or param groups (see :func:`medadapt.engine.optim.build_optimizer`)."""
        ...

    def train_batches(self, epoch: int) -> Iterable[Any]:
        """The micro-batches of ``epoch`` (a ``DataLoader`` or any iterable; ``len()`` if known)."""
        ...

    def training_step(self, batch: Any) -> tuple[Tensor, Mapping[str, float | Tensor]]:
        """Forward one micro-batch: mean loss and extra scalars to log."""
        ...

    def validate(self) -> Mapping[str, float]:
        """Validation metrics (run under ``torch.no_grad`` and ``model.eval()``); may be empty."""
        ...


@dataclass
class TrainResult:
    """Outcome of :meth:`Trainer.fit`. ``peak_rss_mb`` is the process peak (``ru_maxrss``)."""

    best_metric: float | None
    best_step: int | None
    monitor: str | None
    epochs_run: int  # epochs started; the last may be partial (max_steps / early stopping)
    steps: int
    wall_time_s: float  # summed over resumed sessions
    peak_rss_mb: float
    peak_gpu_mb: float | None
    stopped_early: bool
    history: list[dict[str, Any]] = field(default_factory=list)  # one record per validation

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _RunState:
    """Loop counters saved in ``last.pt`` (all plain values)."""

    epoch: int = 0  # current epoch (0-based)
    batches_done: int = 0  # micro-batches of ``epoch`` already trained
    step: int = 0
    last_val_step: int = -1
    best_metric: float | None = None
    best_step: int | None = None
    monitor: str | None = None
    bad_validations: int = 0
    stopped_early: bool = False
    finished: bool = False
    wall_time_s: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def from_checkpoint(cls, state: Mapping[str, Any]) -> _RunState:
        return cls(**state["run"])


class Trainer:
    """``Trainer(config, task, out_dir).fit(resume=False) -> TrainResult``.

    ``out_dir`` receives ``config.json``, ``metrics.csv``, ``tb/``, ``checkpoint/last.pt`` and
    ``checkpoint/best.pt`` (trainable weights at the best validation), plus whatever the task's
    ``save_best`` writes.
    """

    def __init__(self, config: TrainConfig, task: TrainTask, out_dir: str | Path, *, progress: bool | None = None):
        self.config = config
        self.task = task
        self.out_dir = Path(out_dir)
        run = RunFolder(out_dir)
        self.last_path = run.last_checkpoint
        self.best_path = run.best_checkpoint
        self.train_config_path = run.train_config_path
        self.progress = config.progress if progress is None else progress
        self.accelerator: Accelerator | None = None

    # ================================================================== public
    def fit(self, resume: bool = False) -> TrainResult:
        cfg, task = self.config, self.task
        self._session_start = time.perf_counter()
        acc = self.accelerator = _make_accelerator(cfg)
        self._main = acc.is_main_process

        state = load_checkpoint(self.last_path) if resume else None
        if state is not None:
            self._warn_config_changes(state.get("config", {}))
        run = self._run = _RunState.from_checkpoint(state) if state else _RunState()
        self._resumed = state is not None
        if self._main:
            if state is None:
                for stale in (self.last_path, self.best_path):
                    stale.unlink(missing_ok=True)
            write_json(self.train_config_path, cfg.to_dict())

        seed_everything(cfg.seed, deterministic=cfg.deterministic)
        self._model = task.model
        had_instance_forward = "forward" in vars(self._model)
        self._optimizer = build_optimizer(cfg, task.parameters_to_train())
        self._params = [p for g in self._optimizer.param_groups for p in g["params"]]
        self._logger = None
        self._micro_losses: list[Tensor] = []  # losses of the open accumulation window
        self._reset_log_window()
        self._val_losses: list[float] = []
        self._epoch_rng: dict | None = None
        self._prepared, self._optimizer = acc.prepare(self._model, self._optimizer)
        try:
            if state is not None:
                load_trainable_state_dict(self._model, state["model"], path=self.last_path)
                self._optimizer.load_state_dict(state["optimizer"])
                if state.get("task") is not None and hasattr(task, "load_state_dict"):
                    task.load_state_dict(state["task"])
            self._logger = RunLogger(
                self.out_dir,
                enabled=self._main,
                tensorboard=cfg.tensorboard,
                progress=self.progress,
                resume_step=run.step if state is not None else None,
            )
            trained = not self._should_stop()
            if trained:
                self._train(state)
            self._finish(trained)
        finally:
            task.model = self._model
            if self._logger is not None:
                self._logger.close()
            acc.unwrap_model(self._prepared, keep_fp32_wrapper=False)
            if not had_instance_forward:  # undo accelerate's autocast patch of forward
                vars(self._model).pop("forward", None)
                vars(self._model).pop("_original_forward", None)
            acc.free_memory()
        return self._result()

    # ================================================================== loop
    def _train(self, state: Mapping[str, Any] | None) -> None:
        cfg, run = self.config, self._run
        mid_epoch = state is not None and run.batches_done > 0
        if state is not None:
            restore_rng_state(state["epoch_rng"] if mid_epoch else state["rng"])
        batches = self._epoch_batches(run.epoch)
        n_batches = len(batches) if isinstance(batches, Sized) else None
        if n_batches == 0:
            raise MedadaptError("the task produced no training batches",
                                fix="check the training split (is it empty?) and the batch size")
        total = self._total_steps(n_batches)
        self._scheduler = build_scheduler(self._optimizer, cfg, total)
        if state is not None:
            self._scheduler.load_state_dict(state["scheduler"])
            # LambdaLR's constructor reset the lrs to step 0's; put back the ones of the next update.
            for group, lr in zip(self._optimizer.param_groups, self._scheduler.get_last_lr(), strict=True):
                group["lr"] = lr

        self.task.model = self._prepared
        self._logger.start_progress(total, run.step)
        skip, rng_after_skip = (run.batches_done, state["rng"]) if mid_epoch else (0, None)
        while not self._should_stop():
            if batches is None:
                batches = self._epoch_batches(run.epoch)
            self._train_epoch(batches, skip, rng_after_skip)
            batches, skip, rng_after_skip = None, 0, None

    def _should_stop(self) -> bool:
        cfg, run = self.config, self._run
        return (
            run.stopped_early
            or (cfg.max_steps is not None and run.step >= cfg.max_steps)
            or (cfg.epochs is not None and run.epoch >= cfg.epochs)
        )

    def _train_epoch(self, batches: Iterable[Any], skip: int, rng_after_skip: dict | None) -> None:
        cfg, run, acc = self.config, self._run, self.accelerator
        n_batches = len(batches) if isinstance(batches, Sized) else None
        it: Iterator[Any] = iter(batches)
        for _ in range(skip):  # replay up to a mid-epoch checkpoint (same shuffling and workers)
            next(it)
        if rng_after_skip is not None:
            restore_rng_state(rng_after_skip)
        self._logger.update_progress(0, description=f"epoch {run.epoch + 1}")
        window = 0
        for batch in it:
            if acc.device.type != "cpu":
                batch = send_to_device(batch, acc.device)
            window += 1
            closes = window == cfg.grad_accum or (n_batches is not None and run.batches_done + 1 == n_batches)
            # Without len() the last window of the epoch is unknown, so every micro-batch syncs.
            sync = closes or n_batches is None
            with contextlib.nullcontext() if sync else acc.no_sync(self._prepared):
                with acc.autocast():
                    loss, logs = self.task.training_step(batch)
                acc.backward(loss / cfg.grad_accum)
            self._micro_losses.append(loss.detach().float())
            for k, v in logs.items():
                self._micro_sums[k] = self._micro_sums.get(k, 0.0) + float(v)
            self._micro_count += 1
            run.batches_done += 1
            if closes:
                self._optimizer_step(window)
                window = 0
                if self._after_step():
                    return
        if run.batches_done == 0:  # an empty epoch would loop forever under max_steps
            raise MedadaptError(f"the task produced no training batches for epoch {run.epoch}",
                                fix="check the training split (is it empty?) and the batch size")
        if window:  # partial window left by an iterable without len()
            self._optimizer_step(window)
            if self._after_step():
                return
        # With val_every the user chose the validation points (as HF's eval_strategy="steps"): no extra
        # pass at each epoch's end, which at k = 1 (a few steps per epoch) would cost more than training.
        if cfg.val_every is None and run.last_val_step != run.step:
            self._validate()
        run.epoch += 1
        run.batches_done = 0
        self._save_last()

    def _optimizer_step(self, n_micro: int) -> None:
        cfg, run, acc = self.config, self._run, self.accelerator
        if n_micro < cfg.grad_accum:  # losses were divided by grad_accum: make it a mean over n_micro
            for p in self._params:
                if p.grad is not None:
                    p.grad.mul_(cfg.grad_accum / n_micro)
        loss = torch.stack(self._micro_losses).mean().item()
        self._micro_losses.clear()
        if not math.isfinite(loss):
            raise MedadaptError(
                f"the training loss became {loss} at step {run.step + 1}",
                fix="lower `lr`, set `clip_grad_norm`, or use `precision: fp32`; "
                "resume=True restarts from the last good checkpoint",
            )
        grad_norm = acc.clip_grad_norm_(self._params, cfg.clip_grad_norm) if cfg.clip_grad_norm else None
        lr = max(g["lr"] for g in self._optimizer.param_groups)  # lr of this update
        self._optimizer.step()
        self._scheduler.step()
        self._optimizer.zero_grad(set_to_none=True)
        run.step += 1
        self._step_sums["loss"] = self._step_sums.get("loss", 0.0) + loss
        if grad_norm is not None:
            self._step_sums["grad_norm"] = self._step_sums.get("grad_norm", 0.0) + float(grad_norm)
        self._step_count += 1
        self._last_lr = lr
        self._val_losses.append(loss)

    def _after_step(self) -> bool:
        """Log, validate, checkpoint; True when the epoch must end now."""
        cfg, run = self.config, self._run
        if run.step % cfg.log_every == 0:
            self._flush_train_logs()
        self._logger.update_progress(1, info=f"loss {self._val_losses[-1]:.4f}")
        if cfg.val_every and run.step % cfg.val_every == 0:
            self._validate()
            self._save_last()
        return self._should_stop()

    def _finish(self, trained: bool) -> None:
        run, acc = self._run, self.accelerator
        if trained:
            if run.last_val_step != run.step:
                self._validate()
            self._flush_train_logs()
            run.finished = True
            self._save_last()
            if run.monitor is None and self._main and hasattr(self.task, "save_best"):
                with self._plain_model():
                    self.task.save_best(self.out_dir)  # nothing to select on: keep the final weights
        acc.wait_for_everyone()
        restored = self.config.restore_best and self.best_path.is_file()
        if restored:
            best = load_checkpoint(self.best_path)
            load_trainable_state_dict(self._model, best["model"], path=self.best_path)
        if self._resumed and (restored or run.monitor is None) and self._main and hasattr(self.task, "save_best"):
            # a kill may have come between a checkpoint and the task's artifact: write it again from them
            with self._plain_model():
                self.task.save_best(self.out_dir)

    # ================================================================== validation
    def _validate(self) -> None:
        cfg, run, acc = self.config, self._run, self.accelerator
        modes = [(m, m.training) for m in self._model.modules()]
        with self._plain_model():
            self._model.eval()
            with torch.no_grad(), acc.autocast():
                raw = self.task.validate() or {}
        for m, training in modes:  # back to the task's own train/eval split
            m.training = training
        metrics = {str(k): float(v) for k, v in raw.items()}
        if acc.num_processes > 1:  # every rank takes the main rank's decision
            metrics = broadcast_object_list([metrics], from_process=0)[0]
        run.last_val_step = run.step
        self._logger.log(run.step, run.epoch, "val", metrics)
        record: dict[str, Any] = {"step": run.step, "epoch": run.epoch}
        if self._val_losses:
            record["train_loss"] = sum(self._val_losses) / len(self._val_losses)
            self._val_losses = []
        record.update(metrics)
        if metrics:
            name = run.monitor = self._monitor_name(metrics)
            value = metrics[name]
            if self._improved(value):
                run.best_metric, run.best_step, run.bad_validations = value, run.step, 0
                self._save_best()
            else:
                run.bad_validations += 1
                if cfg.patience is not None and run.bad_validations >= cfg.patience:
                    run.stopped_early = True
                    log.info("early stopping at step %d: no improvement of %s in %d validations",
                             run.step, name, cfg.patience)
            record["best"] = run.best_metric
            self._logger.update_progress(0, info=f"{name} {value:.4f} (best {run.best_metric})")
        run.history.append(record)
        log.info("step %d epoch %d: %s", run.step, run.epoch, metrics)

    def _monitor_name(self, metrics: Mapping[str, float]) -> str:
        name = self.config.monitor
        if name is None:
            if len(metrics) == 1:
                return next(iter(metrics))
            raise MedadaptError(
                f"validation returns several metrics ({', '.join(metrics)}) and `monitor` is not set",
                fix="set `monitor` (and `mode`) in the training configuration",
            )
        if name not in metrics:
            raise MedadaptError(
                f"monitored metric `{name}` is not among the validation metrics ({', '.join(metrics) or 'none'})",
                fix="set `monitor` to one of them",
            )
        return name

    def _improved(self, value: float) -> bool:
        best, delta = self._run.best_metric, self.config.min_delta
        if not math.isfinite(value):
            return False
        if best is None:
            return True
        return value > best + delta if self.config.mode == "max" else value < best - delta

    # ================================================================== saving
    def _save_best(self) -> None:
        acc, run = self.accelerator, self._run
        acc.wait_for_everyone()
        if self._main:
            save_checkpoint(
                self.best_path,
                {"model": trainable_state_dict(self._model), "metric": run.best_metric,
                 "monitor": run.monitor, "step": run.step},
            )
            if hasattr(self.task, "save_best"):
                with self._plain_model():
                    self.task.save_best(self.out_dir)
        acc.wait_for_everyone()

    def _save_last(self) -> None:
        """Write ``last.pt``; a mid-epoch one also keeps the RNG of the epoch start (for the replay)."""
        acc, run = self.accelerator, self._run
        acc.wait_for_everyone()
        if not self._main:
            return
        run_dict = asdict(run)
        run_dict["wall_time_s"] = run.wall_time_s + time.perf_counter() - self._session_start
        save_checkpoint(
            self.last_path,
            {
                "model": trainable_state_dict(self._model),
                "optimizer": self._optimizer.state_dict(),
                "scheduler": self._scheduler.state_dict(),
                "task": self.task.state_dict() if hasattr(self.task, "state_dict") else None,
                "rng": capture_rng_state(),
                "epoch_rng": self._epoch_rng if run.batches_done > 0 else None,
                "run": run_dict,
                "config": self.config.to_dict(),
            },
        )

    # ================================================================== helpers
    def _epoch_batches(self, epoch: int) -> Iterable[Any]:
        """Train mode first, so ``train_batches`` can put frozen parts (BatchNorm...) back in eval."""
        self._epoch_rng = capture_rng_state()
        self._prepared.train()
        batches = self.task.train_batches(epoch)
        acc = self.accelerator
        if acc.num_processes > 1 and isinstance(batches, DataLoader):
            batches = acc.prepare_data_loader(batches)  # shards the data across processes
        return batches

    def _total_steps(self, n_batches: int | None) -> int | None:
        cfg = self.config
        per_epoch = None if n_batches is None else math.ceil(n_batches / cfg.grad_accum)
        by_epochs = None if (per_epoch is None or cfg.epochs is None) else per_epoch * cfg.epochs
        candidates = [n for n in (cfg.max_steps, by_epochs) if n is not None]
        return min(candidates) if candidates else None

    @contextlib.contextmanager
    def _plain_model(self) -> Iterator[None]:
        """Show the task its unwrapped model (validation, saving), then the prepared one again."""
        previous = self.task.model
        self.task.model = self._model
        try:
            yield
        finally:
            self.task.model = previous

    def _reset_log_window(self) -> None:
        self._micro_sums: dict[str, float] = {}  # task logs, averaged per micro-batch
        self._micro_count = 0
        self._step_sums: dict[str, float] = {}  # loss and grad norm, averaged per step
        self._step_count = 0
        self._last_lr = None

    def _flush_train_logs(self) -> None:
        if not self._step_count:
            return
        values = {k: v / self._step_count for k, v in self._step_sums.items()}
        values["lr"] = self._last_lr
        values.update({k: v / max(1, self._micro_count) for k, v in self._micro_sums.items()})
        self._logger.log(self._run.step, self._run.epoch, "train", values)
        self._reset_log_window()

    def _warn_config_changes(self, saved: Mapping[str, Any]) -> None:
        current = self.config.to_dict()
        changed = sorted(k for k in current if k in saved and saved[k] != current[k])
        if changed:
            log.warning("resuming with changed settings: %s",
                        ", ".join(f"{k}: {saved[k]!r} -> {current[k]!r}" for k in changed))

    def _result(self) -> TrainResult:
        run = self._run
        peak_gpu = None
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            peak_gpu = torch.cuda.max_memory_allocated() / 2**20
        wall = run.wall_time_s + time.perf_counter() - self._session_start
        return TrainResult(
            best_metric=run.best_metric,
            best_step=run.best_step,
            monitor=run.monitor,
            epochs_run=run.epoch + (1 if run.batches_done > 0 else 0),
            steps=run.step,
            wall_time_s=wall,
            peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            peak_gpu_mb=peak_gpu,
            stopped_early=run.stopped_early,
            history=list(run.history),
        )


def _make_accelerator(cfg: TrainConfig) -> Accelerator:
    """One ``Accelerator`` per fit; CPU unless CUDA is there and allowed, bf16 only where supported."""
    use_cpu = cfg.device == "cpu" or not torch.cuda.is_available()
    precision = "bf16" if cfg.precision == "bf16" else "no"
    if precision == "bf16" and not use_cpu and not torch.cuda.is_bf16_supported():
        raise MedadaptError("this GPU does not support bf16", fix="set `precision: fp32`")
    shared = AcceleratorState._shared_state
    if shared and shared.get("_mixed_precision") not in (None, precision):
        # One process may train several models (notebooks, test suites, sweeps) with different
        # precision; accelerate keeps it in a process-wide singleton. The distributed state
        # (PartialState) is left untouched.
        AcceleratorState._reset_state(reset_partial_state=False)
    try:
        return Accelerator(cpu=use_cpu, mixed_precision=precision)
    except ValueError as err:
        raise MedadaptError(f"cannot set up {cfg.precision} training here ({err})",
                            fix="set `precision: fp32`") from None
