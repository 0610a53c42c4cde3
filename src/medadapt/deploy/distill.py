"""Embedding distillation of a SAM-family image encoder into a smaller student (``medadapt distill``).

The student encoder learns to reproduce the teacher's ``[256, 64, 64]`` image embedding (mean
squared error), as MobileSAM's decoupled distillation and the CVPR24 "MedSAM on Laptop"
entries did; the prompt encoder and mask decoder are the teacher's and are joined afterwards by
``medadapt merge --student`` (:mod:`medadapt.deploy.merge`).

- Inputs: each 2D slice is preprocessed for the student; the teacher sees either the same tensor
  (``teacher_input="student"``) or the slice preprocessed at its own resolution (``"own"``).
- Flips: every sample is flipped at random (horizontally, vertically) identically for both
  views. ``flip="embedding"`` flips the cached teacher embedding of the unflipped input (one
  teacher pass per slice: on a 64x64 grid of a 256 input, pixel ``i`` maps to cell ``i // 4``
  and its mirror to ``63 - i // 4``); ``flip="input"`` encodes the flipped teacher input too (the
  cache holds up to four views per slice).
- Teacher embeddings come from :class:`~medadapt.engine.embedding_cache.EmbeddingCache`
  (memory, or disk with ``cache_dir``), so the teacher runs once per view, not once per epoch.
- Training goes through the shared :class:`~medadapt.engine.trainer.Trainer` (resume, CSV and
  TensorBoard logs, ``checkpoint/``); the best student (lowest validation MSE) is written to
  ``RUN/student/`` as ``student.safetensors`` + ``student.json``.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import ConfigDict, Field
from torch import nn

import medadapt
from medadapt.data.datasets import load_segmentation_dataset
from medadapt.data.slices import iter_slices
from medadapt.engine.config import TrainConfig
from medadapt.engine.embedding_cache import EmbeddingCache, module_fingerprint
from medadapt.engine.fit_template import FitHooks, loop_config, run_task_fit
from medadapt.engine.options import LayoutOptions, OptimOptions, SplitOptions, build_options, merge_options
from medadapt.engine.trainer import TrainResult
from medadapt.errors import MedadaptError
from medadapt.io.atomic import atomic_path, write_json
from medadapt.io.discovery import resolve_spec
from medadapt.io.hashing import file_sha256
from medadapt.models.preprocess import preprocess_image
from medadapt.models.registry import build_model, get_sam_spec, list_models
from medadapt.models.sam import TinyViT
from medadapt.models.sam.student import init_from_teacher

STUDENT_DIR = "student"
STUDENT_TENSORS = "student.safetensors"
STUDENT_JSON = "student.json"
FORMAT = "medadapt.student"
FORMAT_VERSION = 1


class DistillOptions(SplitOptions, LayoutOptions, OptimOptions):
    """Every option of ``medadapt distill`` (also readable from a YAML config): the shared parts
    (:mod:`medadapt.engine.options`) with distillation's own defaults, plus teacher and student."""

    model_config = ConfigDict(extra="forbid")

    data: str
    out: str
    teacher: str = "litemedsam"
    teacher_checkpoint: str | None = None
    student: str = "litemedsam_student_s"
    init: Literal["teacher", "random"] = "teacher"  # seed the student with matching teacher blocks
    teacher_input: Literal["student", "own"] = "student"
    # Input side of the student (and of the teacher with teacher_input="student"); default: the
    # student's registered size. Smaller sides make quick smoke runs.
    image_size: int | None = Field(None, ge=16)
    flip: Literal["embedding", "input", "none"] = "embedding"
    # data (split: a split.json whose train part is distilled on)
    shots: int | None = Field(None, ge=1)
    slices: Literal["all", "labelled"] = "all"
    max_train_slices: int | None = Field(None, ge=1)
    max_val_slices: int = Field(32, ge=1)
    # optimisation: distillation's defaults (max_steps: 500 unless epochs is given)
    batch_size: int = Field(8, ge=1)
    lr: float = Field(5e-4, gt=0)
    warmup_steps: int = Field(20, ge=0)
    cache_dir: str | None = None

    @classmethod
    def build(cls, values: dict, config_file: Path | None = None) -> DistillOptions:
        return build_options(cls, merge_options(values, config_file), config_file, "distill")


DEFAULT_STEPS = 500


# ----------------------------------------------------------------------------- the task
def flip_views(x: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
    """Flip each ``[B, C, H, W]`` sample: ``flips[b] = (horizontal, vertical)`` booleans."""
    out = x.clone()
    for b, (h, v) in enumerate(flips.tolist()):
        dims = [d for d, on in ((-1, h), (-2, v)) if on]
        if dims:
            out[b] = x[b].flip(dims)
    return out


class DistillTask:
    """TrainTask: student encoder vs cached teacher embeddings (see the module docstring)."""

    def __init__(self, student: nn.Module, teacher: nn.Module, student_spec, teacher_spec, train_samples,
                 val_samples, *, batch_size: int = 8, flip: str = "embedding", teacher_input: str = "student",
                 seed: int = 0, cache_dir: Path | None = None, meta: dict | None = None):
        self.model = student  # the student *encoder*: [B, 3, S, S] -> [B, 256, 64, 64]
        self.teacher = teacher.eval()  # the teacher *encoder*
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.student_spec, self.teacher_spec = student_spec, teacher_spec
        self.train_samples, self.val_samples = list(train_samples), list(val_samples)
        self.batch_size, self.flip, self.seed = batch_size, flip, seed
        self.teacher_input = teacher_input
        self.meta = dict(meta or {})
        key = f"{teacher_spec.name}:{teacher_input}:{module_fingerprint(self.teacher)}"
        self.cache = EmbeddingCache(self._teacher_encode, key, directory=cache_dir)

    @torch.no_grad()
    def _teacher_encode(self, batch: torch.Tensor, chunk: int = 4) -> torch.Tensor:
        return torch.cat([self.teacher(batch[i : i + chunk]) for i in range(0, len(batch), chunk)])

    def _inputs(self, samples) -> tuple[torch.Tensor, torch.Tensor]:
        """Student and teacher input tensors ``[B, 3, S, S]`` (the same tensor when the specs agree)."""

        xs, ts = [], []
        for s in samples:
            x, _ = preprocess_image(s.image, self.student_spec)
            xs.append(x)
            ts.append(x if self.teacher_input == "student" else preprocess_image(s.image, self.teacher_spec)[0])
        return torch.stack(xs), torch.stack(ts)

    def targets(self, teacher_inputs: torch.Tensor, flips: torch.Tensor | None) -> torch.Tensor:
        """Teacher embeddings of (flipped) teacher inputs, from the cache."""
        if flips is None or self.flip == "none":
            return self.cache.get_many(teacher_inputs)
        if self.flip == "input":
            return self.cache.get_many(flip_views(teacher_inputs, flips))
        return flip_views(self.cache.get_many(teacher_inputs), flips)

    # -- TrainTask -----------------------------------------------------------------------------
    def parameters_to_train(self):
        return [p for p in self.model.parameters() if p.requires_grad]

    def train_batches(self, epoch: int) -> list[tuple[int, int, list[int]]]:
        """(epoch, batch index, sample indices); a step's flips derive from the first two (resumable)."""
        order = np.random.default_rng(self.seed * 1000 + epoch).permutation(len(self.train_samples)).tolist()
        bs = self.batch_size
        return [(epoch, i // bs, order[i : i + bs]) for i in range(0, len(order), bs)]

    def training_step(self, batch) -> tuple[torch.Tensor, dict[str, float]]:
        epoch, b, idx = batch
        x, t_in = self._inputs([self.train_samples[i] for i in idx])
        flips = None
        if self.flip != "none":
            rng = np.random.default_rng([self.seed, epoch, b])
            flips = torch.from_numpy(rng.integers(0, 2, size=(len(idx), 2)).astype(bool))
            x = flip_views(x, flips)
        target = self.targets(t_in, flips)  # [B, 256, 64, 64], no grad
        pred = self.model(x)
        if pred.shape != target.shape:
            raise MedadaptError(
                f"the student's embedding {tuple(pred.shape[1:])} and the teacher's {tuple(target.shape[1:])} differ",
                fix="pick a student and teacher with the same embedding grid, or --teacher-input student",
            )
        loss = F.mse_loss(pred.float(), target)
        return loss, {}

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Mean squared error and mean per-slice cosine similarity to the teacher, no flips."""
        if not self.val_samples:
            return {}
        return embedding_agreement(self.model, self, self.val_samples)

    def save_best(self, out_dir: str | Path) -> None:
        save_student(self.model, Path(out_dir) / STUDENT_DIR, self.meta)


@torch.no_grad()
def embedding_agreement(student: nn.Module, task: DistillTask, samples, batch: int = 8) -> dict[str, float]:
    """``val_mse`` (mean over all elements) and ``val_cos`` (mean over slices) of student vs teacher."""
    was_training = student.training
    student.eval()
    sq, n, cos = 0.0, 0, []
    for i in range(0, len(samples), batch):
        x, t_in = task._inputs(samples[i : i + batch])
        pred, target = student(x).float(), task.targets(t_in, None)
        sq += float(((pred - target) ** 2).sum())
        n += target.numel()
        cos += F.cosine_similarity(pred.flatten(1), target.flatten(1), dim=1).tolist()
    student.train(was_training)
    return {"val_mse": sq / max(1, n), "val_cos": float(np.mean(cos)) if cos else float("nan")}


# ----------------------------------------------------------------------------- student artifact
def save_student(encoder: nn.Module, out_dir: str | Path, meta: dict[str, Any]) -> Path:
    """Write the student encoder's state dict (``student.safetensors``) and ``student.json``."""
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    state = {k: v.detach().to("cpu").contiguous() for k, v in encoder.state_dict().items()}
    path = out_dir / STUDENT_TENSORS
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={"format": "pt", "medadapt": FORMAT})
    cfg = getattr(encoder, "cfg", None)
    write_json(out_dir / STUDENT_JSON, {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "medadapt_version": medadapt.__version__,
        **meta,
        "encoder_config": dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else None,
        "params": sum(p.numel() for p in encoder.parameters()),
        "files": {STUDENT_TENSORS: {"sha256": file_sha256(path), "bytes": path.stat().st_size}},
    })
    return out_dir


def student_dir(path: str | Path) -> Path:
    """Accept a distill run folder (``RUN/student``) or the student folder itself."""
    path = Path(path)
    for cand in (path / STUDENT_DIR, path):
        if (cand / STUDENT_JSON).is_file():
            return cand
    raise MedadaptError("is not a `medadapt distill` run or student folder (no student/student.json inside).",
                        path=path, fix="pass the --out folder of `medadapt distill` once it has saved a student.")


def load_student(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(encoder state dict, metadata) of a saved student; checks the format and checksum."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = student_dir(path)
    try:
        meta = json.loads((folder / STUDENT_JSON).read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise MedadaptError(f"{STUDENT_JSON} cannot be read ({err}).", path=folder / STUDENT_JSON) from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise MedadaptError(f"{STUDENT_JSON} is not a medadapt student description.", path=folder / STUDENT_JSON)
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise MedadaptError("the student was saved by a newer medadapt.", path=folder, fix="upgrade medadapt")
    tensors = folder / STUDENT_TENSORS
    want = meta.get("files", {}).get(STUDENT_TENSORS, {}).get("sha256")
    if not tensors.is_file() or (want and file_sha256(tensors) != want):
        raise MedadaptError(f"{STUDENT_TENSORS} is missing or does not belong to {STUDENT_JSON}.", path=tensors,
                            fix="run `medadapt distill --resume` to write the student again")
    try:
        return load_file(str(tensors)), meta
    except (SafetensorError, OSError) as err:
        raise MedadaptError(f"cannot read {STUDENT_TENSORS} ({err})", path=tensors) from None


# ----------------------------------------------------------------------------- models
def build_student(name: str, image_size: int | None = None) -> nn.Module:
    """A SAM model whose image encoder is a registered student (random weights)."""

    spec = get_sam_spec(name)
    if spec.encoder != "student":
        names = ", ".join(s.name for s in list_models() if s.encoder == "student")
        raise MedadaptError(f"'{spec.name}' is not a student model.", fix=f"use one of: {names}")
    return build_model(spec.name, pretrained=False, image_size=image_size)


def build_teacher(name: str, checkpoint: str | Path | None, image_size: int | None = None) -> nn.Module:

    return build_model(name, checkpoint=checkpoint, image_size=image_size)


# ----------------------------------------------------------------------------- the run
def run_distill(opts: DistillOptions, *, resume: bool = False) -> dict:
    """Distil ``opts.teacher``'s image encoder into ``opts.student``; returns ``result.json``'s content."""
    return run_task_fit(Distill(opts), resume=resume)


class Distill(FitHooks):
    """The steps of ``medadapt distill`` in :func:`~medadapt.engine.fit_template.run_task_fit`: slices of the
    split's cases, the student (seeded with matching teacher blocks) and the teacher, the embedding task."""

    def prepare(self) -> None:
        opts = self.opts
        self.student_spec, self.teacher_spec = get_sam_spec(opts.student), get_sam_spec(opts.teacher)
        if opts.image_size is not None:
            self.student_spec = dataclasses.replace(self.student_spec, image_size=opts.image_size)
        dataset = load_segmentation_dataset(opts.data, image_suffix=opts.image_suffix, label_suffix=opts.label_suffix,
                                            modality=opts.modality, label_dir=opts.label_dir, window=opts.window)
        self.split = self.run.fit_split(dataset, split=opts.split, resume=self.resume, shots=opts.shots,
                                        fraction=opts.fraction, seed=opts.seed, n_val=opts.n_val)
        include_empty = opts.slices == "all"
        train = list(iter_slices(dataset, self.split.train, include_empty=include_empty))
        if not train:
            raise MedadaptError("the training cases hold no slice to distil on.", path=opts.data)
        self.train = _evenly(train, opts.max_train_slices)
        self.val = _evenly(list(iter_slices(dataset, self.split.val, include_empty=include_empty)),
                           opts.max_val_slices)

    def train_config(self) -> TrainConfig:
        opts, val = self.opts, self.val
        return loop_config(opts, seed=opts.seed, default_steps=DEFAULT_STEPS, optimizer="adamw", schedule="cosine",
                           warmup_steps=opts.warmup_steps, val_every=opts.val_every if val else None,
                           monitor="val_mse" if val else None, mode="min", patience=opts.patience)

    def build_model(self) -> nn.Module:
        """The student encoder (the teacher is kept beside it); both built after seeding."""
        opts = self.opts
        student_model = build_student(opts.student, opts.image_size)
        size = None if opts.teacher_input == "own" else self.student_spec.image_size
        self.teacher = build_teacher(opts.teacher, opts.teacher_checkpoint, size).image_encoder
        if self.teacher.embedding_size != student_model.image_encoder.embedding_size:
            raise MedadaptError(
                f"the teacher's embedding grid ({self.teacher.embedding_size}) differs from the "
                f"student's ({student_model.image_encoder.embedding_size}) with --teacher-input {opts.teacher_input}",
                fix="use --teacher-input own (the teacher at its own resolution), or another teacher",
            )
        student = student_model.image_encoder
        self.copied = []
        if opts.init == "teacher" and isinstance(self.teacher, TinyViT):
            self.copied = init_from_teacher(student, self.teacher)
        return student

    def build_task(self, model: nn.Module, config: TrainConfig) -> DistillTask:
        opts = self.opts
        self.meta = {
            "student": self.student_spec.name,
            "teacher": self.teacher_spec.name,
            "teacher_checkpoint": str(Path(opts.teacher_checkpoint).resolve()) if opts.teacher_checkpoint else None,
            "image_size": self.student_spec.image_size,
            "teacher_input": opts.teacher_input,
            "flip": opts.flip,
            "train_cases": list(self.split.train),
            "train_slices": len(self.train),
        }
        return DistillTask(model, self.teacher, self.student_spec, self.teacher_spec, self.train, self.val,
                           batch_size=opts.batch_size, flip=opts.flip, teacher_input=opts.teacher_input,
                           seed=opts.seed, cache_dir=Path(opts.cache_dir) if opts.cache_dir else None, meta=self.meta)

    def write_inputs(self, task: DistillTask) -> None:
        self.run.write_split(self.split)
        write_json(self.out / "distill_config.json", {**self.opts.model_dump(mode="json"),
                                                       "data": resolve_spec(self.opts.data)})

    def before_fit(self, task: DistillTask) -> None:
        """The untrained student's agreement with the teacher (a new run with validation slices only)."""
        self.initial = embedding_agreement(task.model, task, self.val) if self.val and not self.resume else {}

    def summarise(self, task: DistillTask, result: TrainResult, session_seconds: float) -> dict:
        return {
            **{k: v for k, v in self.meta.items() if k != "train_cases"},
            "train_cases": len(self.split.train),
            "val_slices": len(self.val),
            "init_tensors_from_teacher": len(self.copied),
            "initial_val_mse": self.initial.get("val_mse"),
            "initial_val_cos": self.initial.get("val_cos"),
            "student_params": sum(p.numel() for p in task.model.parameters()),
            "teacher_params": sum(p.numel() for p in self.teacher.parameters()),
            "teacher_cache": task.cache.stats(),
            "distill_seconds": session_seconds,
            **{k: v for k, v in result.to_dict().items() if k != "history"},
        }


def _evenly(items: list, n: int | None) -> list:
    """At most ``n`` items, evenly spaced and deterministic."""
    if n is None or len(items) <= n:
        return items
    pick = np.linspace(0, len(items) - 1, n).round().astype(int)
    return [items[i] for i in pick]
