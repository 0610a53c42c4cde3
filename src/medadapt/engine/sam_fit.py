"""``medadapt fit`` for SAM-family models: dataset spec → few-shot split → recipe → training → run folder.

The run folder holds everything needed to reproduce and reuse the run:
``fit_config.json`` (every option), ``split.json`` (the exact cases), ``adapter/`` (adapter-only
safetensors + JSON: the artifact), ``checkpoint/`` (resume state), ``metrics.csv``, ``tb/``
(TensorBoard) and ``result.json`` (best validation DSC, wall time, peak memory).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import ConfigDict, Field, field_validator
from torch import nn

from medadapt.adapt.artifact import warm_start
from medadapt.adapt.class_prompts import attach_class_prompts
from medadapt.adapt.recipes import RecipeConfig, apply_recipe
from medadapt.data.datasets import load_segmentation_dataset
from medadapt.data.slices import iter_slices, with_empty_slices
from medadapt.engine.config import TrainConfig
from medadapt.engine.fit_template import FitHooks, loop_config, run_task_fit
from medadapt.engine.options import (
    LayoutOptions,
    LoraOptions,
    OptimOptions,
    SplitOptions,
    build_options,
    merge_options,
)
from medadapt.engine.sam_task import SamSegmentationTask, SamTaskSettings
from medadapt.engine.trainer import TrainResult
from medadapt.errors import MedadaptError
from medadapt.io.discovery import resolve_spec
from medadapt.models.registry import build_model, get_sam_spec
from medadapt.run import RunFolder

DEFAULT_STEPS = 200


class FitOptions(SplitOptions, LayoutOptions, LoraOptions, OptimOptions):
    """Every option of ``medadapt fit`` (also readable from a YAML config): the shared parts
    (:mod:`medadapt.engine.options`) plus the model, recipe, prompt and SAM training settings."""

    model_config = ConfigDict(extra="forbid")

    data: str
    out: str
    model: str = "litemedsam"
    checkpoint: str | None = None
    method: str = "decoder"
    prompt: Literal["box", "point", "hybrid", "click", "auto"] = "box"
    classes: list[int] | None = None
    # volumes: the axis sliced into 2D samples (None: the through-plane axis by spacing); the adapter
    # records it so that predict / evaluate slice the same way
    slice_axis: int | None = Field(None, ge=0, le=2)
    binary: bool | None = None
    # recipe (beyond LoraOptions)
    lora_dropout: float = 0.0
    adapter_ratio: float = 0.25
    adapter_scale: float = 0.5
    lora_blocks: list[int] | None = None
    adapter_blocks: list[int] | None = None
    frozen_stages: int = Field(0, ge=0)
    train_prompt_encoder: bool = False
    class_tokens: int = Field(2, ge=1)
    # auto mode: slices without any class added per labelled slice, and the class tokens' lr multiplier
    empty_slice_ratio: float = Field(0.5, ge=0)
    class_token_lr_scale: float = Field(10.0, gt=0)
    # optimisation beyond the shared loop options
    optimizer: Literal["adamw", "sgd"] = "adamw"
    schedule: Literal["cosine", "poly", "constant"] = "cosine"
    grad_accum: int = 1
    iou_weight: float = 0.0
    box_jitter: int = 5
    n_pos: int = 1
    n_neg: int = 0
    max_clicks: int = Field(3, ge=0)  # prompt click: corrective clicks per object, 0..max_clicks at random
    augment: bool = True
    # frozen-stage recipes: augment the images too (the frozen stem then runs on each augmented slice)
    augment_stem: bool = False
    augment_flips: bool = True  # off where classes are told apart by position (e.g. hippocampus head/body)
    augment_translate: float = Field(0.0, ge=0, le=0.5)  # shift up to this fraction of the slice size
    cache_dir: str | None = None
    # warm start: a run folder whose adapter (the same recipe) gives the trainable weights their start
    init_adapter: str | None = None
    # auto: OpenVINO fp32 when installed (the command line's factory decides; without one, torch)
    encoder_engine: Literal["auto", "torch", "onnxruntime", "openvino"] = "auto"
    max_val_slices: int = Field(64, ge=1)

    @field_validator("lora_blocks", "adapter_blocks", mode="before")
    @classmethod
    def _comma_list(cls, value):
        """``--set lora_blocks=4,5,6`` arrives as one string."""
        return [v.strip() for v in value.split(",") if v.strip()] if isinstance(value, str) else value

    @classmethod
    def build(cls, values: dict, config_file: Path | None = None) -> FitOptions:
        return build_options(cls, merge_options(values, config_file), config_file, "fit")


def load_fit_dataset(opts: FitOptions):
    """The dataset a fit reads, with its layout options (also for steps run on a finished run folder)."""

    return load_segmentation_dataset(
        opts.data, image_suffix=opts.image_suffix, label_suffix=opts.label_suffix, modality=opts.modality,
        label_dir=opts.label_dir, window=opts.window, binary=opts.binary,
    )


FrozenEncoderFactory = Callable[["FitOptions"], tuple[str, Callable]]


def run_fit(opts: FitOptions, *, resume: bool = False, frozen_encoder: FrozenEncoderFactory | None = None) -> dict:
    """Train one adapter; returns the result dict also written to ``result.json``.

    ``frozen_encoder(opts) -> (tag, encode) | None`` supplies the encoder that fills the embedding cache
    when ``opts.encoder_engine`` is not torch and the recipe leaves the encoder frozen (None: torch; the
    command line passes :func:`medadapt.deploy.backend.frozen_encoder`; the engine layer cannot import deploy).
    """
    return run_task_fit(SamFit(opts, frozen_encoder), resume=resume)


class SamFit(FitHooks):
    """The SAM-family steps of :func:`~medadapt.engine.fit_template.run_task_fit`: slices of the split's
    cases, the model with its recipe (and class prompts in automatic mode), the segmentation task."""

    def __init__(self, opts: FitOptions, frozen_encoder: FrozenEncoderFactory | None = None):
        super().__init__(opts)
        self.frozen_encoder = frozen_encoder

    def prepare(self) -> None:
        opts = self.opts
        dataset = load_fit_dataset(opts)
        self.split = self.run.fit_split(dataset, split=opts.split, resume=self.resume, shots=opts.shots,
                                        fraction=opts.fraction, seed=opts.seed, n_val=opts.n_val, test=opts.test)
        self.classes = classes = opts.classes or sorted(dataset.classes)
        auto = opts.prompt == "auto"  # prompt-free inference sees every slice, so training sees empty ones too
        train = list(iter_slices(dataset, self.split.train, axis=opts.slice_axis, classes=classes, include_empty=auto))
        val = list(iter_slices(dataset, self.split.val, axis=opts.slice_axis, classes=classes, include_empty=auto))
        if auto:
            train, val = (with_empty_slices(s, opts.empty_slice_ratio) for s in (train, val))
        if not any(np.any(s.label) for s in train):
            raise MedadaptError("the training cases hold no labelled slice of the chosen classes.", path=opts.data)
        if len(val) > opts.max_val_slices:  # evenly spaced, deterministic
            pick = np.linspace(0, len(val) - 1, opts.max_val_slices).round().astype(int)
            val = [val[i] for i in pick]
        self.train, self.val = train, val

    def train_config(self) -> TrainConfig:
        opts, val = self.opts, self.val
        return loop_config(
            opts, seed=opts.seed, default_steps=DEFAULT_STEPS, optimizer=opts.optimizer, schedule=opts.schedule,
            warmup_steps=opts.warmup_steps, grad_accum=opts.grad_accum, val_every=opts.val_every if val else None,
            monitor="val_dsc" if val else None, mode="max", patience=opts.patience,
        )

    def build_model(self) -> nn.Module:
        opts = self.opts
        model = build_model(opts.model, checkpoint=opts.checkpoint)
        also_train = []
        if opts.prompt == "auto":
            attach_class_prompts(model, len(self.classes), opts.class_tokens)
            also_train.append("class_prompts")
        self.recipe = RecipeConfig(
            name=opts.method, lora_rank=opts.lora_rank, lora_alpha=opts.lora_alpha, lora_dropout=opts.lora_dropout,
            target_modules=opts.target_modules, adapter_ratio=opts.adapter_ratio, adapter_scale=opts.adapter_scale,
            lora_blocks=opts.lora_blocks, adapter_blocks=opts.adapter_blocks, frozen_stages=opts.frozen_stages,
            train_prompt_encoder=opts.train_prompt_encoder, also_train=also_train,
        )
        self.applied = applied = apply_recipe(model, self.recipe)
        if opts.init_adapter:
            warm_start(model, RunFolder.resolve(opts.init_adapter).adapter_dir, self.recipe, base={"model": opts.model})
        if opts.augment_stem and not (applied.encoder_trainable and opts.frozen_stages):
            raise MedadaptError(
                f"augment_stem applies to recipes that train the encoder after frozen stages; '{opts.method}' "
                f"with frozen_stages={opts.frozen_stages} has no frozen stem to run on augmented slices.",
                fix="add --frozen-stages N to an encoder-side recipe (adapter, lora, bias, ...), or drop augment_stem "
                    "(recipes that train the whole encoder augment anyway; frozen-encoder ones jitter the prompts only).",
            )
        return model

    def build_task(self, model: nn.Module, config: TrainConfig) -> SamSegmentationTask:
        opts = self.opts
        base = {"model": opts.model, "image_size": get_sam_spec(opts.model).image_size}
        if opts.checkpoint:
            base["checkpoint"] = str(Path(opts.checkpoint).resolve())
        settings = SamTaskSettings(
            prompt=opts.prompt, classes=self.classes, batch_size=opts.batch_size, box_jitter=opts.box_jitter,
            n_pos=opts.n_pos, n_neg=opts.n_neg, max_clicks=opts.max_clicks, iou_weight=opts.iou_weight,
            augment=opts.augment,
            augment_stem=opts.augment_stem, augment_flips=opts.augment_flips, augment_translate=opts.augment_translate,
            cache_dir=Path(opts.cache_dir) if opts.cache_dir else None, seed=opts.seed, base=base,
            class_token_lr_scale=opts.class_token_lr_scale, slice_axis=opts.slice_axis,
        )
        if opts.encoder_engine != "torch" and not self.applied.encoder_trainable:
            if self.frozen_encoder is None and opts.encoder_engine != "auto":
                raise MedadaptError(f"encoder_engine '{opts.encoder_engine}' needs a frozen-encoder factory.",
                                    fix="run through `medadapt fit` (medadapt.pipeline.fit.fit_segment).")
            # None: torch
            settings.frozen_encoder = self.frozen_encoder(opts) if self.frozen_encoder is not None else None
        return SamSegmentationTask(model, get_sam_spec(opts.model), self.recipe, self.applied.encoder_trainable,
                                   self.train, self.val, settings)

    def write_inputs(self, task: SamSegmentationTask) -> None:
        self.run.write_split(self.split)
        self.run.write_fit_config({**self.opts.model_dump(mode="json"), "data": resolve_spec(self.opts.data)})

    def summarise(self, task: SamSegmentationTask, result: TrainResult, session_seconds: float) -> dict:
        opts, split, applied = self.opts, self.split, self.applied
        return {
            "model": opts.model,
            "method": opts.method,
            "prompt": opts.prompt,
            "shots": opts.shots if not opts.fraction else None,
            "fraction": opts.fraction,
            "seed": opts.seed,
            "init_adapter": opts.init_adapter,
            "classes": self.classes,
            "train_cases": list(split.train),
            "val_cases": list(split.val),
            "test_cases": list(split.test),
            "train_slices": len(self.train),
            "val_slices": len(self.val),
            "trainable_params": applied.trainable,
            "total_params": applied.total,
            "encoder_trainable": applied.encoder_trainable,
            "embedding_cache": task.cache.stats() if task.cache is not None else None,
            "stem_cache": task.stem_cache.stats() if task.stem_cache is not None else None,
            "encoder_engine": task.settings.frozen_encoder[0] if task.settings.frozen_encoder else "torch",
            "adapter_bytes": self.run.adapter_bytes(),
            "fit_seconds": result.wall_time_s,  # summed over resumed sessions
            # a fit repeats bitwise only at the same thread count and torch version (bench_determinism.py)
            "torch_threads": torch.get_num_threads(),
            "torch_version": torch.__version__,
            **{k: v for k, v in result.to_dict().items() if k != "history"},
        }
