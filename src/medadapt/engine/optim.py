"""Optimisers, learning-rate schedules and layer-wise lr decay.

The schedules are one pure function, :func:`lr_factor`, wrapped in ``torch.optim.lr_scheduler.LambdaLR``
so the scheduler state is the stock, ``weights_only``-loadable one. It is hand-written rather than
taken from ``transformers.get_*_schedule_with_warmup`` (not a dependency) and differs from it on
purpose in one place: warm-up gives ``(step + 1) / warmup`` so the first update is not wasted at lr 0.

Convention: ``lr_factor(s)`` is the factor of the lr used by optimiser update ``s`` (0-based).
Warm-up reaches 1.0 at ``s = warmup - 1``; decay runs from 1.0 at ``s = warmup`` to ``min_lr_ratio``
at ``s = total_steps``.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import nn

from medadapt.engine.config import TrainConfig
from medadapt.errors import MedadaptError


def lr_factor(
    step: int,
    *,
    total_steps: int | None,
    warmup_steps: int = 0,
    schedule: str = "cosine",
    poly_power: float = 0.9,
    min_lr_ratio: float = 0.0,
) -> float:
    """Multiplier of the peak lr for optimiser update ``step`` (0-based)."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    if total_steps is None:
        raise ValueError(f"schedule {schedule!r} needs total_steps")
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, max(0.0, (step - warmup_steps) / span))
    if schedule == "cosine":
        decay = 0.5 * (1.0 + math.cos(math.pi * progress))
    elif schedule == "poly":
        decay = (1.0 - progress) ** poly_power
    else:
        raise ValueError(f"unknown schedule {schedule!r}")
    return min_lr_ratio + (1.0 - min_lr_ratio) * decay


def resolve_warmup(config: TrainConfig, total_steps: int | None) -> int:
    """Warm-up length in optimiser steps from ``warmup_steps`` or ``warmup_ratio``."""
    if config.warmup_steps is not None:
        return config.warmup_steps
    if config.warmup_ratio:
        if total_steps is None:
            raise MedadaptError(
                "`warmup_ratio` needs the run length, but the task's batches have no len()",
                fix="set `warmup_steps` or `max_steps` in the training configuration",
            )
        return int(round(config.warmup_ratio * total_steps))
    return 0


def build_scheduler(
    optimizer: torch.optim.Optimizer, config: TrainConfig, total_steps: int | None
) -> torch.optim.lr_scheduler.LambdaLR:
    """Warm-up + ``config.schedule`` over ``total_steps`` optimiser steps, stepped once per update."""
    if config.schedule != "constant" and total_steps is None:
        raise MedadaptError(
            f"schedule `{config.schedule}` needs the run length, but the task's batches have no len()",
            fix="set `max_steps`, or use `schedule: constant`",
        )
    fn = functools.partial(
        lr_factor,
        total_steps=total_steps,
        warmup_steps=resolve_warmup(config, total_steps),
        schedule=config.schedule,
        poly_power=config.poly_power,
        min_lr_ratio=config.min_lr_ratio,
    )
    return torch.optim.lr_scheduler.LambdaLR(optimizer, fn)


ParamsOrGroups = Iterable[nn.Parameter] | Iterable[Mapping[str, Any]]


def weight_decay_groups(params: Iterable[nn.Parameter]) -> list[dict[str, Any]]:
    """Two param groups: >1-D tensors (optimiser's weight decay) and 1-D ones (biases, norm scales:
    no decay, since decaying them towards 0 hurts norm tuning and BitFit)."""
    params = list(params)
    return [
        {"params": [p for p in params if p.ndim > 1]},
        {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0},
    ]


def build_optimizer(config: TrainConfig, params: ParamsOrGroups) -> torch.optim.Optimizer:
    """AdamW or SGD over the trainable parameters.

    ``params`` is an iterable of parameters or of param-group dicts. Plain parameters are split so
    weight decay skips 1-D tensors (biases, norm scales: decaying them towards 0 hurts norm tuning
    and BitFit). A group may carry ``lr_scale`` (multiplies ``config.lr``, see
    :func:`layer_decay_groups`) or its own ``lr`` / ``weight_decay``.
    """
    items = list(params)
    if items and isinstance(items[0], Mapping):
        groups = []
        for g in items:
            g = dict(g)
            g["params"] = [p for p in g["params"] if p.requires_grad]
            if "lr" not in g:
                g["lr"] = config.lr * float(g.get("lr_scale", 1.0))
            if g["params"]:
                groups.append(g)
    else:
        groups = [g for g in weight_decay_groups(p for p in items if p.requires_grad) if g["params"]]
    if not groups:
        raise MedadaptError(
            "nothing to train: the task returned no parameters with requires_grad=True",
            fix="check the adaptation recipe (it must leave at least one parameter trainable)",
        )
    if config.optimizer == "adamw":
        return torch.optim.AdamW(
            groups, lr=config.lr, betas=config.betas, eps=config.eps, weight_decay=config.weight_decay
        )
    return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)


_BLOCK_INDEX = re.compile(r"(?:^|\.)(?:blocks|layers|layer)\.(\d+)\.")
_EMBED_NAMES = ("patch_embed", "pos_embed", "cls_token", "embeddings", "absolute_pos_embed")


def block_layer_id(name: str, num_layers: int) -> int:
    """Depth of a parameter for layer-wise lr decay, in ``[0, num_layers]``.

    Embeddings are 0, ``...blocks.<i>....`` (timm ViT, SAM image encoder) and ``...layers.<i>....``
    are ``i + 1``, everything else (necks, heads, decoders) is ``num_layers`` and keeps the full lr.
    """
    m = _BLOCK_INDEX.search(name)
    if m is not None:
        return min(int(m.group(1)) + 1, num_layers)
    if any(part in name.split(".") for part in _EMBED_NAMES):
        return 0
    return num_layers


def layer_decay_groups(
    named_params: Iterable[tuple[str, nn.Parameter]],
    *,
    decay: float,
    num_layers: int,
    weight_decay: float,
    layer_id: Callable[[str, int], int] = block_layer_id,
) -> list[dict[str, Any]]:
    """Param groups with ``lr_scale = decay ** (num_layers - layer_id(name))`` (BEiT/MAE fine-tuning).

    ``num_layers`` is the number of blocks + 1 (embeddings are layer 0). 1-D parameters get no
    weight decay. Frozen parameters are dropped.
    """
    groups: dict[tuple[int, bool], dict[str, Any]] = {}
    for name, p in named_params:
        if not p.requires_grad:
            continue
        lid = layer_id(name, num_layers)
        no_decay = p.ndim <= 1
        g = groups.setdefault(
            (lid, no_decay),
            {
                "params": [],
                "names": [],
                "lr_scale": decay ** (num_layers - lid),
                "weight_decay": 0.0 if no_decay else weight_decay,
            },
        )
        g["params"].append(p)
        g["names"].append(name)
    return [groups[k] for k in sorted(groups)]
