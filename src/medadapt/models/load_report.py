"""What loading a checkpoint into a model did: one report for the SAM, ViT and volumetric loaders.

Every loader fills the fields that apply to it; key names are the model's. ``summary()`` is the
short line the loaders log and fits store in ``result.json``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class LoadReport:
    """What a checkpoint load did (keys in the model's names)."""

    source: str | None = None  # the file (or "<state dict>") the tensors came from
    layout: str | None = None  # detected checkpoint layout, where a loader knows several
    loaded: list[str] = field(default_factory=list)  # keys copied into the model
    missing: list[str] = field(default_factory=list)  # model keys left at their initial value
    unexpected: list[str] = field(default_factory=list)  # checkpoint keys the model has no use for
    dropped: list[str] = field(default_factory=list)  # keys both have but not loaded: a head, another shape
    resized: list[str] = field(default_factory=list)  # "key: old shape -> new shape" adapted to the model
    kept_buffers: list[str] = field(default_factory=list)  # integer buffers the file lacks (model's kept)
    extras: dict[str, torch.Tensor] = field(default_factory=dict)  # tensors kept aside (universal head)
    pretrained_head: dict[str, torch.Tensor] = field(default_factory=dict)  # {"weight", "bias"}

    def summary(self) -> str:
        """One line: counts per field, e.g. ``layout swinunetr: 160 tensors loaded, 0 missing, ...``."""
        head = f"layout {self.layout}: " if self.layout else (f"{self.source}: " if self.source else "")
        parts = [f"{len(self.loaded)} tensors loaded", f"{len(self.missing)} missing",
                 f"{len(self.unexpected)} unexpected", f"{len(self.dropped)} dropped"]
        if self.resized:
            parts.append(f"{len(self.resized)} resized")
        if self.kept_buffers:
            parts.append(f"{len(self.kept_buffers)} buffers kept")
        if self.extras:
            parts.append(f"{len(self.extras)} text-head tensors kept")
        return head + ", ".join(parts)

    def __str__(self) -> str:
        return self.summary()


__all__ = ["LoadReport"]
