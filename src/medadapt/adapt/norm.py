"""Norm tuning: train only the affine scale and shift of normalisation layers.

Covers ``nn.LayerNorm``, ``nn.GroupNorm``, BatchNorm and InstanceNorm (1d-3d), RMSNorm, and
layers that are norms by name only, such as SAM's channel-first ``LayerNorm2d`` and MONAI's
wrappers (any class whose name ends in ``Norm``, ``Norm1d``, ``Norm2d`` or ``Norm3d``). A
BatchNorm whose affine is trained also updates its running statistics in ``train()`` mode;
the artifact stores those buffers with it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from torch import nn

from medadapt.adapt.freeze import resolve_roots

__all__ = ["is_norm", "unfreeze_norms"]

_NORM_TYPES = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._NormBase, nn.RMSNorm)
_NORM_NAME = re.compile(r"Norm([123]d)?$")


def is_norm(module: nn.Module) -> bool:
    """True for normalisation layers (by type, or by a class name ending in ``Norm[123]d``)."""
    return isinstance(module, _NORM_TYPES) or bool(_NORM_NAME.search(type(module).__name__))


def unfreeze_norms(model: nn.Module, roots: str | Sequence[str] | None = None) -> list[str]:
    """Set ``requires_grad`` on the own parameters of every norm layer under ``roots``.

    Returns the unfrozen parameter names, relative to ``model``.
    """
    done = []
    for prefix, module in resolve_roots(model, roots):
        for name, m in module.named_modules():
            if not is_norm(m):
                continue
            for pname, p in m.named_parameters(recurse=False):
                p.requires_grad_(True)
                done.append(".".join(s for s in (prefix, name, pname) if s))
    return done
