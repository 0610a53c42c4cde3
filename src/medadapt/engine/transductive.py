"""Transductive anatomical-proportion constraint (FSEFT, Silva-Rodriguez et al., MedIA 2024).

With k labelled support volumes, the size of the organ is roughly known. On an unlabelled query
volume (the one to segment), the fraction of voxels the model calls foreground, ``p_hat``, should be
close to the expected fraction ``tau``. The penalty is a hinge on their relative gap::

    L = lambda * max(0, |tau - p_hat| / max(p_hat, tau) - m)      (lambda = 0.1, m = 0.3)

It is added after ``E0 = 50`` purely supervised epochs, and only when the backbone is frozen: then the
query features are computed once (cached, average-pooled by 2 as in the reference code to save
memory) and each step only re-runs the head.

Choices (as the reference implementation, ``fseft/transductive``):

- ``tau``: each support mask keeps its largest connected component (26-connectivity), its voxel
  count is the organ size. With k >= 5 masks, sizes outside ``(median - std, median + std)`` (strict,
  population std) are dropped as outliers before the mean; with fewer, or when that would drop all,
  the plain mean. ``tau`` = mean size / number of query voxels (support and query at the same spacing).
- ``p_hat`` = mean foreground probability over the (padded) query; padding counts in both ``tau`` and
  ``p_hat`` denominators, and the relative gap does not depend on the denominator anyway.
- The denominator ``max(p_hat, tau)`` is treated as a constant (detached), as the reference does.
  The reference adds ``+m`` instead of ``-m`` on the over-segmentation side; we use the symmetric
  hinge stated in the paper.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medadapt.data.transforms3d import largest_component
from medadapt.errors import MedadaptError
from medadapt.models.volumetric.heads import FeatureCache

__all__ = [
    "ConstraintConfig",
    "ProportionConstraint",
    "expected_organ_size",
    "largest_component_size",
    "proportion_penalty",
]


def largest_component_size(mask: np.ndarray) -> int:
    """Voxels in the largest 26-connected component of a binary mask."""
    return int(np.count_nonzero(largest_component(mask)))


def expected_organ_size(sizes: Sequence[float]) -> float:
    """Mean organ size over the support set, dropping outliers when there are at least 5 masks."""
    sizes = np.asarray(sizes, dtype=np.float64)
    if sizes.size == 0:
        raise MedadaptError("no support masks to estimate the organ size from")
    if sizes.size >= 5:
        median, std = np.median(sizes), np.std(sizes)
        kept = sizes[(sizes > median - std) & (sizes < median + std)]
        if kept.size:
            return float(kept.mean())
    return float(sizes.mean())


def proportion_penalty(
    p_hat: torch.Tensor, tau: float, *, weight: float = 0.1, margin: float = 0.3
) -> torch.Tensor:
    """``weight * max(0, |tau - p_hat| / max(p_hat, tau) - margin)``, denominator detached."""
    if tau <= 0:
        raise MedadaptError(f"expected foreground proportion must be > 0, got {tau}")
    denom = max(float(p_hat.detach()), tau)
    gap = (tau - p_hat).abs() / denom
    return weight * F.relu(gap - margin)


@dataclass(frozen=True)
class ConstraintConfig:
    weight: float = 0.1  # lambda
    margin: float = 0.3  # m
    warmup_epochs: int = 50  # E0: supervised epochs before the constraint starts
    pool: int = 2  # average pooling of cached query features


class ProportionConstraint:
    """The penalty on one query volume, evaluated with the current head on cached features.

    ``model`` is a :class:`~medadapt.models.volumetric.VolumetricSegmenter` whose backbone is frozen;
    ``query`` is the preprocessed query image ``[1, C, D, H, W]``, cut into non-overlapping
    ``roi_size`` patches (zero-padded) like the reference. ``foreground`` maps logits to the
    foreground probability map (default: sigmoid of channel 0, the binary FSEFT head; for a softmax
    head pass e.g. ``lambda z: z.softmax(1)[:, 1:].sum(1)``).
    """

    def __init__(
        self,
        model: nn.Module,
        query: torch.Tensor,
        support_masks: Sequence[np.ndarray],
        roi_size: Sequence[int],
        *,
        config: ConstraintConfig | None = None,
        foreground: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ):
        self.model = model
        self.config = config or ConstraintConfig()
        self.foreground = foreground or (lambda z: torch.sigmoid(z[:, 0]))
        if any(p.requires_grad for p in model.backbone.parameters()):
            raise MedadaptError(
                "the transductive constraint needs a frozen backbone",
                fix="use it with black-box heads (linear probe, spatial adapters), or turn it off",
            )
        patches = _patches(query, roi_size)  # [N, C, r0, r1, r2]
        self.query_voxels = patches.shape[0] * int(np.prod(roi_size))
        size = expected_organ_size([largest_component_size(m) for m in support_masks])
        self.tau = size / self.query_voxels
        cache = FeatureCache(model.extract, model.backbone)
        pool = self.config.pool
        self._features = []
        for dense, *rest in cache.get_many(list(range(patches.shape[0])), patches):
            if pool > 1:  # [1, F, r0, r1, r2] -> [1, F, r0/pool, ...]
                dense = F.avg_pool3d(dense, pool)
            self._features.append((dense, *rest))

    def active(self, epoch: int) -> bool:
        return epoch >= self.config.warmup_epochs

    def p_hat(self) -> torch.Tensor:
        total = 0.0
        count = 0
        for feats in self._features:
            prob = self.foreground(self.model.apply_head(*feats))
            total = total + prob.sum()
            count += prob.numel()
        return total / count

    def loss(self) -> tuple[torch.Tensor, dict[str, float]]:
        p_hat = self.p_hat()
        penalty = proportion_penalty(p_hat, self.tau, weight=self.config.weight, margin=self.config.margin)
        return penalty, {
            "tau": self.tau,
            "p_hat": float(p_hat.detach()),
            "proportion_penalty": float(penalty.detach()),
        }


def _patches(image: torch.Tensor, roi_size: Sequence[int]) -> torch.Tensor:
    # [1, C, D, H, W] -> [N, C, r0, r1, r2], zero-padded up to multiples of roi_size
    if image.ndim != 5 or image.shape[0] != 1:
        raise MedadaptError(f"query must be [1, C, D, H, W], got {tuple(image.shape)}")
    r = list(roi_size)
    pad = [(-s) % k for s, k in zip(image.shape[2:], r, strict=True)]
    image = F.pad(image, (0, pad[2], 0, pad[1], 0, pad[0]))
    c = image.shape[1]
    p = image.unfold(2, r[0], r[0]).unfold(3, r[1], r[1]).unfold(4, r[2], r[2])  # [1,C,n0,n1,n2,r0,r1,r2]
    return p.permute(0, 2, 3, 4, 1, 5, 6, 7).reshape(-1, c, *r)
