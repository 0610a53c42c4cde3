"""Classification backbones by name: timm-layout ViTs and SAM-family image encoders with a pooled head.

``build_classifier`` returns a plain ``nn.Module`` mapping a preprocessed batch [B,3,S,S] to logits
[B,num_classes] and carries ``input_spec`` (the input size and intensity normalisation the backbone
was pre-trained with), so data pipelines prepare images the way each backbone expects:

- ViTs (MAE / MRM / CXR-MAE on chest X-ray): 224x224, ImageNet mean/std, short side resized then
  centre-cropped (MED-PEFT's evaluation transform).
- SAM-family encoders (LiteMedSAM by default): the encoder's own input size (256 for LiteMedSAM),
  min-max per image, long side resized then zero-padded bottom/right, as in LiteMedSAM inference.

The SAM encoder maps [B,3,S,S] -> [B,256,S/16,S/16]; the classifier averages it over space, applies an
optional LayerNorm and a Linear head. Its parameters keep the ``image_encoder.`` prefix of the SAM
model, so adapter recipes written for SAM encoders target the same module names.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from medadapt.errors import MedadaptError

from .checkpoint import LoadReport, load_vit_checkpoint
from .vit import VIT_CONFIGS, Pool, vit_patch16

Normalize = Literal["imagenet", "minmax"]
Fit = Literal["crop", "pad"]


@dataclass(frozen=True)
class InputSpec:
    """How images are prepared for a backbone (consumed by ``medadapt.data.classification``)."""

    size: int
    normalize: Normalize
    fit: Fit  # crop: short side to size + centre crop; pad: long side to size + pad bottom/right


VIT_INPUT = InputSpec(size=224, normalize="imagenet", fit="crop")
# SAM-family encoders usable as backbones: name -> input spec. Weights come from models.registry.
SAM_ENCODERS: dict[str, InputSpec] = {
    "litemedsam": InputSpec(size=256, normalize="minmax", fit="pad"),
}
SAM_EMBED_DIM = 256  # every SAM image encoder ends with a neck projecting to 256 channels
DEFAULT_SAM = "litemedsam"


def list_backbones() -> list[str]:
    return sorted(VIT_CONFIGS) + sorted(SAM_ENCODERS)


def input_spec(name: str, img_size: int | None = None) -> InputSpec:
    """Input spec of backbone ``name`` (``img_size`` overrides a ViT's 224)."""
    if name in VIT_CONFIGS:
        return VIT_INPUT if img_size is None else InputSpec(img_size, VIT_INPUT.normalize, VIT_INPUT.fit)
    if name in SAM_ENCODERS:
        return SAM_ENCODERS[name]
    raise MedadaptError(f"unknown classification backbone {name!r}",
                        fix=f"choose one of: {', '.join(list_backbones())}")


class PooledEncoderClassifier(nn.Module):
    """Dense encoder -> global average pool -> (LayerNorm) -> Linear.

    [B,3,S,S] -> encoder -> [B,C,h,w] -> mean over h,w -> [B,C] -> logits [B,num_classes].
    """

    def __init__(self, image_encoder: nn.Module, embed_dim: int, num_classes: int, *, norm: bool = True,
                 drop_rate: float = 0.0):
        super().__init__()
        self.image_encoder = image_encoder
        self.fc_norm = nn.LayerNorm(embed_dim) if norm else nn.Identity()
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.image_encoder(x)  # [B,C,h,w]

    def forward_head(self, feats: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.head_drop(self.fc_norm(feats.mean(dim=(2, 3))))  # [B,C]
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _init_head(head: nn.Linear) -> None:
    # MAE fine-tuning: near-zero head so the first steps do not wreck the pre-trained features.
    nn.init.trunc_normal_(head.weight, std=2e-5)
    nn.init.zeros_(head.bias)


def _sam_encoder(name: str, checkpoint: str | Path | None) -> nn.Module:
    try:
        from medadapt.models.registry import build_model
    except ImportError as err:  # pragma: no cover - depends on the SAM package being present
        raise MedadaptError(f"SAM-family backbone {name!r} needs medadapt.models.registry",
                            fix="use a ViT backbone (vit_base_patch16) or install the full medadapt") from err
    sam = build_model(name) if checkpoint is None else build_model(name, checkpoint=checkpoint)
    return sam.image_encoder


def build_classifier(name: str, num_classes: int, *, checkpoint: str | Path | None = None, pool: Pool = "gap",
                     drop_path: float = 0.0, img_size: int | None = None, sam_norm: bool = True) -> nn.Module:
    """Build a classifier for ``num_classes`` outputs on backbone ``name``.

    ViT: random init unless ``checkpoint`` (MAE/MRM/CXR-MAE file, loaded as MAE fine-tuning does; the
    load report is kept in ``model.load_report``). SAM encoders: the registry's pre-trained weights
    (``checkpoint`` overrides them); ``pool`` and ``drop_path`` apply to ViTs only.
    The returned module has ``input_spec`` and ``backbone`` attributes.
    """
    if num_classes < 1:
        raise MedadaptError(f"num_classes must be >= 1, got {num_classes}")
    spec = input_spec(name, img_size)
    report: LoadReport | None = None
    if name in VIT_CONFIGS:
        model: nn.Module = vit_patch16(name, num_classes=num_classes, img_size=spec.size, pool=pool,
                                       drop_path_rate=drop_path)
        if checkpoint is not None:
            report = load_vit_checkpoint(model, checkpoint)
            _init_head(model.head)
    else:
        model = PooledEncoderClassifier(_sam_encoder(name, checkpoint), SAM_EMBED_DIM, num_classes, norm=sam_norm)
        _init_head(model.head)
    model.input_spec = spec
    model.backbone = name
    model.load_report = report
    return model
