"""Image classification backbones: timm-layout ViTs, SAM-family encoders with a pooled head, a small CNN."""

from medadapt.models.classification.backbones import (
    DEFAULT_BACKBONE,
    InputSpec,
    PooledEncoderClassifier,
    build_classifier,
    input_spec,
    is_random_init,
    list_backbones,
)
from medadapt.models.classification.checkpoint import LoadReport, load_vit_checkpoint, read_state_dict
from medadapt.models.classification.cnn import CNN_CONFIGS, SmallCNN
from medadapt.models.classification.vit import VIT_CONFIGS, VisionTransformer, resample_pos_embed, vit_patch16

__all__ = [
    "CNN_CONFIGS",
    "SmallCNN",
    "is_random_init",
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
