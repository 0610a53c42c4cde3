"""Shared fixtures.

Tests that need ../shared (real data and official reference outputs) use the ``shared`` fixture:
it fails when CI is set and the folder is missing, and skips only on a developer machine.
"""

from __future__ import annotations

import os
from pathlib import Path

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
