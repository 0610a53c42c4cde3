"""Volumetric (3D) segmenters: MONAI Swin UNETR / 3D U-Net, their published checkpoint layouts, and
the heads used for few-shot adaptation (linear probe, spatial adapters, text-conditioned head)."""

from medadapt.models.volumetric.heads import (
    HEAD_KINDS,
    FeatureCache,
    LinearProbe,
    SpatialAdapter,
    black_box_head,
    match_classes,
    replace_head,
)
from medadapt.models.volumetric.layouts import (
    LoadReport,
    load_volumetric_weights,
    normalise_state_dict,
    read_checkpoint,
)
from medadapt.models.volumetric.registry import (
    VOLUMETRIC_MODELS,
    VolumetricSegmenter,
    VolumetricSpec,
    build_volumetric,
    get_volumetric_spec,
)
from medadapt.models.volumetric.text_head import (
    CLIP_DRIVEN_CLASSES,
    TextConditionedHead,
    embed_class_names,
    load_sentence_encoder,
)

__all__ = [
    "CLIP_DRIVEN_CLASSES",
    "FeatureCache",
    "HEAD_KINDS",
    "LinearProbe",
    "LoadReport",
    "SpatialAdapter",
    "TextConditionedHead",
    "VOLUMETRIC_MODELS",
    "VolumetricSegmenter",
    "VolumetricSpec",
    "black_box_head",
    "build_volumetric",
    "embed_class_names",
    "get_volumetric_spec",
    "load_volumetric_weights",
    "load_sentence_encoder",
    "match_classes",
    "normalise_state_dict",
    "read_checkpoint",
    "replace_head",
]
