"""Load official SAM-family state dicts into our modules, with checks a user can act on.

``torch.nn.Module.load_state_dict`` reports problems as a wall of key names, or (with
``strict=False``) not at all. Here a file of another architecture is named as such, with a
few example keys, and a checkpoint trained at another input size is adapted the way SAM
adaptation code does it: the absolute position embedding is resized bicubically and the
relative-position tables of global-attention blocks linearly (as ``get_rel_pos`` would).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from medadapt.errors import MedadaptError
from medadapt.models.load_report import LoadReport
from medadapt.models.sam.image_encoder import resize_rel_pos

log = logging.getLogger(__name__)

_MODEL_PREFIXES = ("image_encoder.", "prompt_encoder.", "mask_decoder.")
# Fraction of the model's keys that must be present with the right shape before a file is
# taken for this architecture at all (rather than "another model").
_MIN_MATCH = 0.5
_SHOWN = 5


def load_sam_state_dict(model: nn.Module, state: dict[str, torch.Tensor], *,
                        source: str | Path) -> LoadReport:
    """Copy ``state`` into ``model`` (a ``Sam``); raise :class:`MedadaptError` on a mismatch.

    Integer buffers missing from the file (BatchNorm ``num_batches_tracked``) keep the model's
    values; tensors outside ``image_encoder.``/``prompt_encoder.``/``mask_decoder.`` are
    ignored; everything else must match after position-embedding interpolation.
    """
    report = LoadReport(source=str(source))
    expected = model.state_dict()
    state = dict(state)
    for key in [k for k in state if k not in expected and not k.startswith(_MODEL_PREFIXES)]:
        report.unexpected.append(key)
        del state[key]
    _interpolate_positions(state, expected, report)

    missing = [k for k in expected if k not in state and expected[k].is_floating_point()]
    report.kept_buffers = [k for k in expected if k not in state and not expected[k].is_floating_point()]
    unexpected = [k for k in state if k not in expected]
    misshaped = [
        f"{k} (file {tuple(state[k].shape)}, model {tuple(expected[k].shape)})"
        for k in state if k in expected and state[k].shape != expected[k].shape
    ]
    if missing or unexpected or misshaped:
        n_ok = sum(1 for k in expected if k in state and state[k].shape == expected[k].shape)
        if n_ok < _MIN_MATCH * len(expected):
            what = (f"this checkpoint is for a different architecture: only {n_ok} of the model's "
                    f"{len(expected)} tensors match by name and shape")
        else:
            what = "this checkpoint does not fit the model"
        raise MedadaptError(
            f"{what}. {_describe(missing, unexpected, misshaped)}",
            path=source,
            fix="pass the official checkpoint of the chosen model (see `medadapt models`), "
                "or choose the model that matches this file",
        )
    with torch.no_grad():
        model.load_state_dict(state, strict=False)
    report.loaded = sorted(state)
    for line in report.resized:
        log.info("%s: interpolated %s", source, line)
    return report


def _describe(missing: list[str], unexpected: list[str], misshaped: list[str]) -> str:
    parts = []
    for name, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)):
        if keys:
            more = f" and {len(keys) - _SHOWN} more" if len(keys) > _SHOWN else ""
            parts.append(f"{len(keys)} {name}: {', '.join(keys[:_SHOWN])}{more}.")
    return " ".join(parts)


def _interpolate_positions(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor],
                           report: LoadReport) -> None:
    """Resize ViT position tables trained at another input size, in place."""
    key = "image_encoder.pos_embed"
    if key in state and key in expected:
        old, new = state[key], expected[key]
        if old.ndim == 4 and old.shape != new.shape and old.shape[-1] == new.shape[-1]:
            resized = F.interpolate(old.permute(0, 3, 1, 2).float(), size=new.shape[1:3], mode="bicubic",
                                    align_corners=False)
            state[key] = resized.permute(0, 2, 3, 1).to(old.dtype)
            report.resized.append(f"{key}: {tuple(old.shape)} -> {tuple(new.shape)}")
    for key in list(state):
        if not key.endswith(("attn.rel_pos_h", "attn.rel_pos_w")) or key not in expected:
            continue
        old, new = state[key], expected[key]
        if old.ndim == 2 and old.shape != new.shape and old.shape[1] == new.shape[1]:
            state[key] = resize_rel_pos(old.float(), new.shape[0]).to(old.dtype)
            report.resized.append(f"{key}: {tuple(old.shape)} -> {tuple(new.shape)}")
