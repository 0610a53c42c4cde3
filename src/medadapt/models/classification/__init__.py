"""Image classification backbones: timm-layout ViTs and SAM-family encoders with a pooled head."""

from .backbones import (
    DEFAULT_BACKBONE,
    InputSpec,
    PooledEncoderClassifier,
    build_classifier,
    input_spec,
    list_backbones,
)
from .checkpoint import LoadReport, load_vit_checkpoint, read_state_dict
from .vit import VIT_CONFIGS, VisionTransformer, resample_pos_embed, vit_patch16

__all__ = [
    "DEFAULT_BACKBONE",
    "VIT_CONFIGS",
    "InputSpec",
    "LoadReport",
    "PooledEncoderClassifier",
    "VisionTransformer",
    "build_classifier",
    "input_spec",
    "list_backbones",
    "load_vit_checkpoint",
    "read_state_dict",
    "resample_pos_embed",
    "vit_patch16",
]
