"""``medadapt fit --task classify``: options → label selection → classifier + recipe → training → run folder.

The run folder mirrors the segmentation one (:mod:`medadapt.engine.sam_fit`):
``fit_config.json`` (every option, after defaults), ``split.json`` (the exact training and
validation image ids), ``adapter/`` (adapter-only safetensors + JSON, rebuilt by
:func:`medadapt.engine.fitted.load_trained_classifier`), ``checkpoint/`` (resume state),
``metrics.csv``, ``tb/`` and ``result.json`` (best validation AUROC, wall time, peak memory).

Options come from the command line (common options plus ``--set key=value`` strings) over an optional
YAML file; :class:`ClassifyFitOptions` validates them all at once, before anything is read or written,
so a typo costs no run folder. ``--resume`` reloads ``fit_config.json`` and ``split.json`` from the
run folder (command-line values still win), so ``medadapt fit --task classify --out RUN --resume``
alone continues a killed run on the same images.
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import ConfigDict, Field, ValidationError, field_validator, model_validator

from medadapt.data.fewshot import Split
from medadapt.engine.classify_task import ClassifyConfig, build_classify_task
from medadapt.engine.config import TrainConfig, read_options_yaml
from medadapt.engine.fit_template import FitHooks, loop_config, run_task_fit
from medadapt.engine.options import LoopOptions, LoraOptions, SampleOptions, ValidationOptions
from medadapt.engine.trainer import TrainResult
from medadapt.errors import MedadaptError
from medadapt.models.classification import is_random_init
from medadapt.run import RunFolder

DEFAULT_STEPS = 200
# Recipes whose lr default is lower: every pre-trained weight moves (MED-PEFT uses 1e-4 .. 5e-4 for full FT).
_FULL_LR, _PEFT_LR = 1e-4, 1e-3


class ClassifyFitOptions(SampleOptions, LoraOptions, LoopOptions, ValidationOptions):
    """Every option of ``medadapt fit --task classify`` (command line, ``--set`` or YAML): the shared parts
    (:mod:`medadapt.engine.options`; ``split``: another run's split.json or a .txt of training image ids)
    with the classifier's defaults, plus the backbone, data and recipe settings."""

    model_config = ConfigDict(extra="forbid")

    # common options of `medadapt fit`
    data: str
    out: str
    model: str = Field("litemedsam", description="backbone: litemedsam (bundled weights), vit_*_patch16, cnn_small")
    checkpoint: str | None = None
    method: str = Field("lora", description="recipe: lora (q/v LoRA), linear-probe, full, bias, norm, peft-lora...")
    shots: int | None = Field(None, ge=1, description="labelled images per class (instead of fraction)")
    test: float | None = Field(None, ge=0, le=0, description="0: every training image trains, no validation "
                               "(the data's own test split stays for evaluate)")
    classes: list[int] | None = None
    batch_size: int = Field(16, ge=1)
    lr: float | None = Field(None, gt=0, description="default 1e-3 (1e-4 for full fine-tuning of a pre-trained model)")
    cache_dir: str | None = None
    # task-specific (--set key=value)
    img_size: int | None = Field(None, ge=8)
    pool: Literal["gap", "cls"] = "gap"
    lora_alpha: float | None = Field(32.0, gt=0)
    lora_dropout: float = Field(0.1, ge=0, lt=1)
    layer_decay: float | None = Field(None, gt=0, le=1)
    drop_path: float = Field(0.1, ge=0, lt=1)
    optimizer: Literal["adamw", "sgd"] = "adamw"
    weight_decay: float = Field(0.05, ge=0)
    schedule: Literal["cosine", "poly", "constant"] = "cosine"
    warmup: int | None = Field(None, ge=0, description="warm-up steps; default 10 % of the steps")
    grad_accum: int = Field(1, ge=1)
    clip_grad_norm: float | None = Field(None, gt=0)
    augment: bool = True
    pos_weight: bool = True
    class_weights: bool = False
    uncertain_policy: Literal["ones", "zeros", "ignore"] | None = Field(None, description="CheXpert -1 labels")
    image_root: str | None = None
    frontal_only: bool | None = None
    train_split: str = "train"
    val_split: str = "val"
    val_data: str | None = None
    val_fraction: float = Field(0.1, gt=0, lt=1)
    eval_batch_size: int = Field(64, ge=1)
    cache_features: bool = True
    num_workers: int = Field(0, ge=0)

    @field_validator("*", mode="before")
    @classmethod
    def _none_strings(cls, v: Any) -> Any:
        """``--set layer_decay=none`` (strings arrive raw) means unset."""
        return None if isinstance(v, str) and v.strip().lower() in ("none", "null") else v

    @field_validator("target_modules", mode="before")
    @classmethod
    def _split_modules(cls, v: Any) -> Any:
        return [t.strip() for t in v.split(",") if t.strip()] if isinstance(v, str) else v

    @field_validator("classes", mode="before")
    @classmethod
    def _split_classes(cls, v: Any) -> Any:
        return [t.strip() for t in v.split(",") if t.strip()] if isinstance(v, str) else v

    @classmethod
    def build(cls, values: dict[str, Any], config_file: Path | None = None,
              saved: dict[str, Any] | None = None) -> ClassifyFitOptions:
        """``saved`` (a resumed run's fit_config.json) < YAML ``config_file`` < command-line ``values``."""
        merged: dict[str, Any] = {k: v for k, v in (saved or {}).items() if k != "recipe"}  # recipe: derived
        if config_file is not None:
            merged.update(read_options_yaml(config_file))
        merged.update({k.replace("-", "_"): v for k, v in values.items() if v is not None})
        known = list(cls.model_fields)
        unknown = [k for k in merged if k not in known]
        if unknown:
            close = difflib.get_close_matches(unknown[0], known, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise MedadaptError(f"unknown classification option '{unknown[0]}'{hint}.", path=config_file,
                                fix="valid options: " + ", ".join(known))
        try:
            return cls(**merged)
        except ValidationError as err:
            first = err.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "options"
            got = f" (got {first['input']!r})" if first.get("input") is not None and first["loc"] else ""
            raise MedadaptError(f"invalid classification option '{where}': {first['msg']}{got}.", path=config_file,
                                fix="see `medadapt fit --help`; task options are set with --set key=value") from None

    @model_validator(mode="after")
    def _one_selection(self) -> ClassifyFitOptions:
        if self.fraction is not None and self.shots is not None:
            raise ValueError("give fraction or shots, not both")
        return self

    def recipe(self) -> str:
        return "encoder-lora" if self.method == "lora" else self.method

    def learning_rate(self) -> float:
        if self.lr is not None:
            return self.lr

        return _FULL_LR if self.recipe() == "full" and not is_random_init(self.model, self.checkpoint) else _PEFT_LR

    def loader_options(self) -> dict[str, Any]:
        """Reader keyword arguments (only those set, so readers that take none are not disturbed)."""
        opts = {"uncertain": self.uncertain_policy, "image_root": self.image_root, "frontal_only": self.frontal_only}
        return {k: v for k, v in opts.items() if v is not None}




def _read_split_ids(path: Path) -> tuple[list[str], list[str] | None]:
    """(train ids, validation ids drawn from the training data or None) of a run's ``split.json``, or the
    training ids of a text file (one per line)."""
    if not path.is_file():
        raise MedadaptError("split file not found", path=path, fix="pass a run's split.json or a .txt of image ids")
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(path.read_text())
            ids = data.get("train")
        except (json.JSONDecodeError, AttributeError, UnicodeDecodeError):
            data, ids = {}, None
        if not isinstance(ids, list) or not ids:
            raise MedadaptError("the split file has no 'train' list of image ids", path=path,
                                fix="use the split.json a `medadapt fit --task classify` run wrote")
        pooled = (data.get("info") or {}).get("val_source") == VAL_FROM_TRAIN
        return [str(i) for i in ids], [str(i) for i in data.get("val") or []] if pooled else None
    ids = [ln.split()[0] for ln in path.read_text().splitlines() if ln.strip()]
    if not ids:
        raise MedadaptError("the split file lists no image ids", path=path)
    return ids, None


VAL_FROM_TRAIN = "train"  # split.json info: the validation images were drawn from the training data


def _split_info(opts: ClassifyFitOptions, task, *, pooled: bool) -> dict[str, Any]:
    """``info`` of a classifier's split (the schema all tasks share): its test images are the data's own
    test split, scored by ``medadapt evaluate --task classify``, so the split's ``test`` stays empty."""
    return {"dataset": opts.data, "seed": opts.seed, "fraction": opts.fraction, "shots": opts.shots,
            "train_class_counts": task.train.class_counts(),
            "val_source": VAL_FROM_TRAIN if pooled else "the data's validation split or a held-out share",
            "test": "none: every labelled image trains" if opts.test == 0 else "the data's own test split"}


def classify_config(opts: ClassifyFitOptions, train_ids: list[str] | None, val_ids: list[str] | None = None):

    try:
        return ClassifyConfig(
            data=opts.data, val_data=opts.val_data, train_split=opts.train_split, val_split=opts.val_split,
            label_fraction=opts.fraction or 1.0, shots=opts.shots,
            train_ids=train_ids, val_ids=val_ids, classes=opts.classes, val_fraction=opts.val_fraction, fraction_seed=opts.seed,
            backbone=opts.model, checkpoint=opts.checkpoint, pool=opts.pool, drop_path=opts.drop_path,
            img_size=opts.img_size, recipe=opts.recipe(), lora_rank=opts.lora_rank, lora_alpha=opts.lora_alpha,
            lora_dropout=opts.lora_dropout, target_modules=opts.target_modules, pos_weight=opts.pos_weight,
            class_weights=opts.class_weights, augment=opts.augment, layer_decay=opts.layer_decay,
            eval_batch_size=opts.eval_batch_size, cache_features=opts.cache_features, cache_dir=opts.cache_dir,
            loader_options=opts.loader_options(),
        )
    except ValidationError as err:  # ranges are checked by ClassifyFitOptions; this is a safety net
        raise MedadaptError(f"invalid classification option: {err.errors()[0]['msg']}") from None


def _train_config(opts: ClassifyFitOptions):

    return loop_config(
        opts, seed=opts.seed, default_steps=DEFAULT_STEPS, lr=opts.learning_rate(), optimizer=opts.optimizer,
        schedule=opts.schedule, warmup_steps=opts.warmup, warmup_ratio=None if opts.warmup is not None else 0.1,
        grad_accum=opts.grad_accum, val_every=opts.val_every, monitor="auroc", mode="max", patience=opts.patience,
        num_workers=opts.num_workers,
    )


def run_classify_fit(values: dict[str, Any], config: Path | None = None, resume: bool = False) -> dict[str, Any]:
    """Train one classifier adapter; returns ``result.json``'s content plus ``message`` (one line)."""

    out_value = values.get("out")
    saved, saved_split = None, None
    if resume:  # the saved options and split continue the run (command-line values still win)
        if not out_value:
            raise MedadaptError("--resume needs --out, the run folder to continue.")
        resumed = RunFolder(out_value)
        resumed.require_resumable()
        if resumed.fit_config_path.is_file():
            saved = resumed.read_fit_config()
        if resumed.split_path.is_file():
            saved_split = resumed.split_path
    opts = ClassifyFitOptions.build(values, config, saved)
    split_source = saved_split if saved_split is not None and not values.get("split") else (
        Path(opts.split) if opts.split else None)
    return run_task_fit(ClassifyFit(opts, split_source), resume=resume)


class ClassifyFit(FitHooks):
    """The classifier steps of :func:`~medadapt.engine.fit_template.run_task_fit`: the labelled images (a
    given or resumed split), then the classifier, its recipe and data in one :func:`build_classify_task`."""

    def __init__(self, opts: ClassifyFitOptions, split_source: Path | None):
        super().__init__(opts)
        self.split_source = split_source

    def prepare(self) -> None:
        train_ids, val_ids = _read_split_ids(self.split_source) if self.split_source is not None else (None, None)
        if self.opts.test == 0 and val_ids is None:
            val_ids = []  # every labelled image trains
        self.train_ids, self.val_ids = train_ids, val_ids

    def train_config(self) -> TrainConfig:
        self.lr = (config := _train_config(self.opts)).lr
        return config

    def build_task(self, model: None, config: TrainConfig):
        opts = self.opts
        # reads the data and builds the classifier: their errors come before anything is written
        task = build_classify_task(classify_config(opts, self.train_ids, self.val_ids), config)
        task.artifact_dir = self.run.adapter_dir.name
        # Epochs of a whole number of validation periods. Written when the trainer also validated at every
        # epoch's end (it no longer does with val_every); kept so that runs reproduce the benchmarked epochs.
        if not opts.epochs:
            period = (opts.val_every or config.max_steps) * opts.batch_size * opts.grad_accum
            task.samples_per_epoch = -(-len(task.train) // period) * period
        return task

    def write_inputs(self, task) -> None:
        opts = self.opts
        self.run.write_fit_config({**opts.model_dump(mode="json"), "recipe": opts.recipe(), "lr": self.lr})
        self.run.write_split(Split(task.train.ids, task.val.ids if task.val is not None else (), (),
                                   _split_info(opts, task, pooled=self.val_ids is not None)))

    def summarise(self, task, result: TrainResult, session_seconds: float) -> dict[str, Any]:
        opts, applied = self.opts, task.applied
        return {
            "model": opts.model, "method": opts.method, "recipe": opts.recipe(), "fraction": opts.fraction,
            "shots": opts.shots if not opts.fraction else None, "seed": opts.seed, "task": task.train.task,
            "class_names": task.train.class_names, "train_images": len(task.train),
            "train_class_counts": task.train.class_counts(),
            "val_images": len(task.val) if task.val is not None else 0,
            "input_size": task.model.input_spec.size, "trainable_params": applied.trainable,
            "total_params": applied.total, "lr": self.lr,
            "feature_cache": task.cache.stats() if task.cache else None,
            "adapter_bytes": self.run.adapter_bytes(),
            "fit_seconds": result.wall_time_s, "session_seconds": session_seconds,
            **{k: v for k, v in result.to_dict().items() if k != "history"},
        }

    def message(self, summary: dict[str, Any]) -> str:
        opts, best = self.opts, summary.get("best_metric")
        amount = f"{opts.fraction:.0%} of labels" if opts.fraction else (
            f"{opts.shots} per class" if opts.shots else "all labels")
        return (
            f"fit done: {opts.method} on {opts.model}, {amount} ({summary['train_images']} images), "
            f"{summary['trainable_params']:,} trainable parameters, best val AUROC "
            f"{'n/a' if best is None else f'{best:.4f}'} (step {summary.get('best_step')}), "
            f"{summary['fit_seconds']:.0f} s; adapter: {self.run.adapter_dir} "
            f"({(summary['adapter_bytes'] or 0) / 1024:.0f} KiB)"
        )
