"""Training engine shared by every task: config, optimisers and schedules, losses, the loop
(accelerate, accumulation, clipping, bf16, validation, early stopping, resume), logs, seeding and
the frozen-encoder embedding cache.

Names are imported lazily: ``import medadapt.engine`` stays cheap, and MONAI / accelerate load only
when a loss or the trainer is used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "TrainConfig": "config",
    "Trainer": "trainer",
    "TrainTask": "trainer",
    "TrainResult": "trainer",
    "build_optimizer": "optim",
    "build_scheduler": "optim",
    "lr_factor": "optim",
    "layer_decay_groups": "optim",
    "block_layer_id": "optim",
    "SegmentationLoss": "losses",
    "IoUHeadLoss": "losses",
    "ClassificationLoss": "losses",
    "mask_iou": "losses",
    "pos_weight_from_labels": "losses",
    "class_weights_from_labels": "losses",
    "EmbeddingCache": "embedding_cache",
    "module_fingerprint": "embedding_cache",
    "seed_everything": "seed",
    "make_generator": "seed",
    "seed_worker": "seed",
    "loader_kwargs": "seed",
    "load_checkpoint": "checkpointing",
    "RunLogger": "logging",
}

__all__ = [
    "ClassificationLoss",
    "EmbeddingCache",
    "IoUHeadLoss",
    "RunLogger",
    "SegmentationLoss",
    "TrainConfig",
    "TrainResult",
    "TrainTask",
    "Trainer",
    "block_layer_id",
    "build_optimizer",
    "build_scheduler",
    "class_weights_from_labels",
    "layer_decay_groups",
    "load_checkpoint",
    "loader_kwargs",
    "lr_factor",
    "make_generator",
    "mask_iou",
    "module_fingerprint",
    "pos_weight_from_labels",
    "seed_everything",
    "seed_worker",
]

if TYPE_CHECKING:
    from medadapt.engine.checkpointing import load_checkpoint
    from medadapt.engine.config import TrainConfig
    from medadapt.engine.embedding_cache import EmbeddingCache, module_fingerprint
    from medadapt.engine.logging import RunLogger
    from medadapt.engine.losses import (
        ClassificationLoss,
        IoUHeadLoss,
        SegmentationLoss,
        class_weights_from_labels,
        mask_iou,
        pos_weight_from_labels,
    )
    from medadapt.engine.optim import (
        block_layer_id,
        build_optimizer,
        build_scheduler,
        layer_decay_groups,
        lr_factor,
    )
    from medadapt.engine.seed import loader_kwargs, make_generator, seed_everything, seed_worker
    from medadapt.engine.trainer import Trainer, TrainResult, TrainTask


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'medadapt.engine' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"medadapt.engine.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
