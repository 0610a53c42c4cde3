"""``medadapt fit --task volumetric``: dataset spec → k-volume split → 3D model + head → recipe → run folder.

The run folder mirrors the 2D one (:mod:`medadapt.engine.sam_fit`): ``fit_config.json`` (every option
plus the resolved model, classes, ROI and preprocessing), ``split.json``, ``adapter/`` (adapter-only
safetensors + JSON), ``checkpoint/`` (resume state), ``metrics.csv``, ``tb/`` and ``result.json``.
:func:`medadapt.engine.fitted.load_fitted` rebuilds the adapted model from a run folder (used by ``medadapt evaluate``).

Model choices, in order of precedence: the options given, then the ``model.json`` written by
``medadapt pretrain`` beside ``--checkpoint`` (architecture, class names, preprocessing, ROI), then
the registry defaults. Heads: ``linear`` (1x1x1 probe, initialised from the pretrained classifier
rows of classes the checkpoint knows by name), ``spatial`` (residual 1x1x1 / 3x3x3 adapter + probe),
``text`` (controller-generated head driven by class-name embeddings; its class codes train) and
``pretrained`` (keep the checkpoint's classifier). Outputs are one sigmoid channel per class by
default (FSEFT, universal model); ``sigmoid=false`` gives a softmax with a background channel.
``method=lora`` picks the backbone's LoRA (fused-qkv LoRA on Swin UNETR, peft LoRA on the Conv3d
layers of a 3D U-Net encoder); training from scratch is ``method=full`` without ``--checkpoint``.

Transductive inference (``transductive=true``, frozen backbones only): the held-out volumes of the
split are the unlabelled queries; after ``warmup_epochs`` epochs the anatomical-proportion penalty
(:mod:`medadapt.engine.transductive`, one per class, averaged over queries) joins the loss. Their
labels are never read.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal

from pydantic import ConfigDict, Field, field_validator
from torch import nn

from medadapt.adapt.recipes import RecipeConfig
from medadapt.data.transforms3d import VolumePreprocessing, preprocess_transforms
from medadapt.data.volume_dataset import load_volume_dataset, volume_preprocessing, volume_records
from medadapt.engine.config import TrainConfig
from medadapt.engine.fit_template import FitHooks, loop_config, run_task_fit
from medadapt.engine.fitted import build_head_model, prep_from_fields
from medadapt.engine.options import (
    LoraOptions,
    OptimOptions,
    SplitOptions,
    VolumeArchOptions,
    build_options,
    merge_options,
)
from medadapt.engine.trainer import TrainResult
from medadapt.engine.transductive import ConstraintConfig, per_class_constraints
from medadapt.engine.volumetric_task import VolumetricTask
from medadapt.errors import MedadaptError
from medadapt.io.checkpoints import read_checkpoint
from medadapt.io.discovery import resolve_spec
from medadapt.io.hashing import file_sha256
from medadapt.models.volumetric import (
    get_volumetric_spec,
)

__all__ = [
    "VolumetricFitOptions",
    "build_head_model",
    "file_sha256",
    "prep_from_fields",
    "read_pretrain_meta",
    "run_volumetric_fit",
]

DEFAULT_STEPS = 200
PRETRAIN_META = "model.json"  # written by ``medadapt pretrain`` beside its checkpoint
ARCH_KEYS = ("feature_size", "depths", "num_heads", "filters", "strides")
_LIST_FIELDS = (
    "classes", "class_names", "pretrained_classes", "target_modules", *ARCH_KEYS[1:]
)


def _split_list(value: Any) -> Any:
    """``"32,32,32"`` → ``["32", "32", "32"]`` (pydantic then converts the items)."""
    if isinstance(value, str):
        return [v.strip() for v in value.replace(" ", "").split(",") if v.strip()]
    if isinstance(value, int | float):
        return [value]
    return value


class VolumetricFitOptions(SplitOptions, VolumeArchOptions, LoraOptions, OptimOptions):
    """Every option of ``medadapt fit --task volumetric`` (CLI, ``--set key=value`` or a YAML config)."""

    model_config = ConfigDict(extra="forbid")

    data: str
    out: str
    model: str | None = None  # default: the pretrain model.json's, else unet3d
    checkpoint: str | None = None
    method: str = "linear-probe"
    classes: list[int] | None = None  # label values to train (default: all)
    class_names: list[str] | None = None  # default: the dataset's names of those values
    modality: str = "auto"
    # head (the architecture: VolumeArchOptions)
    head: Literal["linear", "spatial", "text", "pretrained"] = "linear"
    adapter_kernel: Literal[1, 3] = 3
    sigmoid: bool = True
    text_encoder: str = "onehot"  # onehot | random | sentence | a sentence-transformers folder
    pretrained_classes: list[str] | None = None  # class names of the checkpoint's classifier rows
    # preprocessing and sampling
    roi: list[int] | None = None
    spacing: list[float] | None = None  # mm (RAS x, y, z); "native" keeps the input spacing
    num_samples: int = Field(2, ge=1)
    fixed_crops: int = Field(8, ge=1)
    pos: float = Field(2.0, ge=0)
    neg: float = Field(1.0, ge=0)
    overlap: float = Field(0.5, ge=0, lt=1)
    largest_component: bool = False
    # recipe (LoraOptions; target_modules may be one regular expression)
    target_modules: list[str] | str | None = None
    # transductive
    transductive: bool = False
    lambda_: float = Field(0.1, ge=0)
    margin: float = Field(0.3, ge=0)
    warmup_epochs: int = Field(50, ge=0)
    queries_per_step: int | None = Field(None, ge=1)  # random query volumes per step (None: all)
    # optimisation: the 3D fit's own defaults (the rest: OptimOptions)
    batch_size: int = Field(2, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-5, ge=0)
    warmup_steps: int = Field(0, ge=0)

    @field_validator(*_LIST_FIELDS, mode="before")
    @classmethod
    def _lists(cls, value: Any) -> Any:
        return _split_list(value)

    @field_validator("spacing", mode="before")
    @classmethod
    def _spacing(cls, value: Any) -> Any:
        if isinstance(value, str) and value.strip().lower() in ("native", "none", ""):
            return []  # marker: keep the native spacing
        value = _split_list(value)
        return value * 3 if isinstance(value, list) and len(value) == 1 else value

    @field_validator("roi", mode="before")
    @classmethod
    def _roi(cls, value: Any) -> Any:
        value = _split_list(value)
        return value * 3 if isinstance(value, list) and len(value) == 1 else value

    @classmethod
    def build(cls, values: dict, config_file: Path | None = None) -> VolumetricFitOptions:
        merged = merge_options(values, config_file)
        if "lambda" in merged:
            merged["lambda_"] = merged.pop("lambda")
        if merged.get("cache_dir") is not None:
            raise MedadaptError("--cache-dir is not used by --task volumetric (frozen-backbone features are "
                                "cached in memory).", fix="drop --cache-dir.")
        merged.pop("cache_dir", None)
        return build_options(cls, merged, config_file, "fit --task volumetric", did_you_mean=True)

    def arch(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ARCH_KEYS if getattr(self, k) is not None}


# ----------------------------------------------------------------------------- model


def read_pretrain_meta(checkpoint: str | Path | None) -> dict[str, Any]:
    """The ``model.json`` that ``medadapt pretrain`` writes beside its checkpoint ({} for foreign files)."""
    if checkpoint is None:
        return {}
    path = Path(checkpoint).parent / PRETRAIN_META
    if not path.is_file():
        return {}
    try:
        meta = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise MedadaptError(f"cannot read the pretraining description ({err})", path=path) from None
    return meta if isinstance(meta, dict) and meta.get("format") == "medadapt.pretrain" else {}


def _resolve(opts: VolumetricFitOptions, dataset, meta: dict[str, Any]) -> dict[str, Any]:
    """Model, classes, ROI and preprocessing of the run, from options, pretrain meta and defaults."""

    name = opts.model or meta.get("model") or "unet3d"
    spec = get_volumetric_spec(name)
    arch = {**(meta.get("arch") or {}), **opts.arch()} if name == meta.get("model") else opts.arch()
    available = dict(sorted(dataset.classes.items()))
    classes = opts.classes or sorted(available)
    missing = [c for c in classes if c not in available]
    if missing:
        raise MedadaptError(
            f"--classes {','.join(map(str, missing))} not in the dataset (its classes: "
            f"{', '.join(f'{k}={v}' for k, v in available.items())}).", path=opts.data,
            fix="choose classes the dataset labels.",
        )
    names = opts.class_names or [available[c] for c in classes]
    if len(names) != len(classes):
        raise MedadaptError(f"{len(names)} class_names for {len(classes)} classes.",
                            fix="give one name per trained class, in the order of --classes.")
    if opts.head == "text" and not opts.sigmoid:
        raise MedadaptError("the text-conditioned head has one sigmoid output per class.",
                            fix="drop sigmoid=false, or use head=linear.")
    roi = opts.roi or meta.get("roi") or list(spec.roi_size)
    if len(roi) != 3:
        raise MedadaptError(f"roi needs 1 or 3 sizes, got {roi}.", fix="e.g. --set roi=32")
    if opts.spacing is not None:
        spacing = None if opts.spacing == [] else list(opts.spacing)
    elif "spacing" in (meta.get("preprocessing") or {}):
        spacing = meta["preprocessing"]["spacing"]
    else:
        spacing = spec.preprocessing.spacing
    if spacing is not None and len(spacing) != 3:
        raise MedadaptError(f"spacing needs 1 or 3 values (mm), got {spacing}.", fix="e.g. --set spacing=1.5")
    base_prep = VolumePreprocessing(**{**_prep_fields(spec.preprocessing), "spacing": spacing})
    prep = volume_preprocessing(dataset, base_prep)
    method = opts.method
    target_modules = opts.target_modules
    if method == "lora":
        method = spec.lora_recipe
        if method == "peft-lora" and not target_modules:
            target_modules = spec.lora_targets  # one regular expression (a list would be module names)
    embedding_dim = None
    if opts.head == "text":
        embedding_dim = (
            max(len(names), 1) if opts.text_encoder == "onehot"
            else 256 if opts.text_encoder == "random" else None
        )
    return {
        "model": name,
        "arch": arch,
        "classes": classes,
        "class_names": list(names),
        "out_channels": len(classes) if opts.sigmoid else len(classes) + 1,
        "sigmoid": opts.sigmoid,
        "head": opts.head,
        "adapter_kernel": opts.adapter_kernel,
        "text_encoder": opts.text_encoder,
        "embedding_dim": embedding_dim,
        "pretrained_classes": opts.pretrained_classes or meta.get("classes"),
        "roi": [int(r) for r in roi],
        "preprocessing": _prep_fields(prep),
        "recipe": method,
        "target_modules": target_modules,
        "seed": opts.seed,
        "overlap": opts.overlap,
        "largest_component": opts.largest_component,
    }


def _prep_fields(prep) -> dict[str, Any]:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(prep).items()}


# ----------------------------------------------------------------------------- run


def run_volumetric_fit(values: dict, config: Path | None = None, resume: bool = False) -> dict:
    """Train one 3D adapter; returns the result dict (also ``result.json``) with a one-line ``message``."""
    return run_task_fit(VolumetricFit(VolumetricFitOptions.build(values, config)), resume=resume)


class VolumetricFit(FitHooks):
    """The 3D steps of :func:`~medadapt.engine.fit_template.run_task_fit`: the resolved model, classes, ROI
    and preprocessing, the head model, the volumetric task (with the transductive constraint when asked)."""

    def prepare(self) -> None:
        opts = self.opts
        if opts.checkpoint:
            read_checkpoint(opts.checkpoint)  # exists and is a state dict
        self.dataset = dataset = load_volume_dataset(opts.data, modality=opts.modality)
        self.resolved = _resolve(opts, dataset, read_pretrain_meta(opts.checkpoint))
        self.split = split = self.run.fit_split(dataset, split=opts.split, resume=self.resume, shots=opts.shots,
                                                fraction=opts.fraction, seed=opts.seed, n_val=opts.n_val, test=opts.test)
        if not split.train:
            raise MedadaptError("the split has no training volume.", path=opts.split or opts.data)
        if opts.transductive and not split.test:
            raise MedadaptError("transductive inference needs held-out (query) volumes; the split has none.")
        self.recipe = RecipeConfig(name=self.resolved["recipe"], lora_rank=opts.lora_rank, lora_alpha=opts.lora_alpha,
                                   target_modules=self.resolved["target_modules"])
        self.checkpoint = str(Path(opts.checkpoint).resolve()) if opts.checkpoint else None

    def train_config(self) -> TrainConfig:
        opts, val = self.opts, self.split.val
        return loop_config(opts, seed=opts.seed, default_steps=DEFAULT_STEPS, optimizer="adamw", schedule="cosine",
                           warmup_steps=opts.warmup_steps, val_every=opts.val_every if val else None,
                           monitor="dice" if val else None, mode="max", patience=opts.patience)

    def build_model(self) -> nn.Module:
        resolved = self.resolved
        model = build_head_model(resolved, self.checkpoint)
        if resolved["head"] == "text":  # the size of the class codes, to rebuild the head for evaluation
            resolved["embedding_dim"] = int(model.head.organ_embedding.shape[1])
        self.model = model
        return model

    def build_task(self, model: nn.Module, config: TrainConfig) -> VolumetricTask:
        opts, resolved, dataset, split, checkpoint = self.opts, self.resolved, self.dataset, self.split, self.checkpoint
        base = {"model": resolved["model"], "arch": resolved["arch"], "checkpoint": checkpoint,
                "checkpoint_sha256": file_sha256(checkpoint) if checkpoint else None}
        label_map = {c: i + 1 for i, c in enumerate(resolved["classes"])}
        prep = prep_from_fields(resolved["preprocessing"])
        task = VolumetricTask(
            model, volume_records(dataset, split.train), volume_records(dataset, split.val), prep,
            recipe=self.recipe, roi_size=resolved["roi"], sigmoid=opts.sigmoid, label_map=label_map,
            class_names=resolved["class_names"], batch_size=opts.batch_size, num_samples=opts.num_samples,
            pos=opts.pos, neg=opts.neg, overlap=opts.overlap, seed=opts.seed, fixed_crops=opts.fixed_crops,
            base=base, extra={"label_values": resolved["classes"], "largest_component": opts.largest_component},
        )
        if opts.transductive:
            epochs_total = _epochs_total(task, opts, config.max_steps)
            if not task.frozen_backbone:
                raise MedadaptError(
                    f"transductive inference needs a frozen backbone; recipe {self.recipe.name!r} trains it.",
                    fix="use method=linear-probe with head=linear or head=spatial.")
            if opts.warmup_epochs >= epochs_total:
                raise MedadaptError(
                    f"the proportion constraint starts after warmup_epochs={opts.warmup_epochs} epochs, but this run "
                    f"has {epochs_total} epoch(s).", fix=f"--set warmup_epochs={max(0, epochs_total // 2)} or train longer.",
                )
            pre_image = preprocess_transforms(prep, keys=("image",))
            queries = [pre_image({"image": r["image"]})["image"].as_tensor()[None]
                       for r in volume_records(dataset, split.test)]
            pre_label = preprocess_transforms(prep, label_map=label_map)
            support = [pre_label(r)["label"][0].numpy() for r in volume_records(dataset, split.train)]
            cfg = ConstraintConfig(weight=opts.lambda_, margin=opts.margin, warmup_epochs=opts.warmup_epochs,
                                   queries_per_step=opts.queries_per_step)
            task.set_transductive(per_class_constraints(
                model, queries, support, list(range(1, len(resolved["classes"]) + 1)), resolved["roi"],
                sigmoid=opts.sigmoid, config=cfg,
            ))
        return task

    def write_inputs(self, task: VolumetricTask) -> None:
        self.run.write_split(self.split)
        self.run.write_fit_config({**self.opts.model_dump(mode="json"), "data": resolve_spec(self.opts.data),
                                   "checkpoint": self.checkpoint, "resolved": self.resolved})

    def summarise(self, task: VolumetricTask, result: TrainResult, session_seconds: float) -> dict:
        opts, resolved, split = self.opts, self.resolved, self.split
        return {
            "task": "volumetric",
            "model": resolved["model"],
            "method": opts.method,
            "recipe": self.recipe.name,
            "head": opts.head,
            "transductive": opts.transductive,
            "shots": opts.shots if not opts.fraction else None,
            "fraction": opts.fraction,
            "seed": opts.seed,
            "classes": resolved["classes"],
            "class_names": resolved["class_names"],
            "train_cases": list(split.train),
            "val_cases": list(split.val),
            "test_cases": list(split.test),
            "trainable_params": task.applied.trainable,
            "total_params": task.applied.total,
            "encoder_trainable": task.applied.encoder_trainable,
            "cached_features": task.cache_features,
            "load_report": self.model.load_report.summary() if self.model.load_report else None,
            "adapter_bytes": self.run.adapter_bytes(),
            "fit_seconds": result.wall_time_s,  # summed over resumed sessions
            **{k: v for k, v in result.to_dict().items() if k != "history"},
        }

    def message(self, summary: dict) -> str:
        best = summary.get("best_metric")
        return (
            f"fit done: {summary['recipe']} / {self.opts.head} head{' + transductive' if self.opts.transductive else ''} "
            f"on k={len(summary['train_cases'])} volume(s), {summary['trainable_params']:,} trainable parameters, "
            f"best val DSC {'n/a' if best is None else f'{best:.4f}'}, {summary['fit_seconds']:.0f} s; adapter: "
            f"{self.run.adapter_dir} ({(summary['adapter_bytes'] or 0) / 1024:.0f} KiB)"
        )


def _epochs_total(task, opts: VolumetricFitOptions, max_steps: int | None) -> int:
    """Epochs the run will start (cached crops: a known number of batches per epoch)."""
    if opts.epochs is not None and max_steps is None:
        return opts.epochs
    if task._fixed is None:  # fresh crops: one batch per volume group
        per_epoch = math.ceil(len(task._train_ds) / opts.batch_size)
    else:
        per_epoch = math.ceil(len(task._fixed) / opts.batch_size)
    by_steps = math.ceil(max_steps / per_epoch) if max_steps else math.inf
    return int(min(by_steps, opts.epochs or math.inf))


