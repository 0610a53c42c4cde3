"""Build a ready :class:`SamPredictor` (or adapted model) from a model name, a checkpoint and an adapter run."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from torch import nn

from medadapt.adapt.artifact import load_adapter
from medadapt.adapt.class_prompts import attach_auto_prompts
from medadapt.errors import MedadaptError
from medadapt.infer.ensemble import single_or_ensemble
from medadapt.infer.modality_bank import load_bank_predictor
from medadapt.infer.predictor import SamPredictor
from medadapt.models.registry import build_model, get_sam_spec
from medadapt.run import RunFolder, is_bank, trained_slice_axis


def load_adapted_model(
    run: Path, *, model: str | None = None, checkpoint: Path | None = None
) -> tuple[nn.Module, str, dict]:
    """Base model + adapter of a fit run. Returns (model, model name, adapter metadata)."""
    run_folder = RunFolder.resolve(run)
    folder, meta = run_folder.adapter_dir, run_folder.read_adapter_meta()
    base = meta.get("base") or {}
    name = model or base.get("model")
    if name is None:
        raise MedadaptError("adapter.json does not name its base model.", path=folder, fix="pass --model NAME.")
    if model is not None and base.get("model") not in (None, model):
        raise MedadaptError(
            f"this adapter was trained on '{base.get('model')}', not '{model}'.",
            path=folder,
            fix=f"use --model {base.get('model')} (or leave --model out).",
        )
    net = build_model(name, checkpoint=checkpoint or base.get("checkpoint"))
    attach_auto_prompts(net, meta)
    load_adapter(net, folder)
    return net.eval(), name, meta


def build_predictor(
    model: str | None,
    *,
    checkpoint: Path | None = None,
    adapter: Path | Sequence[Path] | None = None,
    batch_size: int | None = None,
    precision: str = "fp32",
    cache_dir: Path | None = None,
    use_cache: bool = False,
) -> SamPredictor:
    """The base ``model`` zero-shot, adapted by one fit run, or (several runs) their ensemble."""
    if adapter is not None and not isinstance(adapter, (str, Path)):

        return single_or_ensemble(adapter, lambda a: build_predictor(
            model, checkpoint=checkpoint, adapter=a, batch_size=batch_size, precision=precision,
            cache_dir=cache_dir, use_cache=use_cache))
    classes, frozen_stages, keep_largest = None, 0, []
    if adapter is not None and is_bank(adapter):  # per-modality adapters, routed per case

        return load_bank_predictor(adapter, model=model, checkpoint=checkpoint, batch_size=batch_size,
                                   precision=precision, cache_dir=cache_dir, use_cache=use_cache)
    if adapter is not None:
        net, model, meta = load_adapted_model(adapter, model=model, checkpoint=checkpoint)
        classes, keep_largest = RunFolder.resolve(adapter).automatic_mode()
        frozen_stages = int((meta.get("recipe") or {}).get("frozen_stages", 0))
    else:
        model = model or "litemedsam"
        net = build_model(model, checkpoint=checkpoint).eval()
    predictor = SamPredictor(
        net, get_sam_spec(model), batch_size=batch_size, precision=precision, cache_dir=cache_dir,
        use_cache=use_cache, classes=classes, frozen_stages=frozen_stages,
    )
    predictor.keep_largest = keep_largest
    if adapter is not None:
        predictor.slice_axis = trained_slice_axis(meta)
    return predictor
