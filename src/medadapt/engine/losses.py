"""Training losses for segmentation (2D/3D) and classification.

Segmentation is Dice + cross-entropy, as MedSAM / LiteMedSAM / nnU-Net train:

* ``sigmoid=True`` (binary or multi-label masks, e.g. SAM's per-prompt masks): MONAI ``DiceLoss``
  plus ``BCEWithLogitsLoss``. MONAI ``DiceCELoss`` is not used here because for more than one
  channel it switches to softmax cross-entropy, which is wrong for independent sigmoid masks.
* ``sigmoid=False`` (one softmax over classes, e.g. 3D organ labels): MONAI ``DiceCELoss``.

SAM's IoU head is trained with the MSE between its predicted IoU and the IoU of the thresholded
predicted mask with the ground truth (:class:`IoUHeadLoss`); :func:`mask_iou` is hand-written because
MONAI's ``compute_iou`` returns NaN for two empty masks, where SAM training needs 1.0.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss, DiceLoss
from monai.networks.utils import one_hot
from torch import Tensor, nn


def mask_iou(logits: Tensor, target: Tensor, threshold: float = 0.0) -> Tensor:
    """IoU of ``logits > threshold`` with ``target > 0.5`` per sample and channel.

    logits, target: [B, C, *spatial] -> [B, C]. Two empty masks have IoU 1. ``threshold=0`` on
    logits is ``sigmoid > 0.5``.
    """
    dims = tuple(range(2, logits.ndim))
    pred = logits > threshold
    gt = target > 0.5
    inter = (pred & gt).sum(dims).float()
    union = (pred | gt).sum(dims).float()
    return torch.where(union > 0, inter / union.clamp_min(1.0), torch.ones_like(union))


class IoUHeadLoss(nn.Module):
    """MSE between predicted IoU [B, C] and the actual IoU of the (detached) predicted masks."""

    def forward(self, iou_pred: Tensor, logits: Tensor, target: Tensor) -> Tensor:
        with torch.no_grad():
            actual = mask_iou(logits.detach(), target)  # [B, C]
        return F.mse_loss(iou_pred.float(), actual.to(iou_pred.device))


class SegmentationLoss(nn.Module):
    """``dice_weight * Dice + ce_weight * CE (+ iou_weight * IoU-head MSE)`` on logits.

    Args:
        sigmoid: True for independent masks (target [B, C, *S] of 0/1), False for one softmax over
            C classes (target [B, 1, *S] of class indices, or one-hot [B, C, *S]).
        squared_pred: squared terms in the Dice denominator, as MedSAM trains (MONAI option).
        include_background: softmax mode only; False drops class 0 from the Dice term.
        class_weights: softmax mode: per-class CE (and Dice) weights [C]; sigmoid mode: BCE pos_weight.
        batch: MONAI ``batch`` Dice (one Dice over the whole batch; stabler with tiny structures).
    """

    def __init__(
        self,
        dice_weight: float = 1.0,
        ce_weight: float = 1.0,
        *,
        sigmoid: bool = True,
        iou_weight: float = 0.0,
        squared_pred: bool = True,
        include_background: bool = True,
        class_weights: Sequence[float] | Tensor | None = None,
        batch: bool = False,
    ):
        super().__init__()
        if min(dice_weight, ce_weight, iou_weight) < 0:
            raise ValueError("loss weights must be >= 0")
        if iou_weight > 0 and not sigmoid:
            raise ValueError("the IoU-head loss is defined for sigmoid masks (SAM); use sigmoid=True")
        self.dice_weight, self.ce_weight, self.iou_weight = dice_weight, ce_weight, iou_weight
        self.sigmoid = sigmoid
        weight = None if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float32)
        if sigmoid:
            self.dice = DiceLoss(sigmoid=True, squared_pred=squared_pred, batch=batch)
            self.ce = nn.BCEWithLogitsLoss(pos_weight=weight)
        else:
            self.dicece = DiceCELoss(
                softmax=True,
                include_background=include_background,
                squared_pred=squared_pred,
                batch=batch,
                weight=weight,
            )
        self.iou_loss = IoUHeadLoss()

    def terms(self, logits: Tensor, target: Tensor, iou_pred: Tensor | None = None) -> dict[str, Tensor]:
        """Each weighted term's raw value and the total under ``"loss"`` (for logging)."""
        logits = logits.float()
        if self.sigmoid:
            if target.shape != logits.shape:
                raise ValueError(f"sigmoid loss: target {tuple(target.shape)} must match logits {tuple(logits.shape)}")
            target = target.to(logits.dtype)
            out = {"dice": self.dice(logits, target), "ce": self.ce(logits, target)}
        else:
            if target.shape[1] == 1 and logits.shape[1] > 1:
                target = one_hot(target.long(), num_classes=logits.shape[1], dim=1)  # [B, C, *S]
            target = target.to(logits.dtype)
            out = {"dice": self.dicece.dice(logits, target), "ce": self.dicece.ce(logits, target)}
        loss = self.dice_weight * out["dice"] + self.ce_weight * out["ce"]
        if self.iou_weight > 0:
            if iou_pred is None:
                raise ValueError("iou_weight > 0 needs iou_pred")
            out["iou"] = self.iou_loss(iou_pred, logits, target)
            loss = loss + self.iou_weight * out["iou"]
        out["loss"] = loss
        return out

    def forward(self, logits: Tensor, target: Tensor, iou_pred: Tensor | None = None) -> Tensor:
        return self.terms(logits, target, iou_pred)["loss"]


class ClassificationLoss(nn.Module):
    """Cross-entropy for single-label, BCE-with-logits for multi-label / binary-single-logit heads.

    ``multi_label=True``: logits [B, C], target [B, C] of 0/1, optional ``pos_weight`` [C]
    (see :func:`pos_weight_from_labels`). ``multi_label=False``: logits [B, C], target [B] class
    indices, optional ``class_weights`` [C] (see :func:`class_weights_from_labels`).
    """

    def __init__(
        self,
        *,
        multi_label: bool = False,
        pos_weight: Sequence[float] | Tensor | None = None,
        class_weights: Sequence[float] | Tensor | None = None,
        label_smoothing: float = 0.0,
    ):
        super().__init__()
        self.multi_label = multi_label
        if multi_label:
            pw = None if pos_weight is None else torch.as_tensor(pos_weight, dtype=torch.float32)
            self.loss = nn.BCEWithLogitsLoss(pos_weight=pw)
        else:
            cw = None if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float32)
            self.loss = nn.CrossEntropyLoss(weight=cw, label_smoothing=label_smoothing)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        logits = logits.float()
        if self.multi_label:
            return self.loss(logits, target.reshape(logits.shape).to(logits.dtype))
        return self.loss(logits, target.reshape(-1).long())


def pos_weight_from_labels(labels: Tensor, max_weight: float = 100.0) -> Tensor:
    """``negatives / positives`` per column of a [N, C] 0/1 label matrix (BCE ``pos_weight``)."""
    labels = torch.as_tensor(labels).float().reshape(len(labels), -1)
    pos = labels.sum(0)
    neg = labels.shape[0] - pos
    return (neg / pos.clamp_min(1.0)).clamp(max=max_weight)


def class_weights_from_labels(labels: Tensor, num_classes: int) -> Tensor:
    """``N / (C * count_c)``: scikit-learn's ``"balanced"`` weights; absent classes get 0."""
    labels = torch.as_tensor(labels).reshape(-1).long()
    counts = torch.bincount(labels, minlength=num_classes).float()
    w = labels.numel() / (num_classes * counts.clamp_min(1.0))
    return torch.where(counts > 0, w, torch.zeros_like(w))
