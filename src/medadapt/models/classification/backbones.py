"""Classification backbones by name: timm-layout ViTs and SAM-family image encoders with a pooled head.

``build_classifier`` returns a plain ``nn.Module`` mapping a preprocessed batch [B,3,S,S] to logits
[B,num_classes] and carries ``input_spec`` (the input size and intensity normalisation the backbone
was pre-trained with), so data pipelines prepare images the way each backbone expects:

- ViTs (MAE / MRM / CXR-MAE on chest X-ray): 224x224, ImageNet mean/std, short side resized then
  centre-cropped (MED-PEFT's evaluation transform).
- SAM-family encoders (any ``medadapt.models.registry`` model; LiteMedSAM is the default and the
  one with bundled weights): the encoder's own input size and normalisation (LiteMedSAM: 256, min-max
  per image), long side resized then zero-padded bottom/right, as in SAM / LiteMedSAM inference.

The SAM encoder maps [B,3,S,S] -> [B,256,h,w] (64x64 for LiteMedSAM at 256: its TinyViT keeps stride 4;
S/16 for SAM ViTs); the classifier averages it over space, applies an optional LayerNorm and a Linear
head. Its parameters keep the ``image_encoder.`` prefix of the SAM
model, so adapter recipes written for SAM encoders target the same module names.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from medadapt.errors import MedadaptError
from medadapt.models.classification.checkpoint import LoadReport, load_vit_checkpoint
from medadapt.models.classification.cnn import CNN_CONFIGS, SmallCNN
from medadapt.models.classification.vit import VIT_CONFIGS, Pool, vit_patch16
from medadapt.models.registry import DEFAULT_MODEL, build_model, list_models

Normalize = Literal["imagenet", "minmax"]
Fit = Literal["crop", "pad"]


@dataclass(frozen=True)
class InputSpec:
    """How images are prepared for a backbone (consumed by ``medadapt.data.classification``)."""

    size: int
    normalize: Normalize
    fit: Fit  # crop: short side to size + centre crop; pad: long side to size + pad bottom/right


VIT_INPUT = InputSpec(size=224, normalize="imagenet", fit="crop")
CNN_INPUT = InputSpec(size=64, normalize="imagenet", fit="crop")  # small inputs: MedMNIST is 28-224 px
SAM_EMBED_DIM = 256  # every SAM image encoder ends with a neck projecting to 256 channels
DEFAULT_BACKBONE = DEFAULT_MODEL  # LiteMedSAM: the backbone with bundled pre-trained weights


def _sam_specs() -> dict[str, InputSpec]:
    """SAM-family encoders of ``medadapt.models.registry`` (name -> input spec)."""
    return {m.name: InputSpec(size=m.image_size, normalize=m.normalization, fit="pad") for m in list_models()}


def list_backbones() -> list[str]:
    return sorted(VIT_CONFIGS) + sorted(CNN_CONFIGS) + sorted(_sam_specs())


def is_random_init(name: str, checkpoint: str | Path | None) -> bool:
    """True for backbones that start from random weights here (a ViT without a file, the CNN)."""
    return name in CNN_CONFIGS or (name in VIT_CONFIGS and checkpoint is None)


def input_spec(name: str, img_size: int | None = None) -> InputSpec:
    """Input spec of backbone ``name`` (``img_size`` overrides the default input side)."""
    if name in VIT_CONFIGS:
        return VIT_INPUT if img_size is None else InputSpec(img_size, VIT_INPUT.normalize, VIT_INPUT.fit)
    if name in CNN_CONFIGS:
        return CNN_INPUT if img_size is None else InputSpec(img_size, CNN_INPUT.normalize, CNN_INPUT.fit)
    sam = _sam_specs()
    if name in sam:
        return sam[name] if img_size is None else InputSpec(img_size, sam[name].normalize, sam[name].fit)
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

    def forward_pooled(self, x: torch.Tensor) -> torch.Tensor:
        """[B,3,S,S] -> [B,C]: the frozen part of a linear probe (cacheable)."""
        return self.image_encoder(x).mean(dim=(2, 3))

    def forward_from_pooled(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.head(self.head_drop(self.fc_norm(pooled)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _init_head(head: nn.Linear) -> None:
    # MAE fine-tuning: near-zero head so the first steps do not wreck the pre-trained features.
    nn.init.trunc_normal_(head.weight, std=2e-5)
    nn.init.zeros_(head.bias)


def build_classifier(name: str, num_classes: int, *, checkpoint: str | Path | None = None, pool: Pool = "gap",
                     drop_path: float = 0.0, img_size: int | None = None, sam_norm: bool = True,
                     pretrained: bool = True) -> nn.Module:
    """Build a classifier for ``num_classes`` outputs on backbone ``name``.

    ViT: random init unless ``checkpoint`` (MAE/MRM/CXR-MAE file, loaded as MAE fine-tuning does; the
    load report is kept in ``model.load_report``). ``cnn_small``: random init (trained from scratch,
    the baseline). SAM encoders (any ``medadapt.models.registry``
    name): the bundled weights (LiteMedSAM) or ``checkpoint``; ``pretrained=False`` gives random
    weights (tests). ``pool`` and ``drop_path`` apply to ViTs only.
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
    elif name in CNN_CONFIGS:
        if checkpoint is not None:
            raise MedadaptError(f"{name} is trained from scratch and takes no checkpoint",
                                fix="drop the checkpoint, or choose a pre-trained backbone")
        model = SmallCNN(num_classes, CNN_CONFIGS[name])
    else:
        sam = build_model(name, checkpoint, image_size=spec.size, pretrained=pretrained)
        model = PooledEncoderClassifier(sam.image_encoder, SAM_EMBED_DIM, num_classes, norm=sam_norm)
        _init_head(model.head)
        model.train()  # build_model returns eval mode; training mode is the module default
    model.input_spec = spec
    model.backbone = name
    model.load_report = report
    return model
