"""Models of finished runs, rebuilt for inference and scoring (base model + head + adapter, eval mode).

``medadapt evaluate`` (and any caller that predicts with a run) loads a fitted 3D run with
:func:`load_fitted` and a classifier run with :func:`load_trained_classifier`, without the training
machinery; the fit modules build their models through the same :func:`build_head_model`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from medadapt.adapt.artifact import load_adapter, read_adapter_meta
from medadapt.data.transforms3d import VolumePreprocessing
from medadapt.errors import MedadaptError
from medadapt.io.hashing import file_sha256
from medadapt.models.classification import VIT_CONFIGS, build_classifier, is_random_init
from medadapt.models.volumetric import (
    TextConditionedHead,
    build_volumetric,
    embed_class_names,
    load_sentence_encoder,
    match_classes,
    replace_head,
)
from medadapt.run import ClassifyAdapterInfo, RunFolder, adapter_info

__all__ = ["build_head_model", "load_fitted", "load_trained_classifier", "prep_from_fields"]


def build_head_model(resolved: dict[str, Any], checkpoint: str | None, *, init: bool = True):
    """Base 3D model with the run's head (``resolved`` = the ``resolved`` block of fit_config.json).

    ``init=False`` skips what only matters before training (pretrained-row init, text encoder):
    the adapter then overwrites every head tensor.
    """

    n_out = resolved["out_channels"]
    model = build_volumetric(resolved["model"], n_out, checkpoint=checkpoint, **resolved["arch"])
    head, names = resolved["head"], resolved["class_names"]
    if head == "pretrained":
        replace_head(model, "pretrained", n_out)
    elif head == "text":
        dim = resolved["embedding_dim"]
        if init:
            method = resolved["text_encoder"]
            if method in ("onehot", "random"):
                emb = embed_class_names(names, method, dim=dim, seed=resolved["seed"])
            else:
                encoder = load_sentence_encoder(None if method == "sentence" else method)
                emb = embed_class_names(names, "sentence", encoder=encoder)
        else:
            emb = torch.zeros(len(names), dim)
        model.head = TextConditionedHead(
            model.feature_channels, model.bottleneck_channels, emb, learn_embeddings=True
        )
        if init and model.load_report is not None and model.load_report.extras:
            model.head.load_universal(model.load_report.extras)
    else:
        kind = "linear" if head == "linear" else f"adapter{resolved['adapter_kernel']}"
        rows = None
        report = model.load_report
        known = resolved.get("pretrained_classes")
        if init and known and report is not None and "weight" in report.pretrained_head:
            offset = report.pretrained_head["weight"].shape[0] - len(known)  # 1: softmax background row
            if offset in (0, 1):
                found = [None if r is None else r + offset for r in match_classes(names, known)]
                rows = found if resolved["sigmoid"] else [0 if offset else None, *found]
                if all(r is None for r in rows):
                    rows = None
        replace_head(model, kind, n_out, rows=rows)
    return model


def prep_from_fields(fields: dict[str, Any]):

    return VolumePreprocessing(
        **{k: (tuple(v) if isinstance(v, list) else v) for k, v in fields.items()}
    )


def load_fitted(run: str | Path):
    """``(model, fit_config, adapter_meta)`` of a ``fit --task volumetric`` run folder, adapter loaded, eval mode."""

    folder = RunFolder.resolve(run) if not RunFolder(run).fit_config_path.is_file() else RunFolder(run)
    cfg_path = folder.fit_config_path
    if not cfg_path.is_file():
        raise MedadaptError(f"not a volumetric fit run: {cfg_path.name} is missing.", path=folder.root,
                            fix="pass the --out folder of `medadapt fit --task volumetric`.")
    fit_config = folder.read_fit_config()
    resolved = fit_config.get("resolved")
    if not resolved or fit_config.get("resolved", {}).get("roi") is None:
        raise MedadaptError("this run was not made by `fit --task volumetric`.", path=cfg_path,
                            fix="use --task segment / classify for other runs.")
    meta = folder.read_adapter_meta()
    base = meta.get("base") or {}
    checkpoint = base.get("checkpoint")
    if checkpoint and not Path(checkpoint).is_file():
        raise MedadaptError("the base checkpoint of this run is gone.", path=checkpoint,
                            fix="put the pretrained checkpoint back where the run was fitted from.")
    if checkpoint and base.get("checkpoint_sha256") and file_sha256(checkpoint) != base["checkpoint_sha256"]:
        raise MedadaptError("the base checkpoint changed since the run was fitted (sha256 differs).",
                            path=checkpoint, fix="restore the original checkpoint file.")
    model = build_head_model(resolved, checkpoint, init=False)
    load_adapter(model, folder.adapter_dir, base={"model": resolved["model"]})
    model.eval()
    return model, fit_config, meta


def load_trained_classifier(adapter_dir: str | Path, *, checkpoint: str | Path | None = None) -> nn.Module:
    """Rebuild a classifier saved by :meth:`ClassificationTask.save_best` (base + adapter), in eval mode.

    ``checkpoint`` is the backbone's pre-trained file (default: the path recorded at training time);
    its sha256 must match the one recorded.
    """
    meta = read_adapter_meta(adapter_dir)
    typed, base = adapter_info(meta), dict(meta.get("base") or {})
    info = typed.classify if isinstance(typed, ClassifyAdapterInfo) else None
    if not info:
        raise MedadaptError("this adapter was not trained by the classification task", path=adapter_dir)
    ckpt = checkpoint if checkpoint is not None else base.get("checkpoint")
    if ckpt is not None and not Path(ckpt).is_file():
        raise MedadaptError("the backbone checkpoint the adapter was trained on is not found", path=ckpt,
                            fix="pass checkpoint= with the pre-trained file")
    backbone = info["backbone"]
    partial = meta.get("params", {}).get("trainable") != meta.get("params", {}).get("total")
    if is_random_init(backbone, ckpt) and partial:
        raise MedadaptError("the adapter was trained on a randomly initialised ViT, which cannot be rebuilt",
                            path=adapter_dir, fix="train from a pre-trained checkpoint, or with the 'full' recipe")
    kwargs = {"pool": info.get("pool") or "gap"} if backbone in VIT_CONFIGS else {}
    # the trained input size (a SAM encoder adapted at 64 px must not be rebuilt at its default 256)
    model = build_classifier(backbone, info["num_outputs"], checkpoint=ckpt, img_size=info["input_spec"]["size"],
                             **kwargs)
    check = {"model": backbone}
    if ckpt is not None and base.get("checkpoint_sha256"):
        check["checkpoint_sha256"] = file_sha256(ckpt)
    load_adapter(model, adapter_dir, base=check)
    model.class_names = info["class_names"]
    model.task_type = info["task"]
    return model.eval()
