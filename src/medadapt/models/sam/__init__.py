"""SAM-family networks as plain PyTorch modules with the official state-dict layout.

``image_encoder`` (SAM ViT-B/L/H), ``tiny_vit`` (MobileSAM, LiteMedSAM), ``prompt_encoder``,
``transformer`` and ``mask_decoder`` are the components; ``sam.Sam`` joins them.
"""

from medadapt.models.sam.image_encoder import VIT_B, VIT_H, VIT_L, ImageEncoderViT, ViTConfig
from medadapt.models.sam.mask_decoder import MaskDecoder
from medadapt.models.sam.prompt_encoder import PromptEncoder
from medadapt.models.sam.sam import Sam, build_sam
from medadapt.models.sam.tiny_vit import LITEMEDSAM_TINYVIT, MOBILESAM_TINYVIT, TinyViT, TinyViTConfig
from medadapt.models.sam.transformer import TwoWayTransformer

__all__ = [
    "LITEMEDSAM_TINYVIT",
    "MOBILESAM_TINYVIT",
    "VIT_B",
    "VIT_H",
    "VIT_L",
    "ImageEncoderViT",
    "MaskDecoder",
    "PromptEncoder",
    "Sam",
    "TinyViT",
    "TinyViTConfig",
    "TwoWayTransformer",
    "ViTConfig",
    "build_sam",
]
