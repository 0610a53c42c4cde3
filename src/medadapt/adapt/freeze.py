"""Freezing helpers shared by every adaptation method.

A recipe freezes the whole model, injects its modules, then unfreezes by name. These helpers
resolve names to modules with errors a user can act on (the closest existing names), count
parameters once even when they are shared, and keep frozen BatchNorm layers frozen.

Why :func:`freeze_bn_stats`: ``requires_grad=False`` does not stop a BatchNorm layer in
``train()`` mode from updating its running statistics, so a "frozen" TinyViT stem would drift
during LoRA training and the saved adapter would no longer reproduce the trained model.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence

from torch import nn

from medadapt.errors import MedadaptError

__all__ = [
    "count_trainable",
    "freeze_all",
    "freeze_bn_stats",
    "get_submodule",
    "resolve_roots",
    "trainable_names",
    "unfreeze",
    "unfreeze_named",
]

_BN_HOOK_ATTR = "_medadapt_bn_hook"


def freeze_all(model: nn.Module) -> None:
    """Set ``requires_grad=False`` on every parameter."""
    model.requires_grad_(False)


def unfreeze(module: nn.Module) -> None:
    """Set ``requires_grad=True`` on every parameter of ``module``."""
    module.requires_grad_(True)


def count_trainable(model: nn.Module) -> tuple[int, int]:
    """``(trainable, total)`` element counts; shared parameters are counted once."""
    trainable = total = 0
    for p in model.parameters():
        total += p.numel()
        if p.requires_grad:
            trainable += p.numel()
    return trainable, total


def trainable_names(model: nn.Module) -> list[str]:
    """Names of the parameters that require gradients, in ``named_parameters`` order."""
    return [n for n, p in model.named_parameters() if p.requires_grad]


def _suggest(model: nn.Module, name: str) -> str:
    names = [n for n, _ in model.named_modules() if n] + [n for n, _ in model.named_parameters()]
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
    if close:
        return "use one of the model's names, e.g. " + ", ".join(repr(c) for c in close)
    tops = [n for n, _ in model.named_children()]
    return "use a dotted name of a submodule; the top-level modules are " + ", ".join(tops)


def get_submodule(model: nn.Module, name: str) -> nn.Module:
    """``model.get_submodule`` with a :class:`MedadaptError` that lists the closest names."""
    try:
        return model.get_submodule(name)
    except AttributeError:
        raise MedadaptError(
            f"the model has no module named {name!r} ({type(model).__name__})", fix=_suggest(model, name)
        ) from None


def resolve_roots(model: nn.Module, roots: str | Sequence[str] | None) -> list[tuple[str, nn.Module]]:
    """Resolve one or several dotted module names (``""`` or ``None``: the whole model)."""
    if roots is None or roots == "":
        return [("", model)]
    if isinstance(roots, str):
        roots = [roots]
    return [(r, get_submodule(model, r)) for r in roots]


def unfreeze_named(model: nn.Module, names: Iterable[str]) -> list[str]:
    """Unfreeze each named module (all its parameters) or single parameter.

    Returns the parameter names that were unfrozen. An unknown name raises
    :class:`MedadaptError`; this is how a task registers extra trainable modules
    (learned prompt tokens, a new classification head).
    """
    params = dict(model.named_parameters())
    done: list[str] = []
    for name in names:
        if name in params:
            params[name].requires_grad_(True)
            done.append(name)
            continue
        module = get_submodule(model, name)
        unfreeze(module)
        done.extend(f"{name}.{n}" if name else n for n, _ in module.named_parameters())
    return done


def _keep_eval(module: nn.Module, args: tuple) -> None:
    if module.training:
        module.train(False)


def freeze_bn_stats(model: nn.Module) -> list[str]:
    """Keep the running statistics of frozen BatchNorm layers fixed, even under ``model.train()``.

    A BatchNorm layer counts as frozen when it has parameters and none of them is trainable
    (without affine parameters: when its parent has none trainable). Frozen layers get a forward
    pre-hook that switches them to eval mode, so they normalise with, and never update, their
    running statistics; the hooks of an earlier call are replaced. Returns the frozen layers' names.
    """
    parents = {f"{p}.{c}" if p else c: m for p, m in model.named_modules() for c, _ in m.named_children()}
    frozen: list[str] = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.modules.batchnorm._NormBase) or not module.track_running_stats:
            continue
        handle = getattr(module, _BN_HOOK_ATTR, None)
        if handle is not None:
            handle.remove()
            delattr(module, _BN_HOOK_ATTR)
        own = list(module.parameters(recurse=False))
        owner = module if own else parents.get(name, model)
        if any(p.requires_grad for p in owner.parameters()):
            continue
        setattr(module, _BN_HOOK_ATTR, module.register_forward_pre_hook(_keep_eval))
        frozen.append(name)
    return frozen

