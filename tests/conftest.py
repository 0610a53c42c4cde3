"""Shared fixtures.

Tests that need ../shared (real data and official reference outputs) use the ``shared`` fixture:
it fails when CI is set and the folder is missing, and skips only on a developer machine.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def _shared_dir() -> Path:
    env = os.environ.get("MEDADAPT_SHARED")
    return Path(env) if env else REPO_ROOT.parent / "shared"


@pytest.fixture(scope="session")
def shared() -> Path:
    path = _shared_dir()
    if not (path / "README.md").is_file():
        msg = f"../shared not found at {path} (set MEDADAPT_SHARED to its location)"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    return path


@pytest.fixture(scope="session")
def reference(shared: Path) -> Path:
    return shared / "reference"


@pytest.fixture(scope="session")
def data_dir(shared: Path) -> Path:
    return shared / "data"


def _images(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Class 1 has a bright square in the centre: learnable in a few steps."""
    labels = np.arange(n) % 2
    imgs = rng.integers(0, 90, (n, 16, 16), dtype=np.uint8)
    imgs[labels == 1, 4:12, 4:12] += 120
    return imgs, labels[:, None].astype(np.uint8)  # MedMNIST stores labels as [N,1]


@pytest.fixture()
def tiny_mnist(tmp_path) -> Path:
    """A MedMNIST-style .npz (train/val/test) of 16x16 images; class 1 has a bright square."""
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 48), ("val", 20), ("test", 24)):
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = _images(rng, n)
    path = tmp_path / "tiny_mnist.npz"
    np.savez(path, **arrays)
    return path


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    """A CLI test run with ``--threads 1`` sets torch's process-wide thread count; later tests get it back."""
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
