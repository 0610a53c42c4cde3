"""Partial-label supervised pretraining over several datasets (CLIP-driven universal model, SuPreM).

Public datasets each label a different subset of organs. A class template gives every organ one
output channel (sigmoid, so classes are independent) and says, per dataset, which stored label value
is which channel. In a dataset that does not label an organ, that organ's voxels are not background:
they are unknown. So the loss of a channel is computed only on the samples whose dataset labels it,
and masked out elsewhere (``TEMPLATE`` + per-class BCE and Dice in the reference code).

:class:`PartialLabelLoss` is that masked BCE + Dice (MONAI's ``DiceLoss`` / torch BCE, per sample and
channel, averaged over the labelled pairs only); :class:`PartialLabelTask` feeds several datasets
through the shared :class:`~medadapt.engine.trainer.Trainer`, each with its own label renumbering.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from monai.data import DataLoader, list_data_collate
from monai.losses import DiceLoss
from torch import Tensor, nn
from torch.utils.data import ConcatDataset

from medadapt.data.transforms3d import VolumePreprocessing, training_transforms
from medadapt.data.volume_dataset import volume_dataset
from medadapt.errors import MedadaptError

__all__ = ["ClassTemplate", "PartialLabelLoss", "PartialLabelTask"]


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
        gen = torch.Generator().manual_seed(self.seed + epoch)
        return DataLoader(
            self._data,
            batch_size=self.batch_size,
            shuffle=True,
            generator=gen,
            num_workers=0,
            collate_fn=list_data_collate,
        )

    def training_step(self, batch: Mapping[str, Any]) -> tuple[Tensor, Mapping[str, Tensor]]:
        logits = self.model(batch["image"])
        labelled = self.template.labelled(list(batch["dataset_id"]))
        return self.loss(logits, batch["label"], labelled)

    def validate(self) -> Mapping[str, float]:
        return {}
