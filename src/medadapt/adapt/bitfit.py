"""BitFit: train only the bias terms (Ben Zaken et al., ACL 2022).

Every parameter whose own name is ``bias`` counts, as in the paper: Linear, convolution and
normalisation biases. TinyViT's ``attention_biases`` (a relative-position table, not a bias
term) and LoRA/adapter biases added by other methods are not special-cased: the rule is the
name. Hand-written because peft has no BitFit tuner; it is three lines of ``requires_grad``.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from medadapt.adapt.freeze import resolve_roots

__all__ = ["unfreeze_biases"]


def unfreeze_biases(model: nn.Module, roots: str | Sequence[str] | None = None) -> list[str]:
    """Set ``requires_grad`` on every ``*.bias`` under ``roots`` (``None``: the whole model).

    Returns the unfrozen parameter names, relative to ``model``.
    """
    done = []
    for prefix, module in resolve_roots(model, roots):
        for name, p in module.named_parameters():
            if name.rpartition(".")[2] == "bias":
                p.requires_grad_(True)
                done.append(f"{prefix}.{name}" if prefix else name)
    return done
