"""Partial-label supervised pretraining over several datasets (CLIP-driven universal model, SuPreM).

Public datasets each label a different subset of organs. A class template gives every organ one
output channel (sigmoid, so classes are independent) and says, per dataset, which stored label value
is which channel. In a dataset that does not label an organ, that organ's voxels are not background:
they are unknown. So the loss of a channel is computed only on the samples whose dataset labels it,
and masked out elsewhere (``TEMPLATE`` + per-class BCE and Dice in the reference code).

:class:`PartialLabelLoss` is that masked BCE + Dice (MONAI's ``DiceLoss`` / torch BCE, per sample and
channel, averaged over the labelled pairs only); :class:`PartialLabelTask` feeds several datasets
through the shared :class:`~medadapt.engine.trainer.Trainer`, each with its own label renumbering.
:func:`run_pretrain` is ``medadapt pretrain``: options, datasets (their fixed held-out volumes left out),
training, and a checkpoint in a published layout that ``fit --task volumetric --checkpoint`` loads.
Several GPUs: ``accelerate launch -m medadapt.cli.main pretrain ...`` (the trainer is accelerate-based).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from accelerate import PartialState
from monai.losses import DiceLoss
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import Tensor, nn
from torch.utils.data import ConcatDataset

from medadapt.data.fewshot import make_split, save_split
from medadapt.data.transforms3d import VolumePreprocessing, training_transforms
from medadapt.data.volume_dataset import (
    crop_loader,
    load_volume_dataset,
    volume_dataset,
    volume_preprocessing,
    volume_records,
)
from medadapt.engine.config import TrainConfig
from medadapt.engine.fit_template import FitHooks, loop_config, run_task_fit
from medadapt.engine.options import LoopOptions, VolumeArchOptions, build_options, merge_options
from medadapt.engine.trainer import TrainResult
from medadapt.errors import MedadaptError
from medadapt.io.atomic import atomic_path, write_json
from medadapt.io.checkpoints import read_checkpoint
from medadapt.io.discovery import resolve_spec
from medadapt.models.volumetric import (
    TextConditionedHead,
    build_volumetric,
    embed_class_names,
    get_volumetric_spec,
)

__all__ = [
    "ClassTemplate",
    "PartialLabelLoss",
    "PartialLabelTask",
    "PretrainDataset",
    "PretrainOptions",
    "run_pretrain",
]


@dataclass(frozen=True)
class ClassTemplate:
    """Global classes (one output channel each) and, per dataset, ``{stored label value: class name}``."""

    classes: tuple[str, ...]
    datasets: Mapping[str, Mapping[int, str]]

    def __post_init__(self) -> None:
        if len(set(self.classes)) != len(self.classes):
            raise MedadaptError("class template names must be unique")
        for ds, mapping in self.datasets.items():
            unknown = [n for n in mapping.values() if n not in self.classes]
            if unknown:
                raise MedadaptError(f"dataset {ds!r} maps to classes not in the template: {unknown}")

    def label_map(self, dataset: str) -> dict[int, int]:
        """Stored value -> global class id (1-based channel + 1); values not listed become 0."""
        return {int(v): self.classes.index(name) + 1 for v, name in self._get(dataset).items()}

    def labelled(self, datasets: Sequence[str]) -> Tensor:
        """``[B, C]`` bool: which channels each sample's dataset labels."""
        rows = [[name in set(self._get(d).values()) for name in self.classes] for d in datasets]
        return torch.tensor(rows, dtype=torch.bool)

    def _get(self, dataset: str) -> Mapping[int, str]:
        try:
            return self.datasets[dataset]
        except KeyError:
            raise MedadaptError(f"dataset {dataset!r} is not in the class template") from None


class PartialLabelLoss(nn.Module):
    """Per-channel sigmoid BCE + Dice, averaged over the (sample, channel) pairs that are labelled."""

    def __init__(self, dice_weight: float = 1.0, bce_weight: float = 1.0):
        super().__init__()
        self.dice_weight, self.bce_weight = dice_weight, bce_weight
        self.dice = DiceLoss(sigmoid=True, reduction="none")

    def forward(self, logits: Tensor, labels: Tensor, labelled: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        # logits [B, C, *S]; labels [B, 1, *S] global class ids (0 = background); labelled [B, C] bool
        b, c = logits.shape[:2]
        target = torch.cat([(labels == k) for k in range(1, c + 1)], dim=1).to(logits.dtype)  # [B, C, *S]
        bce = (
            F.binary_cross_entropy_with_logits(logits, target, reduction="none").flatten(2).mean(2)
        )  # [B, C]
        dice = self.dice(logits, target).reshape(b, c)  # [B, C]
        mask = labelled.to(logits.device, logits.dtype)
        n = mask.sum()
        if n == 0:
            raise MedadaptError("a batch with no labelled class: every class of its datasets is masked out")
        bce_m, dice_m = (bce * mask).sum() / n, (dice * mask).sum() / n
        loss = self.bce_weight * bce_m + self.dice_weight * dice_m
        return loss, {"bce": bce_m.detach(), "dice_loss": dice_m.detach()}


class PartialLabelTask:
    """Pretrain ``model`` (sigmoid outputs, one per template class) on several partially labelled datasets.

    ``records`` maps a dataset name of ``template`` to its MONAI records (``image``, ``label``).
    """

    def __init__(
        self,
        model: nn.Module,
        template: ClassTemplate,
        records: Mapping[str, Sequence[Mapping[str, Any]]],
        prep: VolumePreprocessing,
        roi_size: Sequence[int],
        *,
        batch_size: int = 2,
        num_samples: int = 1,
        pos: float = 2.0,
        neg: float = 1.0,
        seed: int = 0,
    ):
        self.model = model
        self.template = template
        self.loss = PartialLabelLoss()
        self.batch_size, self.seed = batch_size, seed
        parts, self._transforms = [], []
        for name, recs in records.items():
            tf = training_transforms(
                prep, roi_size, pos=pos, neg=neg, num_samples=num_samples, label_map=template.label_map(name)
            )
            self._transforms.append(tf)
            parts.append(volume_dataset([{**r, "dataset_id": name} for r in recs], tf))
        self._data = ConcatDataset(parts)

    def parameters_to_train(self) -> Iterable[nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def train_batches(self, epoch: int) -> Iterable[Any]:
        for i, tf in enumerate(self._transforms):
            tf.set_random_state(seed=self.seed + 1000 * epoch + i)
        return crop_loader(self._data, self.batch_size, self.seed + epoch)

    def training_step(self, batch: Mapping[str, Any]) -> tuple[Tensor, Mapping[str, Tensor]]:
        logits = self.model(batch["image"])
        labelled = self.template.labelled(list(batch["dataset_id"]))
        return self.loss(logits, batch["label"], labelled)

    def validate(self) -> Mapping[str, float]:
        return {}


# ----------------------------------------------------------------------------- ``medadapt pretrain``


class PretrainDataset(BaseModel):
    """One dataset of the mixture: its spec and ``{stored label value: template class}`` (None: its own names)."""

    model_config = ConfigDict(extra="forbid")

    data: str
    labels: dict[int, str] | None = None
    name: str | None = None


class PretrainOptions(VolumeArchOptions, LoopOptions):
    """Every option of ``medadapt pretrain`` (CLI, ``--set key=value`` or a YAML config)."""

    model_config = ConfigDict(extra="forbid")

    datasets: list[PretrainDataset] = Field(min_length=1)
    classes: list[str] | None = None  # template order (default: first appearance)
    out: str
    model: str = "unet3d"
    checkpoint: str | None = None
    head: Literal["linear", "text"] = "linear"
    text_encoder: Literal["onehot", "random"] = "onehot"
    roi: list[int] | None = None
    spacing: list[float] | None = None  # [] (from "native"): keep the input spacing
    modality: str = "auto"
    exclude_test: bool = True  # leave each dataset's fixed held-out volumes out (medadapt.data.fewshot)
    seed: int = 0
    num_samples: int = Field(1, ge=1)
    pos: float = Field(2.0, ge=0)
    neg: float = Field(1.0, ge=0)
    # optimisation: pretraining's own defaults (the rest: LoopOptions; no validation)
    batch_size: int = Field(2, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-5, ge=0)
    warmup_steps: int = Field(0, ge=0)

    @field_validator("classes", "depths", "num_heads", "filters", "strides", mode="before")
    @classmethod
    def _lists(cls, value: Any) -> Any:
        return [v.strip() for v in value.split(",") if v.strip()] if isinstance(value, str) else value

    @field_validator("roi", "spacing", mode="before")
    @classmethod
    def _triples(cls, value: Any) -> Any:
        if isinstance(value, str) and value.strip().lower() in ("native", "none"):
            return []
        if isinstance(value, str):
            value = [v for v in value.replace(" ", "").split(",") if v]
        if isinstance(value, int | float):
            value = [value]
        return value * 3 if isinstance(value, list) and len(value) == 1 else value


def run_pretrain(values: dict, config: Path | None = None, resume: bool = False) -> dict:
    """Partial-label pretraining; writes ``OUT/model.pt`` (+ ``model.json``) loadable by ``fit --checkpoint``.

    ``model.pt`` is a published layout, so :mod:`medadapt.models.volumetric.layouts` reads it like
    any other file: a MONAI state dict under ``state_dict`` (linear head: the MONAI output block,
    one sigmoid channel per template class), or for ``head=text`` the CLIP-driven universal layout
    (``net`` with ``module.backbone.`` and the text-conditioned head's ``module.controller`` ...).
    ``model.json`` records the architecture, class names, ROI and preprocessing for ``fit``.
    """
    opts = build_options(PretrainOptions, merge_options(values, config), config, "pretrain", did_you_mean=True)
    return run_task_fit(Pretrain(opts), resume=resume)


class Pretrain(FitHooks):
    """The steps of ``medadapt pretrain`` in :func:`~medadapt.engine.fit_template.run_task_fit`: the datasets
    and their class template, the backbone with one sigmoid channel per class, the partial-label task; the
    run's product is the published checkpoint and its ``model.json`` (no validation, no adapter)."""

    what = "pretraining run"

    def prepare(self) -> None:
        opts = self.opts
        if opts.checkpoint:
            read_checkpoint(opts.checkpoint)
        spec = get_volumetric_spec(opts.model)
        # datasets, class template, cases (every check before anything is written)
        loaded, mapping, splits = [], {}, {}
        for i, entry in enumerate(opts.datasets):
            ds = load_volume_dataset(entry.data, modality=opts.modality)
            name = entry.name or (ds.name if all(d.name != ds.name for d in loaded) else f"{ds.name}_{i}")
            labels = entry.labels if entry.labels is not None else dict(ds.classes)
            unknown = [v for v in labels if v not in ds.classes]
            if unknown:
                raise MedadaptError(f"dataset '{name}' has no label value(s) {unknown} (its classes: "
                                    f"{dict(sorted(ds.classes.items()))}).", path=entry.data,
                                    fix="map label values the dataset has, e.g. --labels 1=anterior")
            mapping[name] = {int(v): str(c) for v, c in labels.items()}
            split = make_split(ds, n_val=0) if opts.exclude_test else make_split(ds, n_val=0, test=None)
            splits[name] = split
            loaded.append(ds)
        order = list(dict.fromkeys(c for m in mapping.values() for c in m.values()))
        self.classes = classes = tuple(opts.classes or order)
        self.template = ClassTemplate(classes, mapping)  # refuses names outside the template
        modalities = {volume_preprocessing(ds).modality for ds in loaded}
        if len(modalities) > 1 and opts.modality == "auto":
            raise MedadaptError(f"the datasets mix modalities ({', '.join(sorted(modalities))}); one "
                                "intensity preprocessing is used for all.", fix="--set modality=MR (or CT)")
        self.spacing = spec.preprocessing.spacing if opts.spacing is None else (tuple(opts.spacing) or None)
        self.prep = volume_preprocessing(loaded[0], VolumePreprocessing(spacing=self.spacing))
        self.roi = tuple(opts.roi or spec.roi_size)
        self.arch = {k: getattr(opts, k) for k in ("feature_size", "depths", "num_heads", "filters", "strides")
                     if getattr(opts, k) is not None}
        self.mapping, self.splits, self.loaded = mapping, splits, loaded

    def train_config(self) -> TrainConfig:
        opts = self.opts
        return loop_config(opts, seed=opts.seed, default_steps=200, optimizer="adamw", schedule="cosine",
                           warmup_steps=opts.warmup_steps, device="auto")

    def build_model(self) -> nn.Module:
        opts = self.opts
        model = build_volumetric(opts.model, len(self.classes), checkpoint=opts.checkpoint, **self.arch)
        model.check_input(self.roi)
        if opts.head == "text":
            emb = embed_class_names(self.classes, opts.text_encoder, seed=opts.seed)
            model.head = TextConditionedHead(model.feature_channels, model.bottleneck_channels, emb)
        self.model = model
        return model

    def build_task(self, model: nn.Module, config: TrainConfig) -> PartialLabelTask:
        opts = self.opts
        self.records = {name: volume_records(ds, self.splits[name].train)
                        for name, ds in zip(self.mapping, self.loaded, strict=True)}
        return PartialLabelTask(model, self.template, self.records, self.prep, self.roi, batch_size=opts.batch_size,
                                num_samples=opts.num_samples, pos=opts.pos, neg=opts.neg, seed=opts.seed)

    def write_inputs(self, task: PartialLabelTask) -> None:
        for name, split in self.splits.items():
            save_split(self.out / "splits" / f"{name}.json", split)

    def summarise(self, task: PartialLabelTask, result: TrainResult, session_seconds: float) -> dict:
        """``model.json``: what ``fit --task volumetric --checkpoint`` needs to rebuild the model."""
        opts, mapping = self.opts, self.mapping
        return {
            "format": "medadapt.pretrain",
            "model": opts.model,
            "arch": self.arch,
            "classes": list(self.classes),
            "sigmoid": True,
            "head": opts.head,
            "roi": list(self.roi),
            "preprocessing": {"spacing": list(self.spacing) if self.spacing else None, "modality": self.prep.modality},
            "datasets": [{"name": n, "data": resolve_spec(d.data), "labels": {str(k): v for k, v in mapping[n].items()},
                          "cases": len(self.records[n]), "held_out": len(self.splits[n].test)}
                         for n, d in zip(mapping, opts.datasets, strict=True)],
            "options": opts.model_dump(mode="json"),
            "steps": result.steps,
            "fit_seconds": result.wall_time_s,  # summed over resumed sessions
            "peak_rss_mb": result.peak_rss_mb,
        }

    def save(self, summary: dict) -> None:
        """The published checkpoint ``model.pt`` and ``model.json`` (the main process of several)."""
        if PartialState().is_main_process:
            state = _published_state_dict(self.model, self.opts.head)
            with atomic_path(self.out / "model.pt") as tmp:
                torch.save(state, tmp)
            write_json(self.out / "model.json", summary)

    def message(self, summary: dict) -> str:
        opts, checkpoint = self.opts, self.out / "model.pt"
        n = sum(p.numel() for p in self.model.parameters())
        return (
            f"pretrain done: {opts.model} ({n:,} parameters, {opts.head} head) on "
            f"{', '.join(f'{k} ({len(v)} vol.)' for k, v in self.records.items())} for classes "
            f"{', '.join(self.classes)}, {summary['steps']} steps, {summary['fit_seconds']:.0f} s; checkpoint: "
            f"{checkpoint} (use fit --task volumetric --checkpoint {checkpoint})"
        )


def _published_state_dict(model: nn.Module, head: str) -> dict[str, dict[str, Tensor]]:
    """The model in a published layout: MONAI keys (head at its MONAI name) or the universal layout."""
    backbone = {k: v.detach().cpu().clone() for k, v in model.backbone.state_dict().items()}
    head_sd = {k: v.detach().cpu().clone() for k, v in model.head.state_dict().items()}
    if head == "text":
        net = {f"module.backbone.{k}": v for k, v in backbone.items()}
        net.update({f"module.{k}": v for k, v in head_sd.items()})
        return {"net": net}
    return {"state_dict": {**backbone, **{f"{model.spec.head_attr}.{k}": v for k, v in head_sd.items()}}}
