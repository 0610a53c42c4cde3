"""LoRA on any named Linear / Conv1d-3d / Embedding through Hugging Face peft.

The general case (a 3D U-Net's convolutions, a classifier's MLP, every ``fc1`` of a Swin) is
peft's job: :func:`apply_peft_lora` builds a ``peft.LoraConfig`` and injects it in place with
``peft.inject_adapter_in_model``, so the model stays a plain ``nn.Module`` (no ``PeftModel``
wrapper) that recipes, artifacts and the training loop treat like any other. Targets follow
peft's rules: a list matches module names exactly or by dotted suffix (``["qkv", "fc1"]``), a
string is a regular expression that must match a whole module name.

peft's layers keep the base module as ``<name>.base_layer``, so an adapted model's base keys
gain that segment until :func:`merge_peft_lora` folds the update in and restores the originals.
peft is imported where used: it pulls in transformers and adds about 8 s to a start on 2 CPU cores.

Two peft 0.21 gaps are handled here. Merging a Conv3d whose kernel starts ``(1, 1, ...)`` (a
1x1x1 output convolution) takes peft's Conv2d-1x1 shortcut and crashes (huggingface/peft#3768,
fixed after 0.21 by #3777), so those layers are merged with the general formula below. And
peft's conv LoRA ignores the base layer's ``dilation`` and ``padding_mode`` (peft#3697), which
gives a wrong or failing update; such targets are refused before training starts.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from medadapt.errors import MedadaptError

__all__ = ["apply_peft_lora", "merge_peft_lora", "peft_lora_layers"]


def _adaptable(model: nn.Module) -> list[str]:
    kinds = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Embedding)
    return [n for n, m in model.named_modules() if isinstance(m, kinds)]


def apply_peft_lora(model: nn.Module, target_modules: Sequence[str] | str, rank: int = 8,
                    alpha: float | None = None, dropout: float = 0.0, *,
                    adapter_name: str = "default") -> list[str]:
    """Inject peft LoRA layers into ``model`` in place; returns the adapted modules' names.

    ``alpha`` defaults to ``rank`` (scaling 1). ``B`` starts at zero, so outputs are unchanged
    until training. peft also freezes every non-LoRA parameter of ``model``.
    """
    from peft import LoraConfig, inject_adapter_in_model

    if not target_modules:
        raise MedadaptError("peft LoRA needs target modules",
                            fix="pass --target-modules, e.g. 'qkv,proj' or a regular expression")
    if rank < 1:
        raise MedadaptError(f"LoRA rank must be at least 1, got {rank}")
    if peft_lora_layers(model):
        raise MedadaptError("the model already has peft LoRA layers", fix="apply the peft-lora recipe once per model")
    targets = target_modules if isinstance(target_modules, str) else list(target_modules)
    config = LoraConfig(r=rank, lora_alpha=float(rank if alpha is None else alpha), lora_dropout=dropout,
                        target_modules=targets, bias="none")
    try:
        inject_adapter_in_model(config, model, adapter_name=adapter_name)
    except ValueError as err:  # peft: no target found, or an unsupported layer type
        examples = ", ".join(_adaptable(model)[:6]) or "none"
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise MedadaptError(f"peft could not apply LoRA to {target_modules!r}: {reason}",
                            fix=f"name Linear/Conv/Embedding modules of the model, e.g. {examples}") from None
    names = peft_lora_layers(model)
    for name in names:  # peft creates its layers in training mode; follow the wrapped module
        layer = model.get_submodule(name)
        layer.train(layer.get_base_layer().training)
    bad = [n for n in names if _unsupported_conv(model.get_submodule(n).get_base_layer())]
    if bad:
        _unload(model, names)
        raise MedadaptError(f"peft LoRA would be wrong on {bad[0]}: it is a dilated or non-zero-padded convolution, "
                            "which peft's conv LoRA does not follow (peft issue #3697)",
                            fix="leave dilated / reflect-padded convolutions out of --target-modules")
    return names


def _unsupported_conv(base: nn.Module) -> bool:
    if not isinstance(base, nn.modules.conv._ConvNd):
        return False
    return any(d != 1 for d in base.dilation) or base.padding_mode != "zeros"


def _unload(model: nn.Module, names: list[str]) -> None:
    for name in names:
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, model.get_submodule(name).get_base_layer())
    if hasattr(model, "peft_config"):
        del model.peft_config


def peft_lora_layers(model: nn.Module) -> list[str]:
    """Names of the outermost peft tuner layers in ``model``."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    names: list[str] = []
    for name, m in model.named_modules():
        if isinstance(m, BaseTunerLayer) and not any(name.startswith(n + ".") for n in names):
            names.append(name)
    return names


def merge_peft_lora(model: nn.Module) -> list[str]:
    """Fold every peft LoRA layer into its base module and put the base module back, in place.

    The same steps as peft's ``LoraModel.merge_and_unload`` (which needs the tuner object that
    ``inject_adapter_in_model`` does not keep). Returns the merged modules' names.
    """
    names = peft_lora_layers(model)
    for name in names:
        layer = model.get_submodule(name)
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        if hasattr(layer, "unload_and_optionally_merge_module"):
            base = layer.unload_and_optionally_merge_module(merge=True, safe_merge=False, adapter_names=None)
        elif _pointwise_conv3d(layer):
            base = _merge_conv(layer)
        else:
            layer.merge()
            base = layer.get_base_layer()
        setattr(parent, child, base)
    if names and hasattr(model, "peft_config"):
        del model.peft_config
    return names


def _pointwise_conv3d(layer: nn.Module) -> bool:
    base = layer.get_base_layer()
    return isinstance(base, nn.Conv3d) and tuple(base.weight.shape[2:4]) == (1, 1)


@torch.no_grad()
def _merge_conv(layer: nn.Module) -> nn.Module:
    """``W += s * B @ A`` over the channel axes (B is 1x1x1), for every active adapter."""
    base = layer.get_base_layer()
    if base.groups != 1 or any(layer.use_dora.get(a, False) for a in layer.active_adapters):
        raise MedadaptError("cannot merge peft LoRA on a grouped or DoRA pointwise Conv3d with peft 0.21",
                            fix="keep the adapter unmerged, or upgrade peft")
    for a in layer.active_adapters:
        w_a = layer.lora_A[a].weight.float()  # [r, in, *k]
        w_b = layer.lora_B[a].weight.float().flatten(1)  # [out, r]
        delta = torch.einsum("or,ri...->oi...", w_b, w_a) * layer.scaling[a]
        base.weight += delta.to(base.weight.dtype)
        if layer.lora_bias.get(a, False):
            base.bias += layer.lora_B[a].bias * layer.scaling[a]
    return base
