"""Image classification as a :class:`~medadapt.engine.trainer.TrainTask` ("Less could be better").

The task fine-tunes a classifier from :mod:`medadapt.models.classification` with a recipe from
:mod:`medadapt.adapt` (LoRA on q/v of every ViT block plus ``fc_norm`` and ``head`` by default, as
MED-PEFT), on a label fraction of the training split:

- loss: BCE-with-logits for binary / multi-label (``pos_weight = negatives / positives`` per class
  unless disabled; labels marked unknown, e.g. CheXpert ``ignore``, are masked out), cross-entropy for
  multi-class (optionally with balanced class weights);
- validation: mean AUROC over classes (``auroc``, the monitored metric), AP, accuracy, loss. The
  trainer sits left of :mod:`medadapt.evaluate` in the import order, so validation calls scikit-learn
  directly; final reports (bootstrap CIs, per-image CSV) are :mod:`medadapt.evaluate.classification`;
- frozen trunk (linear probe) without augmentation: each image's pooled feature is computed once
  (``forward_pooled``, in eval mode, through :class:`EmbeddingCache`, on disk with ``cache_dir`` so
  runs that share the backbone share it) and only ``forward_from_pooled`` runs per step;
- ``samples_per_epoch``: one "epoch" spans several passes over a small training set, so the
  trainer's end-of-epoch validation happens every ``val_every`` steps rather than every few steps;
- best model: an adapter artifact (``adapter.safetensors`` + ``adapter.json``) in the run folder,
  which :func:`medadapt.engine.fitted.load_trained_classifier` turns back into a model.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from sklearn.metrics import average_precision_score, roc_auc_score
from torch import Tensor, nn
from torch.utils.data import DataLoader

from medadapt.adapt import (
    AppliedRecipe,
    RecipeConfig,
    apply_recipe,
    save_adapter,
)
from medadapt.data.classification import (
    ClassificationDataset,
    ClassificationSplit,
    EpochPasses,
    ImageTransform,
    dataset_splits,
    holdout_split,
    load_classification_split,
    sample_fraction,
    sample_shots,
)
from medadapt.engine.config import TrainConfig
from medadapt.engine.embedding_cache import EmbeddingCache, module_fingerprint
from medadapt.engine.losses import ClassificationLoss, class_weights_from_labels
from medadapt.engine.optim import layer_decay_groups
from medadapt.engine.seed import loader_kwargs
from medadapt.errors import MedadaptError
from medadapt.io.hashing import file_sha256
from medadapt.models.classification import DEFAULT_BACKBONE, VIT_CONFIGS, build_classifier, is_random_init

# Recipes whose SAM names ("lora", "adapter") mean encoder + decoder: a classifier has no decoder.
_CLASSIFIER_ALIASES = {"lora": "encoder-lora", "adapter": "encoder-adapter"}


class ClassifyConfig(BaseModel):
    """Everything that defines a classification run besides the optimiser (``TrainConfig``)."""

    model_config = ConfigDict(extra="forbid")

    data: str = Field(description="dataset: MedMNIST .npz, CSV, split list, or NIH / RSNA folder")
    val_data: str | None = Field(None, description="validation dataset; None: `data` with `val_split`")
    train_split: str = "train"
    val_split: str = "val"
    label_fraction: float = Field(1.0, gt=0, le=1, description="share of training labels (0.01 = 1 %)")
    shots: int | None = Field(None, ge=1, description="images per class instead of label_fraction")
    train_ids: list[str] | None = Field(None, description="exact training images (ids), e.g. from a split file")
    val_ids: list[str] | None = Field(None, description="validation images taken from the training data by id "
                                      "([]: no validation); None: the data's val split or a held-out share")
    classes: list[int] | None = Field(None, description="multi-label: label columns to keep")
    val_fraction: float = Field(0.1, gt=0, lt=1, description="held out for validation when the data has no val split")
    fraction_seed: int = 0
    backbone: str = DEFAULT_BACKBONE
    checkpoint: str | None = None
    pool: Literal["gap", "cls"] = "gap"
    drop_path: float = Field(0.1, ge=0, lt=1)
    img_size: int | None = None
    recipe: str = "encoder-lora"
    lora_rank: int = Field(4, ge=1)
    lora_alpha: float | None = Field(32.0, gt=0, description="MED-PEFT: 32 (scaling 32 / rank)")
    lora_dropout: float = Field(0.1, ge=0, lt=1)
    target_modules: list[str] | str | None = None
    pos_weight: bool = True
    class_weights: bool = False
    augment: bool = True
    layer_decay: float | None = Field(None, gt=0, le=1)
    eval_batch_size: int = Field(64, ge=1)
    samples_per_epoch: int | None = Field(None, ge=1)
    cache_features: bool = Field(True, description="frozen trunk + no augmentation: encode each image once")
    cache_dir: str | None = None
    loader_options: dict[str, Any] = Field(default_factory=dict, description="extra keyword args for the reader")


def classifier_recipe(model: nn.Module, name: str = "encoder-lora", **options: Any) -> RecipeConfig:
    """A :class:`RecipeConfig` aimed at a classifier: encoder = ViT ``blocks`` (or the SAM
    ``image_encoder``), and the head (plus ``fc_norm`` when it has weights) always trained."""
    name = _CLASSIFIER_ALIASES.get(name, name)
    encoder = "image_encoder" if hasattr(model, "image_encoder") else "blocks"
    also = ["head"] + (["fc_norm"] if any(p.numel() for p in model.fc_norm.parameters()) else [])
    return RecipeConfig(name=name, encoder_attr=encoder, decoder_attr=[], head=["head"], also_train=also, **options)


class ClassificationTask:
    """TrainTask over a (label-fraction) training split and a validation split."""

    def __init__(self, model: nn.Module, train: ClassificationSplit, val: ClassificationSplit | None, *,
                 train_config: TrainConfig, recipe: RecipeConfig | None = None, pos_weight: bool = True,
                 class_weights: bool = False, augment: bool = True, layer_decay: float | None = None,
                 eval_batch_size: int = 64, base: Mapping[str, Any] | None = None,
                 samples_per_epoch: int | None = None, cache_features: bool = False,
                 cache_dir: str | Path | None = None):
        if train.num_outputs != _num_outputs(model):
            raise MedadaptError(f"the model has {_num_outputs(model)} outputs but the {train.task} data needs "
                                f"{train.num_outputs}", fix="build the classifier with split.num_outputs classes")
        if val is not None and (val.task != train.task or val.num_outputs != train.num_outputs):
            raise MedadaptError(f"validation data ({val.task}, {val.num_outputs} outputs) does not match training "
                                f"data ({train.task}, {train.num_outputs} outputs)", path=val.source or None)
        self.model = model
        self.train, self.val = train, val
        self.cfg = train_config
        self.recipe = recipe or classifier_recipe(model, "full")
        self.applied: AppliedRecipe = apply_recipe(model, self.recipe)
        self.layer_decay = layer_decay
        self.eval_batch_size = eval_batch_size
        self.base = dict(base or {"model": getattr(model, "backbone", type(model).__name__)})
        spec = model.input_spec
        self._train_tf = ImageTransform(spec.size, spec.normalize, spec.fit, augment=augment, seed=train_config.seed)
        self._eval_tf = ImageTransform(spec.size, spec.normalize, spec.fit)
        self._train_ds = ClassificationDataset(train, self._train_tf, seed=train_config.seed)
        self.samples_per_epoch = samples_per_epoch
        self.artifact_dir: str | None = None  # subfolder of the run folder for the adapter (None: the run folder)
        self.loss_fn = self._build_loss(pos_weight, class_weights)
        self.cache: EmbeddingCache | None = None
        self._feats: dict[str, Tensor] = {}
        if cache_features and not augment and self.trunk_frozen():
            self.cache = EmbeddingCache(self.model.forward_pooled, module_fingerprint(_trunk(model)),
                                        directory=cache_dir, dtype=torch.float32)

    def trunk_frozen(self) -> bool:
        """Only the parts after pooling train (``forward_from_pooled``): the features can be cached."""
        after = ("head.", "fc_norm.", "norm.")
        return hasattr(self.model, "forward_pooled") and all(n.startswith(after) for n in self.applied.trainable_names)

    @torch.no_grad()
    def pooled_features(self, which: str) -> Tensor:
        """Cached pooled features ``[N,D]`` of the ``train`` or ``val`` split (eval preprocessing)."""
        if which not in self._feats:
            split = self.train if which == "train" else self.val
            was_training = self.model.training
            self.model.eval()
            loader = DataLoader(ClassificationDataset(split, self._eval_tf), batch_size=self.eval_batch_size,
                                shuffle=False, num_workers=self.cfg.num_workers)
            self._feats[which] = torch.cat([self.cache.get_many(b["image"]) for b in loader])
            self.model.train(was_training)
        return self._feats[which]

    # ------------------------------------------------------------------ loss
    def _build_loss(self, pos_weight: bool, class_weights: bool) -> nn.Module:
        tr = self.train
        self.pos_weight, self._masked = None, tr.mask is not None
        if tr.task == "multiclass":
            w = class_weights_from_labels(torch.from_numpy(tr.labels), tr.num_classes) if class_weights else None
            return ClassificationLoss(multi_label=False, class_weights=w)
        if pos_weight:
            y, known = tr.targets(), tr.known()
            pos = ((y > 0.5) & known).sum(0)
            neg = (known.sum(0) - pos)
            self.pos_weight = torch.tensor(np.clip(neg / np.maximum(pos, 1), 0, 100.0), dtype=torch.float32)
        return ClassificationLoss(multi_label=True, pos_weight=self.pos_weight)

    def _loss(self, logits: Tensor, target: Tensor, known: Tensor) -> Tensor:
        if self.train.task == "multiclass" or not self._masked:
            return self.loss_fn(logits, target)
        # Unknown labels (CheXpert "ignore") must not count: per-element BCE, averaged over known ones.
        pw = None if self.pos_weight is None else self.pos_weight.to(logits.device)
        per = F.binary_cross_entropy_with_logits(logits.float(), target.float(), pos_weight=pw, reduction="none")
        return (per * known).sum() / known.sum().clamp_min(1.0)

    # ------------------------------------------------------------------ TrainTask
    def parameters_to_train(self) -> Iterable[nn.Parameter] | list[dict[str, Any]]:
        if self.layer_decay is None:
            return [p for p in self.model.parameters() if p.requires_grad]
        if not hasattr(self.model, "blocks"):
            raise MedadaptError("layer-wise lr decay is defined for ViT backbones only", fix="unset layer_decay")
        return layer_decay_groups(self.model.named_parameters(), decay=self.layer_decay,
                                  num_layers=len(self.model.blocks) + 1, weight_decay=self.cfg.weight_decay)

    def train_batches(self, epoch: int) -> DataLoader:
        kwargs = loader_kwargs(self.cfg.seed, epoch, self.cfg.num_workers)
        if self.cache is not None:
            feats = self.pooled_features("train")
            dataset: Any = _FeatureDataset(feats, self._train_ds._targets, self._train_ds._known)
        else:
            self._train_ds.epoch = epoch
            dataset = self._train_ds
        sampler = None
        if self.samples_per_epoch:
            sampler = EpochPasses(len(dataset), self.samples_per_epoch, kwargs.pop("generator"))
        return DataLoader(dataset, batch_size=self.cfg.batch_size, shuffle=sampler is None, sampler=sampler,
                          drop_last=False, **kwargs)

    def training_step(self, batch: Mapping[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        if "feature" in batch:  # cached trunk: single-process only (DDP would need the full forward)
            logits = self.model.forward_from_pooled(batch["feature"])
        else:
            logits = self.model(batch["image"])
        loss = self._loss(logits, batch["target"], batch["known"])
        return loss, {}

    @torch.no_grad()
    def predict(self, split: ClassificationSplit) -> np.ndarray:
        """Logits ``[N, num_outputs]`` for every image of ``split`` (eval preprocessing, eval mode)."""
        was_training = self.model.training
        self.model.eval()
        device = next(self.model.parameters()).device
        loader = DataLoader(ClassificationDataset(split, self._eval_tf), batch_size=self.eval_batch_size,
                            shuffle=False, num_workers=self.cfg.num_workers)
        out = [self.model(b["image"].to(device)).float().cpu() for b in loader]
        self.model.train(was_training)
        return torch.cat(out).numpy()

    def validate(self) -> dict[str, float]:
        if self.val is None:
            return {}
        if self.cache is not None:
            logits = self.model.forward_from_pooled(self.pooled_features("val")).float().numpy()
        else:
            logits = self.predict(self.val)
        return validation_metrics(self.val, logits)

    def save_best(self, out_dir: Path) -> None:
        out_dir = Path(out_dir) / self.artifact_dir if self.artifact_dir else out_dir
        save_adapter(self.model, out_dir, recipe=self.recipe, base=self.base, extra={"task": "classify", "classify": self.describe()})

    def describe(self) -> dict[str, Any]:
        """What is needed to rebuild and interpret the classifier (stored in ``adapter.json``)."""
        m = self.model
        return {"task": self.train.task, "class_names": self.train.class_names, "num_outputs": self.train.num_outputs,
                "backbone": getattr(m, "backbone", None), "pool": getattr(m, "pool", None),
                "input_spec": asdict(m.input_spec), "train_images": len(self.train),
                "trainable_params": self.applied.trainable, "total_params": self.applied.total}


class _FeatureDataset(torch.utils.data.Dataset):
    """Cached pooled features as training items (``i % N``: see ``EpochPasses``)."""

    def __init__(self, feats: Tensor, targets: Tensor, known: Tensor):
        self.feats, self.targets, self.known = feats, targets, known

    def __len__(self) -> int:
        return len(self.feats)

    def __getitem__(self, i: int) -> dict:
        i = i % len(self.feats)
        return {"feature": self.feats[i], "target": self.targets[i], "known": self.known[i], "index": i}


def _trunk(model: nn.Module) -> nn.Module:
    """A module holding (references to) the weights before pooling: the feature cache's key, which
    must not change with the head's initialisation, so runs with other seeds reuse the features."""
    holder = nn.Module()
    after = ("head.", "fc_norm.", "norm.")
    for i, (name, p) in enumerate(model.named_parameters()):
        if not name.startswith(after):
            holder.register_parameter(f"p{i}_{name.replace('.', '_')}", p)
    for i, (name, b) in enumerate(model.named_buffers()):
        if not name.startswith(after):
            holder.register_buffer(f"b{i}_{name.replace('.', '_')}", b)
    return holder


def _num_outputs(model: nn.Module) -> int:
    return int(model.head.out_features)


def validation_metrics(split: ClassificationSplit, logits: np.ndarray) -> dict[str, float]:
    """Mean AUROC / AP over classes with both labels present, accuracy and loss on ``split``."""
    y, known = split.targets(), split.known()
    t = torch.from_numpy(logits)
    if split.task == "multiclass":
        probs = torch.softmax(t, dim=1).numpy()
        onehot = np.eye(probs.shape[1], dtype=bool)[y]
        loss = F.cross_entropy(t, torch.from_numpy(y)).item()
        acc = float((probs.argmax(1) == y).mean())
        cols = [(onehot[:, j], probs[:, j]) for j in range(probs.shape[1])]
    else:
        probs = torch.sigmoid(t).numpy()
        per = F.binary_cross_entropy_with_logits(t, torch.from_numpy(y), reduction="none").numpy()
        loss = float((per * known).sum() / max(known.sum(), 1))
        acc = float(((probs >= 0.5) == (y > 0.5))[known].mean())
        cols = [((y[known[:, j], j] > 0.5), probs[known[:, j], j]) for j in range(y.shape[1])]
    aurocs, aps = [], []
    for yt, ys in cols:
        if 0 < yt.sum() < len(yt):
            aurocs.append(roc_auc_score(yt, ys))
            aps.append(average_precision_score(yt, ys))
    return {"auroc": float(np.mean(aurocs)) if aurocs else math.nan,
            "ap": float(np.mean(aps)) if aps else math.nan, "accuracy": acc, "val_loss": loss}


def load_classify_splits(cfg: ClassifyConfig) -> tuple[ClassificationSplit, ClassificationSplit]:
    """(training images after the label selection, validation images) as ``cfg`` defines them.

    Validation: ``val_data`` (its ``val_split``), else the data's own ``val_split``, else (a CSV or
    split list, which has no split names) a stratified ``val_fraction`` of the file held out with
    seed 0, the same for every training seed. Labels are then chosen from the training part:
    ``train_ids``, else ``shots`` per class, else a stratified ``label_fraction``.
    """
    opts = cfg.loader_options
    train = load_classification_split(cfg.data, cfg.train_split, **opts)
    if cfg.val_ids is not None:  # every labelled image trains, except those named for validation
        return _pooled_splits(cfg, train)
    if cfg.val_data is not None:
        val = load_classification_split(cfg.val_data, cfg.val_split, **opts)
    elif dataset_splits(cfg.data) is None:
        held = holdout_split(train.labels, cfg.val_fraction, seed=0)
        train, val = train.subset(np.flatnonzero(~held)), train.subset(np.flatnonzero(held))
    else:
        val = load_classification_split(cfg.data, cfg.val_split, **opts)
    if cfg.classes:
        train, val = train.select_classes(cfg.classes), val.select_classes(cfg.classes)
    mask = train.mask if train.task == "multilabel" else None
    if cfg.train_ids is not None:
        where = {k: i for i, k in enumerate(train.ids)}
        unknown = [k for k in cfg.train_ids if k not in where]
        if unknown:
            raise MedadaptError(f"{len(unknown)} training ids of the split are not in the training data "
                                f"(e.g. {unknown[0]!r})", path=cfg.data,
                                fix="use a split written for this dataset (a run's split.json)")
        train = train.subset([where[k] for k in cfg.train_ids])
    elif cfg.shots is not None:
        train = train.subset(sample_shots(train.labels, cfg.shots, cfg.fraction_seed, mask=mask))
    elif cfg.label_fraction < 1:
        train = train.subset(sample_fraction(train.labels, cfg.label_fraction, cfg.fraction_seed, mask=mask))
    return train, val


def _pooled_splits(cfg: ClassifyConfig, pool: ClassificationSplit) -> tuple[ClassificationSplit, ClassificationSplit | None]:
    """(train, val) both drawn from ``pool`` by id: ``val_ids`` validate, ``train_ids`` (default: the rest) train."""
    if cfg.classes:
        pool = pool.select_classes(cfg.classes)
    where = {k: i for i, k in enumerate(pool.ids)}
    unknown = [k for k in [*(cfg.train_ids or []), *(cfg.val_ids or [])] if k not in where]
    if unknown:
        raise MedadaptError(f"{len(unknown)} image ids of the split are not in the training data (e.g. {unknown[0]!r})",
                            path=cfg.data, fix="use a split written for this dataset (a run's split.json)")
    held = set(cfg.val_ids or [])
    val = pool.subset([where[k] for k in cfg.val_ids]) if cfg.val_ids else None
    rest = pool.subset([i for i, k in enumerate(pool.ids) if k not in held])
    if cfg.train_ids is not None:
        return pool.subset([where[k] for k in cfg.train_ids]), val
    mask = rest.mask if rest.task == "multilabel" else None
    if cfg.shots is not None:
        rest = rest.subset(sample_shots(rest.labels, cfg.shots, cfg.fraction_seed, mask=mask))
    elif cfg.label_fraction < 1:
        rest = rest.subset(sample_fraction(rest.labels, cfg.label_fraction, cfg.fraction_seed, mask=mask))
    return rest, val


def build_classify_task(cfg: ClassifyConfig, train_config: TrainConfig) -> ClassificationTask:
    """Read the data, draw the labels, build the backbone and the task (for ``medadapt fit``)."""
    if is_random_init(cfg.backbone, cfg.checkpoint) and cfg.recipe != "full":
        why = "without a checkpoint is randomly initialised" if cfg.backbone in VIT_CONFIGS else "has no pre-training"
        raise MedadaptError(
            f"{cfg.backbone} {why}: adapting part of it ({cfg.recipe}) cannot work",
            fix="use the 'full' recipe, pass the pre-trained ViT file (MRM.pth, a CXR-MAE checkpoint...) as "
                "checkpoint, or use the litemedsam backbone (bundled weights)",
        )
    train, val = load_classify_splits(cfg)
    model = build_classifier(cfg.backbone, train.num_outputs, checkpoint=cfg.checkpoint, pool=cfg.pool,
                             drop_path=cfg.drop_path, img_size=cfg.img_size)
    lora = {"lora_rank": cfg.lora_rank, "lora_alpha": cfg.lora_alpha, "lora_dropout": cfg.lora_dropout,
            "target_modules": cfg.target_modules}
    recipe = classifier_recipe(model, cfg.recipe, **lora)
    base = {"model": cfg.backbone, "image_size": model.input_spec.size, "pool": cfg.pool,
            "checkpoint": cfg.checkpoint, "checkpoint_sha256": file_sha256(cfg.checkpoint) if cfg.checkpoint else None}
    return ClassificationTask(model, train, val, train_config=train_config, recipe=recipe, pos_weight=cfg.pos_weight,
                              class_weights=cfg.class_weights, augment=cfg.augment, layer_decay=cfg.layer_decay,
                              eval_batch_size=cfg.eval_batch_size, base=base, samples_per_epoch=cfg.samples_per_epoch,
                              cache_features=cfg.cache_features, cache_dir=cfg.cache_dir)


