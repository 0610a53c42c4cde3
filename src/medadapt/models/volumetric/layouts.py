"""Published checkpoint layouts of 3D segmenters, mapped onto MONAI's module names.

The same MONAI architectures are released in several key layouts:

``monai-ssl``
    MONAI self-supervised Swin UNETR encoder (``model_swinvit.pt``): ``{"state_dict": ...}`` with
    ``module.``-prefixed Swin transformer keys (``module.layers1.0.blocks.0...``), the MLP named
    ``mlp.fc1`` / ``mlp.fc2`` (MONAI's ``MLPBlock`` calls them ``linear1`` / ``linear2``), plus the
    pretraining heads (``rotation_head``, ``contrastive_head``, ``convTrans3d``) that have no place in
    a segmenter.
``swinunetr``
    A full MONAI model, as the MONAI research-contributions fine-tuned files:
    ``{"state_dict": {"swinViT...", "encoder1...", "out.conv.conv..."}, "epoch": .., "best_acc": ..}``
    (or a bare state dict, possibly ``module.``-prefixed by DataParallel).
``universal``
    CLIP-driven universal model, FSEFT and SuPreM: ``{"net": ...}`` with ``module.backbone.`` before
    the MONAI keys, ``swin_vit`` for ``swinViT`` in some releases, an optional FSEFT ``classifier``
    (the MONAI ``out.conv.conv``), and the universal model's text-conditioned head next to the backbone
    (``module.precls_conv``, ``module.GAP``, ``module.controller``, ``module.organ_embedding``,
    ``module.text_to_vision``). Those head tensors are returned as ``extras`` for
    :class:`medadapt.models.volumetric.text_head.TextConditionedHead`.

:func:`load_volumetric_weights` normalises any of these to MONAI names, loads what fits, and reports loaded,
missing, unexpected and shape-mismatched keys. A file of which nothing fits raises
:class:`MedadaptError`. The pretrained classifier is kept in the report even when its class count
differs from the new task, so a linear probe can start from its rows.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from medadapt.errors import MedadaptError
from medadapt.io.checkpoints import read_checkpoint
from medadapt.models.load_report import LoadReport

__all__ = [
    "LoadReport",
    "UNIVERSAL_HEAD_PREFIXES",
    "load_volumetric_weights",
    "normalise_state_dict",
]

# The universal model's text-conditioned head, stored next to ``module.backbone.``.
UNIVERSAL_HEAD_PREFIXES = ("precls_conv.", "GAP.", "controller.", "organ_embedding", "text_to_vision.")
_CONTAINERS = ("state_dict", "net", "model", "model_state_dict")
_SWIN_ENCODER_ROOTS = ("patch_embed.", "layers1.", "layers2.", "layers3.", "layers4.")
# Keys whose pretrained values are kept for new heads even when shapes differ.
_CLASSIFIER_KEYS = {
    "out.conv.conv.weight": "weight",
    "out.conv.conv.bias": "bias",
    "output_block.conv.conv.weight": "weight",
    "output_block.conv.conv.bias": "bias",
}


def _unwrap(raw: Mapping[str, object]) -> dict[str, torch.Tensor]:
    """The tensors under ``state_dict`` / ``net`` / ``model`` / ``model_state_dict``, or at the top."""
    for name in _CONTAINERS:
        inner = raw.get(name)
        if isinstance(inner, Mapping) and any(isinstance(v, torch.Tensor) for v in inner.values()):
            return {k: v for k, v in inner.items() if isinstance(v, torch.Tensor)}
    return {k: v for k, v in raw.items() if isinstance(v, torch.Tensor)}


def normalise_state_dict(
    raw: Mapping[str, object],
) -> tuple[str, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """``(layout, state dict in MONAI names, universal-head extras)`` for any supported layout."""
    sd = _unwrap(raw)
    if not sd:
        raise MedadaptError(
            "the checkpoint holds no tensors", fix="give a state dict, or a dict with 'state_dict' / 'net'"
        )

    extras: dict[str, torch.Tensor] = {}
    backbone = {k: v for k, v in sd.items() if ".backbone." in f".{k}"}
    if backbone:  # universal model: backbone next to a text-conditioned head
        layout = "universal"
        for k, v in sd.items():
            bare = k[len("module.") :] if k.startswith("module.") else k
            if bare.startswith(UNIVERSAL_HEAD_PREFIXES):
                extras[bare] = v
        sd = {k.split("backbone.", 1)[1]: v for k, v in backbone.items()}
    else:
        if all(k.startswith("module.") for k in sd):  # DataParallel / SSL prefix
            sd = {k[len("module.") :]: v for k, v in sd.items()}
        layout = "swinunetr"

    renamed: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        key = key.replace("swin_vit.", "swinViT.")
        key = key.replace("mlp.fc1.", "mlp.linear1.").replace("mlp.fc2.", "mlp.linear2.")
        if key.startswith("classifier."):  # FSEFT names the 1x1x1 output conv "classifier"
            key = "out.conv.conv." + key[len("classifier.") :]
        renamed[key] = value
    sd = renamed

    if any(k.startswith(_SWIN_ENCODER_ROOTS) for k in sd) and not any(k.startswith("swinViT.") for k in sd):
        # Encoder-only file (MONAI SSL): Swin keys without the swinViT prefix, pretraining heads beside.
        layout = "monai-ssl"
        sd = {
            (f"swinViT.{k}" if k.startswith((*_SWIN_ENCODER_ROOTS, "norm.")) else k): v for k, v in sd.items()
        }
    elif layout == "swinunetr" and not any(k.startswith("swinViT.") for k in sd):
        layout = "monai"  # another MONAI network (DynUNet), under any container
    return layout, sd, extras


def load_volumetric_weights(model: nn.Module, checkpoint: str | Path | Mapping[str, object]) -> LoadReport:
    """Load a published checkpoint into a MONAI network (before its head is split off).

    Tensors whose shape differs from the model's (a classifier for other classes, another
    ``in_channels``) are skipped and listed in ``mismatched``; the pretrained classifier itself is
    kept in ``report.pretrained_head``. Raises :class:`MedadaptError` when no tensor fits.
    """
    path = None
    if isinstance(checkpoint, (str, Path)):
        path = str(checkpoint)
        checkpoint = read_checkpoint(checkpoint)
    layout, sd, extras = normalise_state_dict(checkpoint)
    own = model.state_dict()
    report = LoadReport(source=path, layout=layout, extras=extras)
    to_load: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        if key in _CLASSIFIER_KEYS:
            report.pretrained_head[_CLASSIFIER_KEYS[key]] = value.detach().clone()
        if key not in own:
            report.unexpected.append(key)
        elif tuple(own[key].shape) != tuple(value.shape):
            report.dropped.append(f"{key}: {tuple(value.shape)} -> {tuple(own[key].shape)}")
        else:
            to_load[key] = value
    if not to_load:
        sample = ", ".join(list(sd)[:4])
        raise MedadaptError(
            f"no tensor of the checkpoint matches {type(model).__name__} (detected layout {layout!r}; "
            f"first keys after renaming: {sample})",
            path=path,
            fix="give a MONAI SSL, Swin UNETR, CLIP-driven/FSEFT or SuPreM Swin UNETR file for 'swinunetr', "
            "or a MONAI DynUNet state dict for 'unet3d'",
        )
    model.load_state_dict(to_load, strict=False)
    report.loaded = sorted(to_load)
    report.missing = sorted(k for k in own if k not in to_load)
    return report
