"""Anatomical-proportion constraint: hand-computed values, outlier rule, cached-feature evaluation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medadapt.engine.transductive import (
    ConstraintConfig,
    ProportionConstraint,
    expected_organ_size,
    largest_component_size,
    proportion_penalty,
)
from medadapt.errors import MedadaptError
from medadapt.models.volumetric import LinearProbe, build_volumetric


def test_penalty_hand_computed():
    # tau = 0.01, p_hat = 0.02: |0.01 - 0.02| / max(0.02, 0.01) = 0.5; 0.5 - 0.3 = 0.2; x 0.1 = 0.02
    assert float(proportion_penalty(torch.tensor(0.02), 0.01)) == pytest.approx(0.02)
    # under-segmentation: p_hat = 0.004 -> 0.006 / 0.01 = 0.6 -> 0.1 * 0.3 = 0.03
    assert float(proportion_penalty(torch.tensor(0.004), 0.01)) == pytest.approx(0.03)
    # inside the margin: 0.002 / 0.012 = 0.167 < 0.3 -> 0
    assert float(proportion_penalty(torch.tensor(0.012), 0.01)) == 0.0
    # gradient pushes p_hat toward tau (denominator detached): d/dp [0.1 * (p - tau) / p0] = 0.1 / 0.02
    p = torch.tensor(0.02, requires_grad=True)
    proportion_penalty(p, 0.01, weight=0.1, margin=0.3).backward()
    assert float(p.grad) == pytest.approx(0.1 / 0.02)


def test_expected_size_outlier_rule():
    # k = 5: median 120, population std of [100, 110, 120, 130, 400] = 114.0; keep (6, 234) -> mean of 4
    assert expected_organ_size([100, 110, 120, 130, 400]) == pytest.approx(115.0)
    # k < 5: plain mean, outliers kept
    assert expected_organ_size([100, 110, 400]) == pytest.approx(610 / 3)
    # all equal (std 0): the strict rule would drop all -> plain mean
    assert expected_organ_size([50] * 6) == 50
    with pytest.raises(MedadaptError):
        expected_organ_size([])


def test_largest_component_size():
    mask = np.zeros((10, 10, 10), bool)
    mask[1:4, 1:4, 1:4] = True  # 27
    mask[6:8, 6:8, 6:8] = True  # 8, separate
    mask[4, 4, 4] = True  # touches the first cube by a corner: 26-connected -> 28
    assert largest_component_size(mask) == 28


def test_constraint_on_cached_query_features():
    torch.manual_seed(0)
    model = build_volumetric("unet3d", 1, strides=[1, 2, 2], filters=[4, 8, 16])
    model.head = LinearProbe(4, 1)
    with pytest.raises(MedadaptError, match="frozen backbone"):
        ProportionConstraint(model, torch.randn(1, 1, 20, 16, 16), [np.ones((2, 2, 2))], (16, 16, 16))
    model.backbone.requires_grad_(False)
    query = torch.randn(1, 1, 20, 16, 16)  # padded to 32 x 16 x 16: two 16^3 patches
    masks = [np.ones((4, 4, 4)), np.ones((4, 4, 2))]  # sizes 64 and 32 -> 48 voxels expected
    cfg = ConstraintConfig(weight=0.1, margin=0.3, warmup_epochs=3, pool=2)
    tc = ProportionConstraint(model, query, masks, (16, 16, 16), config=cfg)
    assert tc.query_voxels == 2 * 16**3
    assert tc.tau == pytest.approx(48 / (2 * 16**3))
    assert not tc.active(2) and tc.active(3)
    # p_hat: mean sigmoid of the head on 2x-average-pooled features of the two zero-padded patches
    padded = torch.nn.functional.pad(query, (0, 0, 0, 0, 0, 12))
    model.eval()
    with torch.no_grad():
        feats = [model.extract(padded[:, :, i * 16 : (i + 1) * 16])[0] for i in range(2)]
        ref = torch.cat(
            [torch.sigmoid(model.head(torch.nn.functional.avg_pool3d(f, 2))).flatten() for f in feats]
        ).mean()
    loss, logs = tc.loss()
    assert logs["p_hat"] == pytest.approx(float(ref), rel=1e-5)
    gap = abs(tc.tau - float(ref)) / max(float(ref), tc.tau)
    assert float(loss.detach()) == pytest.approx(0.1 * max(0.0, gap - 0.3), rel=1e-5)
    loss.backward()
    assert model.head.linear.weight.grad is not None and model.head.linear.weight.grad.abs().sum() > 0


def test_per_class_constraints_share_queries_and_average():
    """Two classes, two queries: each class's penalty is its own hinge, averaged over queries, then classes."""
    from medadapt.engine.transductive import per_class_constraints

    torch.manual_seed(0)
    model = build_volumetric("unet3d", 2, strides=[1, 2, 2], filters=[4, 8, 16])
    model.head = LinearProbe(4, 2)
    model.backbone.requires_grad_(False)
    queries = [torch.randn(1, 1, 16, 16, 16), torch.randn(1, 1, 32, 16, 16)]  # 1 and 2 patches
    support = [np.zeros((8, 8, 8), np.uint8)]
    support[0][:2, :2, :2] = 1  # class 1: 8 voxels
    support[0][4:8, 4:8, 4:8] = 2  # class 2: 64 voxels
    cfg = ConstraintConfig(weight=1.0, margin=0.0, warmup_epochs=0)
    cs = per_class_constraints(model, queries, support, [1, 2], (16, 16, 16), sigmoid=True, config=cfg)
    a, b = cs.constraints
    assert a.features is b.features and a.taus == pytest.approx([8 / 16**3, 8 / (2 * 16**3)])
    assert b.taus == pytest.approx([64 / 16**3, 64 / (2 * 16**3)])
    loss, logs = cs.loss()
    model.eval()
    with torch.no_grad():
        expected = []
        for c, taus in ((0, a.taus), (1, b.taus)):
            per_query = []
            for q, tau in zip(queries, taus, strict=True):
                patches = [q[:, :, i * 16 : (i + 1) * 16] for i in range(q.shape[2] // 16)]
                p = torch.cat([torch.sigmoid(model.head(torch.nn.functional.avg_pool3d(
                    model.extract(x)[0], 2)))[:, c].flatten() for x in patches]).mean()
                per_query.append(abs(tau - float(p)) / max(float(p), tau))
            expected.append(np.mean(per_query))
    assert float(loss.detach()) == pytest.approx(np.mean(expected), rel=1e-5)
    assert logs["proportion_penalty"] == pytest.approx(float(loss.detach()))
    with pytest.raises(MedadaptError, match="absent"):
        per_class_constraints(model, queries, support, [3], (16, 16, 16), sigmoid=True, config=cfg)


def test_queries_per_step_uses_a_seeded_subset():
    """queries_per_step=1 of 3 queries: the penalty is that query's own hinge; the draw repeats per seed."""
    from medadapt.engine.transductive import per_class_constraints

    torch.manual_seed(0)
    model = build_volumetric("unet3d", 1, strides=[1, 2, 2], filters=[4, 8, 16])
    model.head = LinearProbe(4, 1)
    model.backbone.requires_grad_(False)
    queries = [torch.randn(1, 1, 16, 16, 16) for _ in range(3)]
    support = [np.zeros((8, 8, 8), np.uint8)]
    support[0][:4, :4, :4] = 1
    full = per_class_constraints(model, queries, support, [1], (16, 16, 16), sigmoid=True,
                                 config=ConstraintConfig(weight=1.0, margin=0.0, warmup_epochs=0))
    one = per_class_constraints(model, queries, support, [1], (16, 16, 16), sigmoid=True,
                                config=ConstraintConfig(weight=1.0, margin=0.0, warmup_epochs=0, queries_per_step=1))
    assert full.pick((0, 0, 0)) is None
    picks = {tuple(one.pick((0, e, s))) for e in range(4) for s in range(4)}
    assert all(len(p) == 1 for p in picks) and len(picks) > 1  # different steps, different queries
    assert one.pick((0, 1, 2)) == one.pick((0, 1, 2))
    (q,) = one.pick((0, 1, 2))
    alone = per_class_constraints(model, [queries[q]], support, [1], (16, 16, 16), sigmoid=True,
                                  config=ConstraintConfig(weight=1.0, margin=0.0, warmup_epochs=0))
    assert float(one.loss([q])[0]) == pytest.approx(float(alone.loss()[0]), rel=1e-6)
    assert float(full.loss()[0]) != pytest.approx(float(one.loss([q])[0]), rel=1e-6)
