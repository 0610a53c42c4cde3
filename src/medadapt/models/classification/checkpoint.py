"""Load MAE / MRM / CXR-MAE style ViT checkpoints into :class:`VisionTransformer`.

These files are torch pickles holding either a flat timm-layout state dict or ``{"model": ...}``
(MAE's ``misc.save_model`` adds ``args``, ``epoch``, ``optimizer``; a few repos use ``state_dict`` and
a ``module.`` / ``encoder.`` prefix, stripped here when that makes more keys match). Loading follows
MAE fine-tuning: non-strict, the pre-training head is dropped, ``pos_embed`` is resampled bicubically
to the model's grid, and what was missing or unused is reported rather than silently ignored. A file
that matches no ViT parameter at all is a user error.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from medadapt.errors import MedadaptError
from medadapt.io.checkpoints import read_checkpoint
from medadapt.models.load_report import LoadReport

from .vit import VisionTransformer, resample_pos_embed

# Prefixes seen in published checkpoints; the one that matches most model keys wins.
_PREFIXES = ("", "module.", "model.", "encoder.", "backbone.", "module.encoder.", "vit.")
# Non-tensor objects MAE-style training scripts pickle beside the weights (args, numpy metrics).
_SAFE_GLOBALS = [argparse.Namespace, np.dtype, np._core.multiarray.scalar, type(np.dtype(np.float64)),
                 type(np.dtype(np.float32)), type(np.dtype(np.int64))]


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a ``.pth``/``.pt``/``.bin`` (``weights_only``) or ``.safetensors`` checkpoint.

    :func:`medadapt.io.checkpoints.read_checkpoint` does the reading; the argparse ``Namespace`` and
    numpy scalars that MAE-style training scripts pickle beside the weights are allowed as well (they
    are plain data, nothing executes), so such files load without re-saving.
    """
    with torch.serialization.safe_globals(_SAFE_GLOBALS):
        return read_checkpoint(path)


def _strip_prefix(state: dict[str, torch.Tensor], model_keys: set[str]) -> dict[str, torch.Tensor]:
    """Remove the wrapper prefix (``module.``, ``encoder.``...) that makes most keys match the model."""

    def strip(prefix: str) -> dict[str, torch.Tensor]:
        return {(k[len(prefix):] if prefix and k.startswith(prefix) else k): v for k, v in state.items()}

    return max((strip(p) for p in _PREFIXES), key=lambda s: len(model_keys & s.keys()))


def load_vit_checkpoint(model: VisionTransformer, source: str | Path | Mapping[str, torch.Tensor], *,
                        keep_head: bool = False) -> LoadReport:
    """Load ``source`` (a path or a state dict) into ``model`` non-strictly and report what happened.

    ``head.*`` is dropped unless ``keep_head`` and its shape fits (reloading a fine-tuned model).
    ``pos_embed`` is resampled to the model grid; a 1-channel ``patch_embed.proj.weight`` is spread
    over the 3 input channels (grayscale replicated to RGB gives the same response). Other shape
    mismatches are dropped and reported. Raises :class:`MedadaptError` when nothing matches.
    """
    path = str(source) if isinstance(source, (str, Path)) else "<state dict>"
    state = read_state_dict(source) if isinstance(source, (str, Path)) else dict(source)
    own = model.state_dict()
    state = _strip_prefix(state, set(own))
    report = LoadReport(source=path)

    to_load: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key not in own:
            report.unexpected.append(key)
            continue
        target = own[key]
        if key.startswith("head.") and not (keep_head and value.shape == target.shape):
            report.dropped.append(key)
            continue
        if key == "pos_embed" and value.shape != target.shape and value.ndim == 3 and value.shape[-1] == target.shape[-1]:
            try:
                value = resample_pos_embed(value, model.grid, num_prefix_tokens=1)
            except ValueError:
                pass
            else:
                report.resized.append(f"pos_embed {tuple(state[key].shape)}->{tuple(value.shape)}")
        if key == "patch_embed.proj.weight" and value.ndim == 4 and value.shape[1] == 1 and target.shape[1] == 3 \
                and value.shape[0] == target.shape[0] and value.shape[2:] == target.shape[2:]:
            value = value.repeat(1, 3, 1, 1) / 3.0
            report.resized.append("patch_embed.proj.weight 1->3 channels")
        if value.shape != target.shape:
            report.dropped.append(f"{key} {tuple(value.shape)}!={tuple(target.shape)}")
            continue
        to_load[key] = value.to(target.dtype)

    body = [k for k in to_load if not k.startswith("head.")]
    if not body:
        sample = ", ".join(sorted(state)[:5])
        raise MedadaptError(
            f"no tensor in this checkpoint matches a timm-layout ViT of width {model.embed_dim} "
            f"(first keys: {sample})",
            path=path,
            fix="pass an MAE/MRM/CXR-MAE ViT checkpoint of the same size as the chosen backbone "
                "(vit_small/base/large_patch16)",
        )
    result = model.load_state_dict(to_load, strict=False)
    report.loaded = sorted(to_load)
    report.missing = sorted(result.missing_keys)
    return report
