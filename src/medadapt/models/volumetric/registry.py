"""Volumetric backbones by name: MONAI architecture, checkpoint loading, preprocessing.

``swinunetr``
    MONAI ``SwinUNETR`` with ``feature_size=48`` at 96^3 crops and 1.5 mm spacing: the architecture of
    the MONAI SSL encoder, the CLIP-driven universal model, FSEFT and SuPreM.
``unet3d``
    MONAI ``DynUNet`` in its nnU-Net configuration (5 levels, filters 32..320, instance norm), a plain
    convolutional 3D U-Net.

Every model is returned as a :class:`VolumetricSegmenter`: the MONAI network with its final 1x1x1
output block split off as ``head``. The backbone then returns decoder features, so heads can be
swapped (linear probe, spatial adapters, text-conditioned head) and features cached while the backbone
is frozen; ``model.head`` keeps the pretrained classifier until it is replaced.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from monai.networks.nets import DynUNet, SwinUNETR
from torch import nn

from medadapt.data.transforms3d import VolumePreprocessing
from medadapt.errors import MedadaptError
from medadapt.models.volumetric.layouts import LoadReport, load_volumetric_weights

__all__ = ["VOLUMETRIC_MODELS", "VolumetricSegmenter", "VolumetricSpec", "build_volumetric", "get_volumetric_spec"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VolumetricSpec:
    """One registered architecture: how to build it, where its parts are, how to feed it."""

    name: str
    build: Callable[..., nn.Module]  # (in_channels, out_channels, **overrides) -> MONAI network
    defaults: dict
    head_attr: str  # the MONAI output block, split off as ``VolumetricSegmenter.head``
    bottleneck_attr: str  # deepest feature map (global context for text-conditioned heads)
    encoder_attrs: tuple[str, ...]  # inside the MONAI network, for recipes and freezing
    decoder_attrs: tuple[str, ...]
    roi_size: tuple[int, int, int] = (96, 96, 96)
    preprocessing: VolumePreprocessing = field(default_factory=VolumePreprocessing)
    # "lora" on this backbone: a recipe name, and for peft-lora its default targets (a regex)
    lora_recipe: str = "encoder-lora"
    lora_targets: str | None = None

    def feature_channels(self, **overrides) -> int:
        return self._channels(overrides)[0]

    def bottleneck_channels(self, **overrides) -> int:
        return self._channels(overrides)[1]

    def size_divisor(self, **overrides) -> int:
        """Each input side must be a multiple of this (total downsampling of the network)."""
        cfg = {**self.defaults, **overrides}
        if "strides" in cfg:
            return int(np.prod([s if isinstance(s, int) else max(s) for s in cfg["strides"]]))
        return 2**5  # Swin UNETR: patch 2, then 4 merges

    def _channels(self, overrides: dict) -> tuple[int, int]:
        cfg = {**self.defaults, **overrides}
        if "feature_size" in cfg:
            return cfg["feature_size"], 16 * cfg["feature_size"]
        return cfg["filters"][0], cfg["filters"][-1]


def _build_swinunetr(in_channels: int, out_channels: int, **cfg) -> nn.Module:
    if "img_size" in inspect.signature(SwinUNETR.__init__).parameters:
        cfg.setdefault("img_size", (96, 96, 96))  # required before MONAI 1.5
    else:
        cfg.pop("img_size", None)  # removed in MONAI 1.5: any multiple of 32 works
    return SwinUNETR(in_channels=in_channels, out_channels=out_channels, **cfg)


def _build_dynunet(in_channels: int, out_channels: int, **cfg) -> nn.Module:
    strides = cfg.pop("strides")
    kernels = cfg.pop("kernel_size", [3] * len(strides))
    return DynUNet(
        spatial_dims=3,
        in_channels=in_channels,
        out_channels=out_channels,
        kernel_size=kernels,
        strides=strides,
        upsample_kernel_size=strides[1:],
        **cfg,
    )


VOLUMETRIC_MODELS: dict[str, VolumetricSpec] = {
    "swinunetr": VolumetricSpec(
        name="swinunetr",
        build=_build_swinunetr,
        defaults={"feature_size": 48, "depths": (2, 2, 2, 2), "num_heads": (3, 6, 12, 24)},
        head_attr="out",
        bottleneck_attr="encoder10",
        encoder_attrs=("swinViT",),
        decoder_attrs=(
            "encoder1",
            "encoder2",
            "encoder3",
            "encoder4",
            "encoder10",
            "decoder5",
            "decoder4",
            "decoder3",
            "decoder2",
            "decoder1",
        ),
        roi_size=(96, 96, 96),
    ),
    "unet3d": VolumetricSpec(
        name="unet3d",
        build=_build_dynunet,
        defaults={
            "strides": [1, 2, 2, 2, 2],
            "filters": [32, 64, 128, 256, 320],
            "norm_name": ("INSTANCE", {"affine": True}),
            "res_block": False,
        },
        head_attr="output_block",
        bottleneck_attr="bottleneck",
        encoder_attrs=("input_block", "downsamples", "bottleneck"),
        decoder_attrs=("upsamples",),
        roi_size=(96, 96, 96),
        lora_recipe="peft-lora",  # no attention: LoRA on every encoder Conv3d
        lora_targets=r"backbone\.(input_block|downsamples\.\d+|bottleneck)\.conv[12]\.conv",
    ),
}


def get_volumetric_spec(name: str) -> VolumetricSpec:
    try:
        return VOLUMETRIC_MODELS[name]
    except KeyError:
        raise MedadaptError(
            f"unknown volumetric model {name!r}", fix=f"use one of: {', '.join(VOLUMETRIC_MODELS)}"
        ) from None


class VolumetricSegmenter(nn.Module):
    """A MONAI segmenter split into ``backbone`` (input -> decoder features) and ``head``.

    ``extract`` returns what the head consumes: ``(dense,)``, or ``(dense, bottleneck)`` for a head
    with ``uses_bottleneck = True`` (the text-conditioned head pools the deepest feature map for its
    per-image context). ``forward(x) == apply_head(*extract(x))``.
    """

    def __init__(
        self,
        backbone: nn.Module,
        head: nn.Module,
        spec: VolumetricSpec,
        feature_channels: int,
        bottleneck_channels: int,
        size_divisor: int,
    ):
        super().__init__()
        self.size_divisor = size_divisor
        self.backbone = backbone
        self.head = head
        self.spec = spec
        self.feature_channels = feature_channels
        self.bottleneck_channels = bottleneck_channels
        self.load_report: LoadReport | None = None

    @property
    def encoder_attrs(self) -> tuple[str, ...]:
        return tuple(f"backbone.{a}" for a in self.spec.encoder_attrs)

    @property
    def decoder_attrs(self) -> tuple[str, ...]:
        return tuple(f"backbone.{a}" for a in self.spec.decoder_attrs)

    def check_input(self, shape: Sequence[int]) -> None:
        bad = [s for s in shape[-3:] if s % self.size_divisor]
        if bad:
            raise MedadaptError(
                f"{self.spec.name} needs every side to be a multiple of {self.size_divisor}, got {tuple(shape[-3:])}",
                fix="pad the input or choose another roi size",
            )

    def extract(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        # x: [B, C_in, D, H, W] -> dense [B, F, D, H, W] (+ bottleneck [B, F_b, D/16 or /32, ...])
        if not getattr(self.head, "uses_bottleneck", False):
            return (self.backbone(x),)
        captured: list[torch.Tensor] = []
        hook = self.backbone.get_submodule(self.spec.bottleneck_attr).register_forward_hook(
            lambda _m, _i, out: captured.append(out)
        )
        try:
            dense = self.backbone(x)
        finally:
            hook.remove()
        return dense, captured[-1]

    def apply_head(self, *features: torch.Tensor) -> torch.Tensor:
        return self.head(*features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.apply_head(*self.extract(x))


def build_volumetric(
    name: str,
    out_channels: int,
    *,
    checkpoint: str | Path | None = None,
    in_channels: int = 1,
    **arch_overrides,
) -> VolumetricSegmenter:
    """Build a registered 3D segmenter, optionally loading a published checkpoint.

    ``arch_overrides`` go to the MONAI constructor (e.g. ``feature_size=12, depths=(1, 1, 1, 1)`` for
    a tiny test model). The checkpoint is loaded into the MONAI network before its head is split off,
    so all published layouts map onto MONAI names (see :mod:`.layouts`); the report is kept as
    ``model.load_report`` and logged.
    """
    spec = get_volumetric_spec(name)
    if out_channels < 1:
        raise MedadaptError(f"out_channels must be >= 1, got {out_channels}")
    cfg = {**spec.defaults, **arch_overrides}
    try:
        net = spec.build(in_channels, out_channels, **dict(cfg))
    except (TypeError, ValueError) as exc:
        raise MedadaptError(f"cannot build {name} with {arch_overrides}: {exc}") from None
    report = None
    if checkpoint is not None:
        report = load_volumetric_weights(net, checkpoint)
        log.info("%s: %s", checkpoint, report.summary())
    head = getattr(net, spec.head_attr)
    setattr(net, spec.head_attr, nn.Identity())
    model = VolumetricSegmenter(
        net,
        head,
        spec,
        spec.feature_channels(**arch_overrides),
        spec.bottleneck_channels(**arch_overrides),
        spec.size_divisor(**arch_overrides),
    )
    model.load_report = report
    return model
