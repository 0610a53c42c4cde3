"""Transductive anatomical-proportion constraint (FSEFT, Silva-Rodriguez et al., MedIA 2024).

With k labelled support volumes, the size of the organ is roughly known. On an unlabelled query
volume (the one to segment), the fraction of voxels the model calls foreground, ``p_hat``, should be
close to the expected fraction ``tau``. The penalty is a hinge on their relative gap::

    L = lambda * max(0, |tau - p_hat| / max(p_hat, tau) - m)      (lambda = 0.1, m = 0.3)

It is added after ``E0 = 50`` purely supervised epochs, and only when the backbone is frozen: then the
query features are computed once (cached, average-pooled by 2 as in the reference code to save
memory) and each step only re-runs the head. FSEFT adapts once per query volume; ``medadapt fit``
can instead take all held-out volumes as queries of one run (penalty averaged over queries), and a
multi-class task gets one constraint per class (:func:`per_class_constraints`, shared query features).

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
    "ConstraintSet",
    "ProportionConstraint",
    "QueryFeatures",
    "expected_organ_size",
    "largest_component_size",
    "per_class_constraints",
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
    queries_per_step: int | None = None  # a random subset of the queries per step (None: all of them)


class ProportionConstraint:
    """The penalty on one or several query volumes, evaluated with the current head on cached features.

    ``model`` is a :class:`~medadapt.models.volumetric.VolumetricSegmenter` whose backbone is frozen;
    ``query`` is the preprocessed query image ``[1, C, D, H, W]`` (or a list of them), cut into
    non-overlapping ``roi_size`` patches (zero-padded) like the reference. ``foreground`` maps logits
    to the foreground probability map (default: sigmoid of channel 0, the binary FSEFT head; for a
    softmax head pass e.g. ``lambda z: z.softmax(1)[:, 1:].sum(1)``). With several queries each has
    its own ``tau`` (same organ size, its own voxel count) and the penalty is their mean; ``tau`` and
    ``query_voxels`` are those of the first query. ``features`` reuses the cached query features of
    another constraint on the same queries (one constraint per class, see :func:`per_class_constraints`).
    """

    def __init__(
        self,
        model: nn.Module,
        query: torch.Tensor | Sequence[torch.Tensor],
        support_masks: Sequence[np.ndarray],
        roi_size: Sequence[int],
        *,
        config: ConstraintConfig | None = None,
        foreground: Callable[[torch.Tensor], torch.Tensor] | None = None,
        features: QueryFeatures | None = None,
    ):
        self.model = model
        self.config = config or ConstraintConfig()
        self.foreground = foreground or (lambda z: torch.sigmoid(z[:, 0]))
        _check_frozen(model)
        queries = [query] if isinstance(query, torch.Tensor) else list(query)
        self.features = features or QueryFeatures(model, queries, roi_size, pool=self.config.pool)
        size = expected_organ_size([largest_component_size(m) for m in support_masks])
        self.taus = [size / v for v in self.features.voxels]
        self.tau, self.query_voxels = self.taus[0], self.features.voxels[0]

    def active(self, epoch: int) -> bool:
        return epoch >= self.config.warmup_epochs

    def p_hats(
        self, logits: list[list[torch.Tensor]] | None = None, queries: Sequence[int] | None = None
    ) -> list[torch.Tensor]:
        """Mean foreground probability of each query (padding included, see the module docstring).

        ``logits`` (per query, per patch) are the head's outputs when already computed (shared by the
        per-class constraints of a :class:`ConstraintSet`); ``queries`` restricts to those query indices.
        """
        logits = logits if logits is not None else self.features.logits(self.model, queries)
        out = []
        for patches in logits:
            total, count = 0.0, 0
            for z in patches:
                prob = self.foreground(z)
                total = total + prob.sum()
                count += prob.numel()
            out.append(total / count)
        return out

    def p_hat(self) -> torch.Tensor:
        return self.p_hats()[0]

    def pick(self, step_seed: Sequence[int]) -> list[int] | None:
        """The query indices of one step (``config.queries_per_step`` of them, drawn from ``step_seed``).

        ``None`` means every query. With many query volumes (all held-out volumes of a split) the head
        pass over every cached query patch dominates each step; a seeded random subset keeps the
        penalty an unbiased estimate at a fixed cost, and the same steps draw the same subsets on resume.
        """
        n, k = len(self.taus), self.config.queries_per_step
        if k is None or k >= n:
            return None
        return sorted(np.random.default_rng(list(step_seed)).choice(n, size=k, replace=False).tolist())

    def loss(
        self, logits: list[list[torch.Tensor]] | None = None, queries: Sequence[int] | None = None
    ) -> tuple[torch.Tensor, dict[str, float]]:
        p_hats = self.p_hats(logits, queries)
        taus = self.taus if queries is None else [self.taus[i] for i in queries]
        terms = [
            proportion_penalty(p, tau, weight=self.config.weight, margin=self.config.margin)
            for p, tau in zip(p_hats, taus, strict=True)
        ]
        penalty = torch.stack(terms).mean()
        return penalty, {
            "tau": float(np.mean(taus)),
            "p_hat": float(torch.stack(p_hats).detach().mean()),
            "proportion_penalty": float(penalty.detach()),
        }


class QueryFeatures:
    """Frozen-backbone features of the query volumes' patches, average-pooled by ``pool`` (computed once)."""

    def __init__(self, model: nn.Module, queries: Sequence[torch.Tensor], roi_size: Sequence[int], *, pool: int = 2):
        _check_frozen(model)
        if not queries:
            raise MedadaptError("no query volume for the transductive constraint")
        self.items: list[list[tuple[torch.Tensor, ...]]] = []  # per query, per patch
        self.voxels: list[int] = []
        cache = FeatureCache(model.extract, model.backbone)
        for q, query in enumerate(queries):
            patches = _patches(query, roi_size)  # [N, C, r0, r1, r2]
            self.voxels.append(patches.shape[0] * int(np.prod(roi_size)))
            feats = []
            for dense, *rest in cache.get_many([(q, i) for i in range(patches.shape[0])], patches):
                if pool > 1:  # [1, F, r0, r1, r2] -> [1, F, r0/pool, ...]
                    dense = F.avg_pool3d(dense, pool)
                feats.append((dense, *rest))
            cache.clear()
            self.items.append(feats)

    def logits(self, model: nn.Module, queries: Sequence[int] | None = None) -> list[list[torch.Tensor]]:
        """The current head's logits on every cached patch (per query, per patch) of ``queries`` (default all)."""
        items = self.items if queries is None else [self.items[i] for i in queries]
        return [[model.apply_head(*feats) for feats in patches] for patches in items]


class ConstraintSet:
    """Several constraints (one per class) used as one: active together, penalties averaged."""

    def __init__(self, constraints: Sequence[ProportionConstraint]):
        if not constraints:
            raise MedadaptError("no transductive constraint to combine")
        self.constraints = list(constraints)

    def active(self, epoch: int) -> bool:
        return self.constraints[0].active(epoch)

    def pick(self, step_seed: Sequence[int]) -> list[int] | None:
        return self.constraints[0].pick(step_seed)

    def loss(self, queries: Sequence[int] | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        first = self.constraints[0]
        shared = all(c.features is first.features for c in self.constraints)
        logits = first.features.logits(first.model, queries) if shared else None  # one head pass for every class
        parts = [c.loss(logits, queries) for c in self.constraints]
        penalty = torch.stack([p for p, _ in parts]).mean()
        logs = {k: float(np.mean([lg[k] for _, lg in parts])) for k in parts[0][1]}
        logs["proportion_penalty"] = float(penalty.detach())
        return penalty, logs


def per_class_constraints(
    model: nn.Module,
    queries: Sequence[torch.Tensor],
    support_labels: Sequence[np.ndarray],
    classes: Sequence[int],
    roi_size: Sequence[int],
    *,
    sigmoid: bool,
    config: ConstraintConfig | None = None,
) -> ConstraintSet:
    """One constraint per class ``c`` (support masks ``label == c``), all on the same cached queries.

    ``classes`` are the training label values 1..C; ``sigmoid``: channel ``c - 1`` is class ``c``,
    else a softmax with background at channel 0.
    """
    config = config or ConstraintConfig()
    features = QueryFeatures(model, queries, roi_size, pool=config.pool)
    out = []
    for c in classes:
        masks = [np.asarray(lab) == c for lab in support_labels]
        if not any(m.any() for m in masks):
            raise MedadaptError(f"class {c} is absent from every support mask: its size cannot be estimated")
        fg = (lambda z, c=c: torch.sigmoid(z[:, c - 1])) if sigmoid else (lambda z, c=c: z.softmax(1)[:, c])
        out.append(
            ProportionConstraint(model, queries, masks, roi_size, config=config, foreground=fg, features=features)
        )
    return ConstraintSet(out)


def _check_frozen(model: nn.Module) -> None:
    if any(p.requires_grad for p in model.backbone.parameters()):
        raise MedadaptError(
            "the transductive constraint needs a frozen backbone",
            fix="use it with black-box heads (linear probe, spatial adapters), or turn it off",
        )


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
