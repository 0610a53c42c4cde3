"""Optimisers, schedules at key steps, layer-wise lr decay."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from medadapt.engine.config import TrainConfig
from medadapt.engine.optim import (
    block_layer_id,
    build_optimizer,
    build_scheduler,
    layer_decay_groups,
    lr_factor,
)
from medadapt.errors import MedadaptError


def _lrs(cfg: TrainConfig, total: int, n: int) -> list[float]:
    p = nn.Parameter(torch.zeros(2, 2))
    opt = build_optimizer(cfg, [p])
    sched = build_scheduler(opt, cfg, total)
    out = []
    for _ in range(n):
        out.append(opt.param_groups[0]["lr"])  # lr used by this update
        opt.step()
        sched.step()
    out.append(opt.param_groups[0]["lr"])
    return out


def test_cosine_key_steps():
    cfg = TrainConfig(lr=1.0, schedule="cosine", warmup_steps=10, epochs=None, max_steps=110)
    lrs = _lrs(cfg, total=110, n=110)
    assert lrs[0] == pytest.approx(0.1)  # first update is not wasted at lr 0
    assert lrs[9] == pytest.approx(1.0)  # warm-up end
    assert lrs[10] == pytest.approx(1.0)
    assert lrs[60] == pytest.approx(0.5)  # midpoint of the decay
    assert lrs[110] == pytest.approx(0.0, abs=1e-12)  # end
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:], strict=False))  # monotone decay


def test_poly_constant_and_min_ratio():
    kw = dict(total_steps=100, warmup_steps=0)
    assert lr_factor(50, schedule="poly", poly_power=2.0, **kw) == pytest.approx(0.25)
    assert lr_factor(100, schedule="poly", poly_power=0.9, **kw) == pytest.approx(0.0)
    assert lr_factor(77, schedule="constant", **kw) == 1.0
    assert lr_factor(3, schedule="constant", total_steps=None, warmup_steps=4) == pytest.approx(1.0)
    assert lr_factor(100, schedule="cosine", min_lr_ratio=0.1, **kw) == pytest.approx(0.1)
    assert lr_factor(50, schedule="cosine", min_lr_ratio=0.1, **kw) == pytest.approx(0.55)


def test_warmup_ratio():
    cfg = TrainConfig(lr=2.0, warmup_ratio=0.2, schedule="constant", epochs=None, max_steps=10)
    lrs = _lrs(cfg, total=10, n=3)
    assert lrs[:3] == pytest.approx([1.0, 2.0, 2.0])


def test_decaying_schedule_needs_length():
    cfg = TrainConfig(schedule="cosine")
    opt = build_optimizer(cfg, [nn.Parameter(torch.zeros(1))])
    with pytest.raises(MedadaptError, match="needs the run length"):
        build_scheduler(opt, cfg, None)


def test_weight_decay_skips_1d_and_frozen():
    lin = nn.Linear(3, 4)
    frozen = nn.Parameter(torch.zeros(5, 5), requires_grad=False)
    opt = build_optimizer(TrainConfig(weight_decay=0.05), [lin.weight, lin.bias, frozen])
    decays = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    assert decays == {id(lin.weight): 0.05, id(lin.bias): 0.0}
    assert isinstance(opt, torch.optim.AdamW)
    sgd = build_optimizer(TrainConfig(optimizer="sgd", momentum=0.7), [lin.weight])
    assert isinstance(sgd, torch.optim.SGD) and sgd.param_groups[0]["momentum"] == 0.7


def test_nothing_trainable_is_an_error():
    with pytest.raises(MedadaptError, match="nothing to train"):
        build_optimizer(TrainConfig(), [nn.Parameter(torch.zeros(2), requires_grad=False)])


class _TinyViT(nn.Module):
    def __init__(self, depth=3):
        super().__init__()
        self.patch_embed = nn.Linear(4, 4)
        self.blocks = nn.ModuleList(nn.Linear(4, 4) for _ in range(depth))
        self.head = nn.Linear(4, 2)


def test_layer_decay_groups():
    vit = _TinyViT(depth=3)
    assert block_layer_id("patch_embed.weight", 4) == 0
    assert block_layer_id("image_encoder.blocks.2.attn.qkv.weight", 4) == 3
    assert block_layer_id("head.weight", 4) == 4
    groups = layer_decay_groups(vit.named_parameters(), decay=0.5, num_layers=4, weight_decay=0.1)
    opt = build_optimizer(TrainConfig(lr=1.0), groups)
    lr_of = {n: g["lr"] for g in opt.param_groups for n in g["names"]}
    assert lr_of["head.weight"] == 1.0
    assert lr_of["blocks.2.weight"] == 0.5
    assert lr_of["blocks.0.weight"] == 0.125
    assert lr_of["patch_embed.weight"] == 0.0625
    wd_of = {n: g["weight_decay"] for g in opt.param_groups for n in g["names"]}
    assert wd_of["blocks.0.bias"] == 0.0 and wd_of["blocks.0.weight"] == 0.1
    # the schedule scales every group from its own initial lr
    sched = build_scheduler(opt, TrainConfig(lr=1.0, warmup_steps=2, schedule="constant"), None)
    assert {g["lr"] / g["initial_lr"] for g in opt.param_groups} == {0.5}
    opt.step()
    sched.step()
    assert all(math.isclose(g["lr"], g["initial_lr"]) for g in opt.param_groups)
