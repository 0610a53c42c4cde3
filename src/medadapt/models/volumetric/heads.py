"""Heads on frozen decoder features: linear probe, black-box spatial adapters, feature cache.

These are the "black-box" adaptation baselines of FSEFT (Silva-Rodriguez et al., 2024): the
pretrained backbone stays frozen and untouched, only a small module on its last decoder features is
trained.

- :class:`LinearProbe`: a 1x1x1 ``Conv3d``. When the target organ is one the pretrained model
  segments, its rows of the pretrained classifier are the initialisation (the zero-shot solution).
- :class:`SpatialAdapter`: conv-ReLU-conv with 1x1x1 or 3x3x3 kernels added residually to the
  features; the last conv starts at zero so the adapted model starts as the pretrained one.
- :class:`FeatureCache`: with a frozen backbone, the features of a fixed crop never change, so they
  are computed once and the head trains on the cache alone.

They are tiny modules written here because neither MONAI nor peft has a "residual conv adapter on a
feature map" or a feature cache.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence

import torch
from torch import nn

from medadapt.errors import MedadaptError

__all__ = [
    "HEAD_KINDS",
    "FeatureCache",
    "LinearProbe",
    "SpatialAdapter",
    "black_box_head",
    "match_classes",
    "replace_head",
]


def _norm_name(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def match_classes(targets: Sequence[str], known: Sequence[str]) -> list[int | None]:
    """Row of each target class in the pretrained classifier, ``None`` when the model does not know it.

    Names match case-, space- and punctuation-insensitively (``"Gall Bladder"`` == ``"gallbladder"``).
    """
    index = {_norm_name(k): i for i, k in enumerate(known)}
    return [index.get(_norm_name(t)) for t in targets]


class LinearProbe(nn.Module):
    """1x1x1 convolution from decoder features to class logits."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.linear = nn.Conv3d(in_channels, out_channels, kernel_size=1)

    @classmethod
    def from_pretrained(
        cls, weight: torch.Tensor, bias: torch.Tensor | None, rows: Sequence[int | None]
    ) -> LinearProbe:
        """A probe whose output ``i`` copies pretrained row ``rows[i]`` (``None``: fresh init).

        ``weight`` is the pretrained classifier's ``[C_pre, F, 1, 1, 1]`` (or ``[C_pre, F]``) tensor.
        Fresh rows are Xavier-initialised with zero bias, as FSEFT does for the background row.
        """
        weight = weight.detach().reshape(weight.shape[0], -1)  # [C_pre, F]
        probe = cls(weight.shape[1], len(rows))
        with torch.no_grad():
            w = probe.linear.weight.view(len(rows), -1)
            for i, row in enumerate(rows):
                if row is None:
                    nn.init.xavier_uniform_(w[i : i + 1])
                    probe.linear.bias[i] = 0.0
                    continue
                if not 0 <= row < weight.shape[0]:
                    raise MedadaptError(
                        f"pretrained classifier has {weight.shape[0]} rows, asked for row {row}"
                    )
                w[i] = weight[row]
                probe.linear.bias[i] = 0.0 if bias is None else bias[row]
        return probe

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)  # [B, F, D, H, W] -> [B, C, D, H, W]


class SpatialAdapter(nn.Module):
    """Residual conv-ReLU-conv adapter on a feature map; identity at initialisation."""

    def __init__(self, channels: int, kernel_size: int = 1, *, residual: bool = True):
        super().__init__()
        if kernel_size not in (1, 3):
            raise MedadaptError(f"spatial adapter kernel must be 1 or 3, got {kernel_size}")
        self.residual = residual
        self.adapter = nn.Sequential(
            nn.Conv3d(channels, channels, kernel_size, padding="same", bias=False),
            nn.ReLU(),
            nn.Conv3d(channels, channels, kernel_size, padding="same", bias=False),
        )
        nn.init.zeros_(self.adapter[-1].weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.adapter(x)
        return x + out if self.residual else out


def black_box_head(probe: LinearProbe, adapter_kernel: int | None = None) -> nn.Sequential:
    """``[SpatialAdapter] -> LinearProbe``, the FSEFT black-box head (adapter ``None``, 1 or 3)."""
    channels = probe.linear.in_channels
    modules: list[nn.Module] = [] if adapter_kernel is None else [SpatialAdapter(channels, adapter_kernel)]
    return nn.Sequential(*modules, probe)


class FeatureCache:
    """Backbone features of fixed inputs, computed once (no grad, eval mode) and kept on CPU.

    ``extract`` is the model's feature function (``VolumetricSegmenter.extract``), returning a tuple of
    tensors. Only valid while the backbone is frozen: the cache refuses to fill if any backbone
    parameter requires grad. ``dtype=torch.float16`` halves the memory of a full-resolution cache;
    features are returned in float32.
    """

    def __init__(
        self,
        extract: Callable[[torch.Tensor], tuple[torch.Tensor, ...]],
        backbone: nn.Module,
        *,
        dtype: torch.dtype = torch.float32,
        max_items: int | None = None,
    ):
        self._extract = extract
        self._backbone = backbone
        self._dtype = dtype
        self._max_items = max_items
        self._items: OrderedDict[Hashable, tuple[torch.Tensor, ...]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._items

    def get(self, key: Hashable, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Features of ``image`` ([1, C, D, H, W]) under ``key``; computed on first use."""
        return self.get_many([key], image)[0]

    def get_many(
        self, keys: Sequence[Hashable], images: torch.Tensor, *, chunk: int = 4
    ) -> list[tuple[torch.Tensor, ...]]:
        """Features of ``images`` ([N, C, D, H, W], one per key), missing ones computed ``chunk`` at a time.

        Batching matters on CPU: PyTorch runs a batch of one small 3D feature map through its slow
        native conv3d, and two or more through oneDNN.
        """
        missing = [i for i, k in enumerate(keys) if k not in self._items]
        if missing:
            self._check_frozen()
            was_training = self._backbone.training
            self._backbone.eval()
            try:
                with torch.no_grad():
                    for start in range(0, len(missing), chunk):
                        idx = missing[start : start + chunk]
                        feats = self._extract(images[idx])
                        for j, i in enumerate(idx):
                            self._store(keys[i], tuple(f[j : j + 1] for f in feats))
            finally:
                self._backbone.train(was_training)
        device = images.device
        return [tuple(f.to(device, torch.float32) for f in self._items[k]) for k in keys]

    def _check_frozen(self) -> None:
        if any(p.requires_grad for p in self._backbone.parameters()):
            raise MedadaptError(
                "cannot cache features of a backbone that is being trained",
                fix="freeze the backbone (black-box heads, linear probe) or disable the feature cache",
            )

    def _store(self, key: Hashable, feats: tuple[torch.Tensor, ...]) -> None:
        self._items[key] = tuple(f.detach().to("cpu", self._dtype).clone() for f in feats)
        if self._max_items is not None and len(self._items) > self._max_items:
            self._items.popitem(last=False)

    def clear(self) -> None:
        self._items.clear()


HEAD_KINDS = ("pretrained", "linear", "adapter1", "adapter3")


def replace_head(
    model: nn.Module,
    kind: str,
    out_channels: int,
    *,
    rows: Sequence[int | None] | None = None,
    pretrained: dict[str, torch.Tensor] | None = None,
) -> nn.Module:
    """Give a :class:`~.registry.VolumetricSegmenter` a new head; returns the head.

    ``kind``: ``pretrained`` (keep the current head, which must have ``out_channels`` outputs),
    ``linear`` (1x1x1 probe), ``adapter1`` / ``adapter3`` (spatial adapter, then probe). ``rows``
    picks the pretrained classifier rows of each output (``None`` entries: fresh init); the classifier
    comes from ``pretrained`` (``{"weight", "bias"}``, default ``model.load_report.pretrained_head``).
    """
    if kind not in HEAD_KINDS:
        raise MedadaptError(f"unknown head {kind!r}", fix=f"use one of: {', '.join(HEAD_KINDS)}")
    if kind == "pretrained":
        out = getattr(model.head, "out_channels", None) or model.head.conv.conv.out_channels
        if out != out_channels:
            raise MedadaptError(
                f"the pretrained head has {out} outputs, the task needs {out_channels}",
                fix="use head 'linear' (optionally initialised from the pretrained rows)",
            )
        return model.head
    if rows is not None:
        if pretrained is None:
            report = getattr(model, "load_report", None)
            pretrained = report.pretrained_head if report is not None else {}
        if "weight" not in pretrained:
            raise MedadaptError(
                "no pretrained classifier to take rows from", fix="load a checkpoint with one"
            )
        if len(rows) != out_channels:
            raise MedadaptError(f"{len(rows)} pretrained rows given for {out_channels} outputs")
        probe = LinearProbe.from_pretrained(pretrained["weight"], pretrained.get("bias"), rows)
    else:
        probe = LinearProbe(model.feature_channels, out_channels)
    model.head = probe if kind == "linear" else black_box_head(probe, 1 if kind == "adapter1" else 3)
    return model.head
