"""Adapter-only artifacts: save, load onto a fresh base model, merge.

An artifact is a folder with two files, each written atomically:

- ``adapter.safetensors``: the trainable tensors only, under their names in the adapted model,
  plus the persistent buffers of modules that own a trainable parameter (BatchNorm running
  statistics when BatchNorm is trained). Kilobytes to a few MB for LoRA on LiteMedSAM.
- ``adapter.json``: the :class:`RecipeConfig` that rebuilds the trainable model, the base model
  (name, checkpoint sha256, image size), parameter counts, each tensor's shape and dtype, the
  safetensors file's sha256 (so a half-overwritten pair is detected), medadapt's version and
  free-form ``extra`` (metrics, task settings).

Loading re-applies the recipe to a base model the caller built, then copies the tensors in
strictly: a missing, unexpected or differently shaped tensor means the base differs and raises
:class:`MedadaptError`. Merging folds LoRA (ours and peft's) into the base weights so a LoRA
model gets exactly the official state-dict keys back; bottleneck adapters are non-linear and
cannot be folded, so they stay in the merged model.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

import medadapt
from medadapt.adapt.lora import merge_lora
from medadapt.adapt.peft_lora import merge_peft_lora
from medadapt.adapt.recipes import RecipeConfig, apply_recipe
from medadapt.errors import MedadaptError
from medadapt.io.atomic import atomic_path, write_json
from medadapt.io.hashing import file_sha256

__all__ = [
    "ADAPTER_JSON",
    "ADAPTER_TENSORS",
    "adapter_state_dict",
    "load_adapter",
    "merge_adapter",
    "merged_state_dict",
    "read_adapter_meta",
    "save_adapter",
    "warm_start",
]

ADAPTER_TENSORS = "adapter.safetensors"
ADAPTER_JSON = "adapter.json"
FORMAT = "medadapt.adapter"
FORMAT_VERSION = 1


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Trainable parameters, plus persistent buffers of the modules that own one (detached)."""
    out: dict[str, torch.Tensor] = {}
    for mname, module in model.named_modules():
        own = [(n, p) for n, p in module.named_parameters(recurse=False) if p.requires_grad]
        if not own:
            continue
        prefix = f"{mname}." if mname else ""
        for n, p in own:
            out.setdefault(prefix + n, p.detach())
        for n, b in module.named_buffers(recurse=False):
            if b is not None and n not in module._non_persistent_buffers_set:
                out.setdefault(prefix + n, b.detach())
    return out


def save_adapter(model: nn.Module, out_dir: str | Path, *, recipe: RecipeConfig, base: dict[str, Any],
                 extra: dict[str, Any] | None = None) -> Path:
    """Write ``adapter.safetensors`` + ``adapter.json`` into ``out_dir``; returns ``out_dir``.

    ``base`` identifies the base model, e.g. ``{"model": "litemedsam", "checkpoint_sha256": ...,
    "image_size": 256}``; :func:`load_adapter` can check it.
    """
    out_dir = Path(out_dir)
    tensors = adapter_state_dict(model)
    if not tensors:
        raise MedadaptError("the model has no trainable tensors to save", fix="apply a recipe before saving")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    table = {
        name: {"shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch."),
               "kind": "parameter" if name in trainable else "buffer"}
        for name, t in tensors.items()
    }
    cpu = {k: v.to("cpu").contiguous() for k, v in tensors.items()}
    tensor_path = out_dir / ADAPTER_TENSORS
    with atomic_path(tensor_path) as tmp:
        save_file(cpu, str(tmp), metadata={"format": "pt", "medadapt": FORMAT})
    n_total = sum(p.numel() for p in model.parameters())
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "medadapt_version": medadapt.__version__,
        "recipe": recipe.model_dump(mode="json"),
        "base": base,
        "params": {"trainable": n_train, "total": n_total, "saved_tensors": len(cpu),
                   "saved_elements": sum(t.numel() for t in cpu.values())},
        "files": {ADAPTER_TENSORS: {"sha256": file_sha256(tensor_path), "bytes": tensor_path.stat().st_size}},
        "tensors": table,
        "extra": extra or {},
    }
    write_json(out_dir / ADAPTER_JSON, meta)
    return out_dir


def read_adapter_meta(adapter_dir: str | Path) -> dict[str, Any]:
    """Read and check ``adapter.json`` (to learn the base model before building it)."""
    adapter_dir = Path(adapter_dir)
    path = adapter_dir / ADAPTER_JSON
    if not path.is_file():
        raise MedadaptError("not an adapter folder: adapter.json is missing", path=adapter_dir,
                            fix="point to the run folder of `medadapt fit` (or its adapter/ folder, which holds adapter.json)")
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise MedadaptError(f"adapter.json is not valid JSON ({err})", path=path) from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise MedadaptError("adapter.json is not a medadapt adapter description", path=path)
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise MedadaptError(f"adapter format version {meta['format_version']} is newer than this medadapt "
                            f"({medadapt.__version__}) reads", path=path, fix="upgrade medadapt")
    return meta


def _check_base(meta_base: dict[str, Any], base: dict[str, Any], path: Path) -> None:
    diff = [k for k in base if k in meta_base and meta_base[k] != base[k]]
    if diff:
        k = diff[0]
        raise MedadaptError(f"the adapter was trained on a different base model: {k} is {meta_base[k]!r} "
                            f"in the adapter, {base[k]!r} here", path=path,
                            fix=f"build the base model the adapter names ({meta_base})")


def load_adapter(model: nn.Module, adapter_dir: str | Path, *, base: dict[str, Any] | None = None) -> nn.Module:
    """Re-apply the saved recipe to ``model`` (a freshly built base) and load the adapter tensors.

    ``base``, when given, must agree with the ``base`` the adapter was saved with on every key
    both have. Returns ``model``, adapted in place.
    """
    adapter_dir = Path(adapter_dir)
    meta, recipe, tensors = _read_adapter(adapter_dir, base)
    apply_recipe(model, recipe)
    _copy_tensors(model, tensors, meta, adapter_dir / ADAPTER_TENSORS)
    return model


def warm_start(model: nn.Module, adapter_dir: str | Path, recipe: RecipeConfig, *,
               base: dict[str, Any] | None = None) -> nn.Module:
    """Copy a saved adapter's tensors into ``model``, which has ``recipe`` applied already: a fit that goes
    on from an earlier adapter (the same recipe) instead of from the base model. Returns ``model``."""
    adapter_dir = Path(adapter_dir)
    meta, saved, tensors = _read_adapter(adapter_dir, base)
    if saved.name != recipe.name:
        raise MedadaptError(f"the adapter to start from was trained with the recipe '{saved.name}', this fit "
                            f"uses '{recipe.name}'.", path=adapter_dir,
                            fix="start from an adapter of the same recipe, or from the base model.")
    _copy_tensors(model, tensors, meta, adapter_dir / ADAPTER_TENSORS)
    return model


def _read_adapter(adapter_dir: Path, base: dict[str, Any] | None) -> tuple[dict, RecipeConfig, dict[str, torch.Tensor]]:
    """(adapter.json, its recipe, the tensors) of an adapter folder, checked against ``base``."""
    meta = read_adapter_meta(adapter_dir)
    if base is not None:
        _check_base(meta.get("base") or {}, base, adapter_dir / ADAPTER_JSON)
    tensor_path = adapter_dir / ADAPTER_TENSORS
    if not tensor_path.is_file():
        raise MedadaptError(f"{ADAPTER_TENSORS} is missing", path=adapter_dir)
    want_sha = meta.get("files", {}).get(ADAPTER_TENSORS, {}).get("sha256")
    if want_sha and file_sha256(tensor_path) != want_sha:
        raise MedadaptError(f"{ADAPTER_TENSORS} does not belong to this adapter.json (checksum differs)",
                            path=tensor_path, fix="save the adapter again; the folder mixes two saves")
    try:
        recipe = RecipeConfig.model_validate(meta["recipe"])
    except (KeyError, ValidationError) as err:
        raise MedadaptError(f"adapter.json has no valid recipe ({err})", path=adapter_dir / ADAPTER_JSON) from None
    try:
        tensors = load_file(str(tensor_path))
    except (SafetensorError, OSError) as err:
        raise MedadaptError(f"cannot read {ADAPTER_TENSORS} ({err})", path=tensor_path) from None
    return meta, recipe, tensors


def _copy_tensors(model: nn.Module, tensors: dict[str, torch.Tensor], meta: dict, tensor_path: Path) -> None:
    """Copy the adapter tensors into the recipe's tensors of ``model``, strictly (names and shapes)."""
    expected = adapter_state_dict(model)
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    shapes = [k for k in expected.keys() & tensors.keys() if expected[k].shape != tensors[k].shape]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        if shapes:
            k = sorted(shapes)[0]
            parts.append(f"{len(shapes)} with another shape (e.g. {k}: {tuple(tensors[k].shape)} in the "
                         f"adapter, {tuple(expected[k].shape)} in the model)")
        raise MedadaptError("the adapter does not fit this base model: " + "; ".join(parts), path=tensor_path,
                            fix=f"build the base model the adapter was trained on ({meta.get('base')})")
    with torch.no_grad():
        for k, t in expected.items():
            t.copy_(tensors[k])
    model.train(model.training)  # refresh caches derived from weights (e.g. attention-bias tables)


def merge_adapter(model: nn.Module) -> nn.Module:
    """Fold LoRA (hand-written and peft) into the base weights, in place; returns ``model``.

    After merging, a LoRA-adapted model has exactly the base model's state-dict keys. Bottleneck
    adapters are non-linear (GELU between two projections) and are kept as they are.
    """
    merge_lora(model)
    merge_peft_lora(model)
    return model


def merged_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict of a merged copy of ``model``; ``model`` itself is left adapted."""
    merged = merge_adapter(copy.deepcopy(model))
    return {k: v.detach() for k, v in merged.state_dict().items()}
