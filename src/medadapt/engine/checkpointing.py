"""Resume state: what ``checkpoint/last.pt`` holds and how it is written and read.

A checkpoint keeps only what adaptation changes: the trainable parameters (plus the buffers of the
modules that own them, e.g. BatchNorm running stats under norm tuning), the optimiser, scheduler and
task state, every RNG, and the loop counters. Frozen foundation-model weights are never copied,
so a checkpoint of a LoRA run is megabytes, not gigabytes.

Everything stored is a tensor, number, string, bool, None, list, tuple or dict, so the file loads
with ``torch.load(weights_only=True)`` (no pickled code). numpy RNG state is stored as a tensor for
that reason. Files are written through :mod:`medadapt.io.atomic`: a killed run leaves the previous
checkpoint intact.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medadapt.adapt.artifact import adapter_state_dict
from medadapt.errors import MedadaptError
from medadapt.io.atomic import atomic_path

FORMAT = "medadapt.engine.checkpoint"
VERSION = 1


# ----------------------------------------------------------------------------- RNG
def capture_rng_state() -> dict[str, Any]:
    """State of the python, numpy, torch (and initialised CUDA) generators, weights_only-safe."""
    np_state = np.random.get_state(legacy=False)
    version, internal, gauss = random.getstate()
    state: dict[str, Any] = {
        "python": {"version": version, "internal": list(internal), "gauss": gauss},
        "numpy": {
            "bit_generator": np_state["bit_generator"],
            "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
        "cuda": [],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    py = state["python"]
    random.setstate((py["version"], tuple(py["internal"]), py["gauss"]))
    npy = state["numpy"]
    np.random.set_state(
        {
            "bit_generator": npy["bit_generator"],
            "state": {"key": npy["key"].numpy().astype(np.uint32), "pos": npy["pos"]},
            "has_gauss": npy["has_gauss"],
            "gauss": npy["gauss"],
        }
    )
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ----------------------------------------------------------------------------- weights
def trainable_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Trainable parameters and the buffers of the modules that own one (CPU copies): the tensors
    of an adapter artifact (:func:`medadapt.adapt.artifact.adapter_state_dict`), detached from training."""
    return {k: v.cpu().clone() for k, v in adapter_state_dict(model).items()}


def load_trainable_state_dict(model: nn.Module, state: dict[str, torch.Tensor], *, path: Path | None = None) -> None:
    """Copy ``state`` into ``model``; every key must exist and every trainable parameter be covered."""
    expected = trainable_state_dict_keys(model)
    missing = sorted(expected - state.keys())
    own = dict(model.named_parameters()) | dict(model.named_buffers())
    unknown = sorted(k for k in state if k not in own)
    if missing or unknown:
        detail = []
        if missing:
            detail.append(f"{len(missing)} trainable tensors missing (e.g. {missing[0]})")
        if unknown:
            detail.append(f"{len(unknown)} tensors the model does not have (e.g. {unknown[0]})")
        raise MedadaptError(
            "checkpoint does not match the model being trained: " + "; ".join(detail),
            path=path,
            fix="resume with the same model and adaptation recipe, or start a new run in an empty folder",
        )
    with torch.no_grad():
        for k, v in state.items():
            target = own[k]
            if target.shape != v.shape:
                raise MedadaptError(
                    f"checkpoint tensor {k} has shape {tuple(v.shape)}, the model expects {tuple(target.shape)}",
                    path=path,
                    fix="resume with the same model and adaptation recipe",
                )
            target.copy_(v)


def trainable_state_dict_keys(model: nn.Module) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


# ----------------------------------------------------------------------------- files
def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """``torch.save`` to a temporary file, then rename: the old file survives a crash mid-write."""
    state = {"format": FORMAT, "version": VERSION, **state}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load with ``weights_only=True`` on CPU; clear errors for missing, corrupt or foreign files."""
    path = Path(path)
    if not path.is_file():
        raise MedadaptError("no checkpoint to resume from", path=path,
                            fix="start the run without resume, or point to the run folder that has checkpoint/last.pt")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # any unpickling failure means an unusable file
        raise MedadaptError(f"checkpoint cannot be read ({type(err).__name__}: {err})", path=path,
                            fix="delete it and start the run again") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise MedadaptError("not a medadapt training checkpoint", path=path,
                            fix="resume only from checkpoint/last.pt written by medadapt")
    if state.get("version", 0) > VERSION:
        raise MedadaptError(f"checkpoint format version {state['version']} is newer than this medadapt",
                            path=path, fix="upgrade medadapt")
    return state
