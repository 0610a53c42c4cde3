"""Few-shot 3D segmentation as a :class:`~medadapt.engine.trainer.TrainTask` (FSEFT protocol).

The task owns a :class:`~medadapt.models.volumetric.VolumetricSegmenter`, applies a named recipe
(:func:`medadapt.adapt.recipes.apply_recipe`: full, decoder, encoder-lora, encoder-adapter,
peft-lora on Conv3d, bias, norm, head / linear-probe), trains on random crops of the k support
volumes and validates with a Gaussian-blended sliding window on the validation volumes.

Two data paths:

- the backbone trains (any recipe that touches it): MONAI random crops drawn afresh every epoch
  from the cached preprocessed volumes (seed + epoch, so a resumed run sees the same crops);
- the backbone is frozen (head / linear probe / spatial adapters): ``fixed_crops`` crops per volume
  are drawn once, their decoder features cached (:class:`~medadapt.models.volumetric.FeatureCache`),
  and every step runs the head only. The transductive proportion constraint
  (:mod:`medadapt.engine.transductive`) can then be added after its warm-up epochs.

Validation runs in the model's preprocessed space (MONAI ``sliding_window_inference`` and
``compute_dice``: the engine does not import ``infer`` / ``evaluate``); the reported ``dice`` is the
mean over classes and volumes, for model selection only. Final metrics on the original grid are for
:mod:`medadapt.infer.sliding_window` + :mod:`medadapt.metrics.segmentation`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.inferers import sliding_window_inference
from monai.metrics import compute_dice
from monai.networks.utils import one_hot
from torch import Tensor, nn

from medadapt.adapt.artifact import save_adapter
from medadapt.adapt.recipes import AppliedRecipe, RecipeConfig, apply_recipe
from medadapt.data.transforms3d import VolumePreprocessing, preprocess_transforms, training_transforms
from medadapt.data.volume_dataset import crop_loader, volume_dataset
from medadapt.engine.losses import SegmentationLoss
from medadapt.engine.transductive import ConstraintSet, ProportionConstraint
from medadapt.errors import MedadaptError
from medadapt.models.volumetric.heads import FeatureCache
from medadapt.models.volumetric.registry import VolumetricSegmenter
from medadapt.run import RunFolder

__all__ = ["VolumetricTask", "volumetric_recipe"]


def volumetric_recipe(model: VolumetricSegmenter, recipe: RecipeConfig | str, **changes: Any) -> RecipeConfig:
    """A recipe config whose encoder / decoder / head names point into ``model``.

    The decoder of a U-shaped network is every convolutional block outside the transformer encoder
    plus the head, so ``decoder`` trains all of them; the head alone is ``head`` / ``linear-probe``.
    """
    base = RecipeConfig(name=recipe) if isinstance(recipe, str) else recipe
    fields = base.model_dump()
    if "encoder_attr" not in base.model_fields_set:
        fields["encoder_attr"] = list(model.encoder_attrs)
    if "decoder_attr" not in base.model_fields_set:
        fields["decoder_attr"] = [*model.decoder_attrs, "head"]
    if "head" not in base.model_fields_set:
        fields["head"] = ["head"]
    fields.update(changes)
    return RecipeConfig(**fields)


class VolumetricTask:
    """Train a recipe of a 3D segmenter on a few labelled volumes.

    ``train_records`` / ``val_records`` are MONAI dicts (``image``, ``label``, ``case_id``; see
    :func:`medadapt.data.volume_dataset.volume_records`). ``sigmoid=False``: softmax over
    ``out_channels`` classes, channel 0 background, labels are class indices after ``label_map``.
    ``sigmoid=True``: one channel per foreground class ``1..C``. ``new_head=True`` trains the head
    whatever the recipe (a head for new classes must learn).
    """

    def __init__(
        self,
        model: VolumetricSegmenter,
        train_records: Sequence[Mapping[str, Any]],
        val_records: Sequence[Mapping[str, Any]],
        prep: VolumePreprocessing,
        *,
        recipe: RecipeConfig | str = "head",
        new_head: bool = True,
        roi_size: Sequence[int] | None = None,
        sigmoid: bool = False,
        label_map: Mapping[int, int] | None = None,
        class_names: Sequence[str] | None = None,
        batch_size: int = 1,
        num_samples: int = 2,
        pos: float = 2.0,
        neg: float = 1.0,
        flip_prob: float = 0.1,
        rot90_prob: float = 0.1,
        overlap: float = 0.5,
        seed: int = 0,
        cache_features: bool | None = None,
        fixed_crops: int = 4,
        transductive: ProportionConstraint | ConstraintSet | None = None,
        base: Mapping[str, Any] | None = None,
        extra: Mapping[str, Any] | None = None,
    ):
        self.model = model
        self._plain = model
        self.prep = prep
        self.roi_size = tuple(roi_size or model.spec.roi_size)
        model.check_input(self.roi_size)
        self.sigmoid = sigmoid
        self.out_channels = _out_channels(model)
        self.class_names = list(class_names or [f"class_{i}" for i in range(1, self._n_fg + 1)])
        self.batch_size, self.seed, self.overlap = batch_size, seed, overlap
        self.recipe = volumetric_recipe(model, recipe, also_train=["head"] if new_head else [])
        self.applied: AppliedRecipe = apply_recipe(model, self.recipe)
        self.frozen_backbone = not any(p.requires_grad for p in model.backbone.parameters())
        self.cache_features = self.frozen_backbone if cache_features is None else cache_features
        if self.cache_features and not self.frozen_backbone:
            raise MedadaptError(
                f"recipe {self.recipe.name!r} trains the backbone, so its features cannot be cached",
                fix="drop cache_features, or use a head-only recipe (head, linear-probe)",
            )
        self.transductive = None
        if transductive is not None:
            self.set_transductive(transductive)
        self.loss = SegmentationLoss(sigmoid=sigmoid, include_background=False, squared_pred=False)
        self.base = dict(base or {"model": model.spec.name})
        self.extra = dict(extra or {})
        self._epoch = self._step_in_epoch = 0

        train_tf = training_transforms(
            prep,
            self.roi_size,
            pos=pos,
            neg=neg,
            num_samples=num_samples,
            flip_prob=flip_prob,
            rot90_prob=rot90_prob,
            label_map=label_map,
        )
        self._train_tf = train_tf
        self._train_ds = volume_dataset(train_records, train_tf)
        self._val_ds = (
            volume_dataset(val_records, preprocess_transforms(prep, label_map=label_map))
            if val_records
            else None
        )
        self._fixed: list[dict[str, Any]] | None = None
        if self.cache_features:
            self._cache = FeatureCache(model.extract, model.backbone)
            self._fixed = self._draw_fixed_crops(fixed_crops)
            self._cache.get_many(
                [c["key"] for c in self._fixed], torch.cat([c["image"] for c in self._fixed])
            )

    def set_transductive(self, constraint: ProportionConstraint | ConstraintSet) -> None:
        """Add the proportion constraint (built on this task's model once its recipe froze the backbone)."""
        if not self.frozen_backbone:
            raise MedadaptError(
                "the transductive constraint needs a frozen backbone", fix="use a head-only recipe"
            )
        self.transductive = constraint

    @property
    def _n_fg(self) -> int:
        return self.out_channels if self.sigmoid else self.out_channels - 1

    # ------------------------------------------------------------------ TrainTask
    def parameters_to_train(self) -> Iterable[nn.Parameter]:
        return [p for p in self._plain.parameters() if p.requires_grad]

    def train_batches(self, epoch: int) -> Iterable[Any]:
        self._epoch = epoch
        if self._fixed is not None:
            order = np.random.default_rng(self.seed + epoch).permutation(len(self._fixed))
            items = [self._fixed[i] for i in order]
            batches = [items[i : i + self.batch_size] for i in range(0, len(items), self.batch_size)]
        else:
            self._train_tf.set_random_state(seed=self.seed + epoch)
            batches = crop_loader(self._train_ds, self.batch_size, self.seed + epoch)
        return _Numbered(batches, self)

    def training_step(self, batch: Any) -> tuple[Tensor, Mapping[str, float]]:
        if self._fixed is not None:  # list of cached crops: the head only
            feats = [self._cache.get(item["key"], item["image"]) for item in batch]
            stacked = tuple(torch.cat(parts) for parts in zip(*feats, strict=True))
            logits = self._plain.apply_head(*stacked)
            label = torch.cat([item["label"] for item in batch])
        else:
            logits = self.model(batch["image"])
            label = batch["label"]
        terms = self.loss.terms(logits, self._target(label))
        loss, logs = terms["loss"], {"dice_loss": terms["dice"].detach(), "ce": terms["ce"].detach()}
        if self.transductive is not None and self.transductive.active(self._epoch):
            queries = self.transductive.pick((self.seed, self._epoch, self._step_in_epoch))
            penalty, extra = self.transductive.loss(queries)
            loss = loss + penalty
            logs.update(extra)
        return loss, logs

    def validate(self) -> Mapping[str, float]:
        if self._val_ds is None:
            return {}
        model = self._plain
        per_case = []
        for i in range(len(self._val_ds)):
            item = self._val_ds[i]
            image = item["image"].as_tensor()[None]  # [1, 1, D, H, W]
            label = item["label"].as_tensor()[None].long()  # [1, 1, D, H, W]
            logits = sliding_window_inference(
                image, self.roi_size, 1, model, overlap=self.overlap, mode="gaussian"
            )
            pred = self._labels(torch.as_tensor(logits))
            n = self._n_fg + 1
            dice = compute_dice(
                one_hot(pred, n), one_hot(label.clamp(max=n - 1), n), include_background=False
            )
            per_case.append(dice[0].numpy())
        scores = np.nanmean(np.stack(per_case), axis=0)  # [n_fg]
        out = {"dice": float(np.nanmean(scores))}
        out.update({f"dice_{name}": float(s) for name, s in zip(self.class_names, scores, strict=False)})
        return out

    def save_best(self, out_dir: Path) -> None:
        save_adapter(
            self._plain,
            RunFolder(out_dir).adapter_dir,
            recipe=self.recipe,
            base=self.base,
            extra={
                "task": "volumetric",
                "roi_size": list(self.roi_size),
                "sigmoid": self.sigmoid,
                "classes": self.class_names,
                "preprocessing": asdict(self.prep),
                "head": type(self._plain.head).__name__,
                **self.extra,
            },
        )

    # ------------------------------------------------------------------ helpers
    def _target(self, label: Tensor) -> Tensor:
        # label: [B, 1, D, H, W] class indices -> softmax: the same; sigmoid: [B, C, D, H, W] one-hot
        label = label.long()
        if not self.sigmoid:
            return label
        return torch.cat([(label == c) for c in range(1, self.out_channels + 1)], dim=1).float()

    def _labels(self, logits: Tensor) -> Tensor:
        if not self.sigmoid:
            return logits.argmax(1, keepdim=True)
        prob = torch.sigmoid(logits)
        best, idx = prob.max(1, keepdim=True)
        return torch.where(best > 0.5, idx + 1, torch.zeros_like(idx))

    def _draw_fixed_crops(self, per_volume: int) -> list[dict[str, Any]]:
        """``per_volume`` random crops of each training volume, drawn once (seeded)."""
        self._train_tf.set_random_state(seed=self.seed)
        crops: list[dict[str, Any]] = []
        for v in range(len(self._train_ds)):
            while sum(1 for c in crops if c["key"][0] == v) < per_volume:
                for sample in self._train_ds[v]:
                    n = sum(1 for c in crops if c["key"][0] == v)
                    if n >= per_volume:
                        break
                    crops.append(
                        {"key": (v, n), "image": sample["image"][None], "label": sample["label"][None]}
                    )
        return crops


class _Numbered:
    """The batches of an epoch, telling the task the index of each one as it is drawn.

    The trainer replays (draws without training on) the batches before a mid-epoch checkpoint on
    resume, so numbering at draw time gives every batch the same index in a resumed run; the
    transductive query subset of a step is seeded with it. Keeps ``len()`` for the trainer.
    """

    def __init__(self, batches: Iterable[Any], task: VolumetricTask):
        self.batches, self.task = batches, task

    def __len__(self) -> int:
        return len(self.batches)  # type: ignore[arg-type]

    def __iter__(self):
        for index, batch in enumerate(self.batches):
            self.task._step_in_epoch = index
            yield batch


def _out_channels(model: VolumetricSegmenter) -> int:
    head = model.head
    if getattr(head, "num_classes", None) is not None:  # text-conditioned head
        return int(head.num_classes)
    for m in reversed(list(head.modules())):  # conv heads end with the classifier
        if isinstance(m, nn.Conv3d):
            return m.out_channels
    raise MedadaptError(f"cannot tell the number of outputs of head {type(head).__name__}")
