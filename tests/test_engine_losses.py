"""Segmentation, IoU-head and classification losses."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from monai.losses import DiceLoss
from sklearn.utils.class_weight import compute_class_weight

from medadapt.engine.losses import (
    ClassificationLoss,
    SegmentationLoss,
    class_weights_from_labels,
    mask_iou,
    pos_weight_from_labels,
)


def _masks(b=2, c=1, size=(16, 16), seed=0):
    g = torch.Generator().manual_seed(seed)
    target = (torch.rand(b, c, *size, generator=g) > 0.6).float()
    logits = torch.randn(b, c, *size, generator=g)
    return logits, target


def test_sigmoid_loss_is_dice_plus_bce():
    logits, target = _masks(c=3)  # three independent masks (SAM multimask)
    loss = SegmentationLoss(dice_weight=0.7, ce_weight=0.3)
    terms = loss.terms(logits, target)
    dice = DiceLoss(sigmoid=True, squared_pred=True)(logits, target)
    bce = F.binary_cross_entropy_with_logits(logits, target)  # not softmax CE over the 3 channels
    torch.testing.assert_close(terms["dice"], dice)
    torch.testing.assert_close(terms["ce"], bce)
    torch.testing.assert_close(loss(logits, target), 0.7 * dice + 0.3 * bce)


def test_perfect_prediction_has_small_loss_and_gradients_flow():
    _, target = _masks()
    good = (target * 2 - 1) * 20
    bad = -good
    loss = SegmentationLoss()
    assert loss(good, target) < 0.01 < 1.0 < loss(bad, target)
    logits = torch.zeros_like(target, requires_grad=True)
    loss(logits, target).backward()
    assert logits.grad.abs().sum() > 0


def test_softmax_index_and_onehot_targets_agree_3d():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 3, 6, 7, 8, generator=g)
    labels = torch.randint(0, 3, (2, 1, 6, 7, 8), generator=g)
    onehot = F.one_hot(labels[:, 0], 3).permute(0, 4, 1, 2, 3).float()
    loss = SegmentationLoss(sigmoid=False, include_background=False)
    a, b = loss.terms(logits, labels), loss.terms(logits, onehot)
    torch.testing.assert_close(a["loss"], b["loss"])
    torch.testing.assert_close(a["ce"], F.cross_entropy(logits, labels[:, 0]))


def test_mask_iou_and_iou_head_loss():
    pred = torch.full((3, 1, 4, 4), -5.0)
    gt = torch.zeros(3, 1, 4, 4)
    pred[0, 0, :2, :2] = 5  # 4 px predicted
    gt[0, 0, :2, :] = 1  # 8 px true, 4 overlap -> 0.5
    pred[1, 0, 0, 0] = 5  # predicted, target empty -> 0
    # sample 2: both empty -> 1 (not NaN)
    torch.testing.assert_close(mask_iou(pred, gt), torch.tensor([[0.5], [0.0], [1.0]]))
    iou_pred = torch.tensor([[0.5], [0.0], [1.0]], requires_grad=True)
    loss = SegmentationLoss(iou_weight=1.0)
    terms = loss.terms(pred, gt, iou_pred)
    assert terms["iou"].item() == pytest.approx(0.0)
    terms = loss.terms(pred, gt, torch.tensor([[1.0], [1.0], [1.0]]))
    assert terms["iou"].item() == pytest.approx((0.25 + 1.0 + 0.0) / 3)
    assert terms["loss"].item() == pytest.approx((terms["dice"] + terms["ce"] + terms["iou"]).item())
    with pytest.raises(ValueError, match="needs iou_pred"):
        loss(pred, gt)


def test_segmentation_loss_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="must match"):
        SegmentationLoss()(torch.zeros(1, 3, 4, 4), torch.zeros(1, 1, 4, 4))


def test_classification_losses():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(8, 3, generator=g)
    labels = torch.randint(0, 3, (8,), generator=g)
    w = torch.tensor([1.0, 2.0, 0.5])
    ce = ClassificationLoss(class_weights=w)
    torch.testing.assert_close(ce(logits, labels), F.cross_entropy(logits, labels, weight=w))
    multi = (torch.rand(8, 3, generator=g) > 0.5).float()
    pw = pos_weight_from_labels(multi)
    bce = ClassificationLoss(multi_label=True, pos_weight=pw)
    torch.testing.assert_close(bce(logits, multi), F.binary_cross_entropy_with_logits(logits, multi, pos_weight=pw))
    # binary head with one logit and [B] labels
    one = ClassificationLoss(multi_label=True)
    torch.testing.assert_close(one(logits[:, :1], multi[:, 0]),
                               F.binary_cross_entropy_with_logits(logits[:, 0], multi[:, 0]))


def test_label_derived_weights():
    labels = np.array([0] * 388 + [1] * 3494)  # PneumoniaMNIST train imbalance
    ours = class_weights_from_labels(torch.from_numpy(labels), 2)
    ref = compute_class_weight("balanced", classes=np.array([0, 1]), y=labels)
    np.testing.assert_allclose(ours.numpy(), ref, rtol=1e-6)
    assert class_weights_from_labels(torch.tensor([0, 0, 2]), 3)[1] == 0  # absent class
    pw = pos_weight_from_labels(torch.from_numpy(labels)[:, None])
    assert pw.item() == pytest.approx(388 / 3494)
