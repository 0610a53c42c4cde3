"""Build a ready :class:`SamPredictor` (or adapted model) from a model name, a checkpoint and an adapter run."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from torch import nn

from medadapt.errors import MedadaptError
from medadapt.infer.modality_bank import is_bank
from medadapt.infer.predictor import SamPredictor
from medadapt.models.registry import build_model, get_sam_spec


def automatic_mode(meta: dict) -> tuple[list[int] | None, list[int]]:
    """(classes, keep_largest) of an automatic-mode adapter's ``adapter.json``; (None, []) for a prompted one."""
    extra = meta.get("extra") or {}
    if extra.get("prompt") != "auto":
        return None, []
    return list(extra["classes"]), [int(c) for c in extra.get("keep_largest", [])]


def trained_slice_axis(meta: dict) -> int | None:
    """The volume axis an adapter's training slices were cut along (``fit --slice-axis``), None if by spacing."""
    axis = (meta.get("extra") or {}).get("slice_axis")
    return None if axis is None else int(axis)


def attach_auto_prompts(net: nn.Module, meta: dict) -> None:
    """Give ``net`` the class prompts an automatic-mode adapter trained (before its weights load)."""
    extra = meta.get("extra") or {}
    if extra.get("class_prompt_tokens"):
        from medadapt.engine.sam_task import attach_class_prompts

        attach_class_prompts(net, len(extra["classes"]), extra["class_prompt_tokens"], init=False)


def adapter_dir(path: Path) -> Path:
    """Accept a run folder (``RUN/adapter``) or the adapter folder itself."""
    path = Path(path)
    if (path / "adapter").is_dir():
        return path / "adapter"
    if (path / "adapter.json").is_file():
        return path
    raise MedadaptError(
        "is not a medadapt run or adapter folder (no adapter/adapter.json inside).",
        path=path,
        fix="pass the --out folder of `medadapt fit` once it has saved its best model.",
    )


def load_adapted_model(
    run: Path, *, model: str | None = None, checkpoint: Path | None = None
) -> tuple[nn.Module, str, dict]:
    """Base model + adapter of a fit run. Returns (model, model name, adapter metadata)."""
    from medadapt.adapt.artifact import load_adapter, read_adapter_meta

    folder = adapter_dir(run)
    meta = read_adapter_meta(folder)
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
        from medadapt.infer.ensemble import single_or_ensemble

        return single_or_ensemble(adapter, lambda a: build_predictor(
            model, checkpoint=checkpoint, adapter=a, batch_size=batch_size, precision=precision,
            cache_dir=cache_dir, use_cache=use_cache))
    classes, frozen_stages, keep_largest = None, 0, []
    if adapter is not None and is_bank(adapter):  # per-modality adapters, routed per case
        from medadapt.infer.modality_bank import load_bank_predictor

        return load_bank_predictor(adapter, model=model, checkpoint=checkpoint, batch_size=batch_size,
                                   precision=precision, cache_dir=cache_dir, use_cache=use_cache)
    if adapter is not None:
        net, model, meta = load_adapted_model(adapter, model=model, checkpoint=checkpoint)
        classes, keep_largest = automatic_mode(meta)
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
