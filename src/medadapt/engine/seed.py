"""Determinism: one seed for python, numpy and torch, and seeded DataLoader helpers.

``accelerate.utils.set_seed`` seeds the generators (python, numpy, torch, every CUDA device). Its own
``deterministic=True`` is not used because it makes ops without a deterministic kernel *raise*
(e.g. the bilinear-upsampling backward SAM needs on CUDA); here they only warn.
"""

from __future__ import annotations

import os
import random

import numpy as np
import torch
from accelerate.utils import set_seed


def seed_everything(seed: int, *, deterministic: bool = True) -> None:
    """Seed every generator; with ``deterministic`` prefer deterministic kernels where that is cheap."""
    if deterministic:
        # cuBLAS reads this when it initialises; harmless on CPU-only machines.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    set_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False


def make_generator(seed: int, epoch: int = 0) -> torch.Generator:
    """A CPU generator for ``DataLoader(generator=...)``: shuffling depends on (seed, epoch) only.

    A loader with its own generator shuffles the same way whatever the model consumed from the
    global RNG before, which keeps runs comparable across code changes.
    """
    g = torch.Generator()
    g.manual_seed(seed * 100_003 + epoch)
    return g


def seed_worker(worker_id: int) -> None:
    """``worker_init_fn`` that seeds numpy and python in each DataLoader worker.

    torch seeds itself per worker from the loader's base seed; numpy and ``random`` would otherwise
    start identical in every worker (and every epoch with persistent workers off).
    """
    worker_seed = torch.initial_seed() % 2**32
    np.random.seed(worker_seed)
    random.seed(worker_seed)


def loader_kwargs(seed: int, epoch: int, num_workers: int = 0) -> dict:
    """Keyword arguments that make a ``DataLoader`` reproducible for ``(seed, epoch)``."""
    return {
        "generator": make_generator(seed, epoch),
        "worker_init_fn": seed_worker,
        "num_workers": num_workers,
        "persistent_workers": False,
    }
