"""Pick the inference engine for ``predict`` / ``evaluate``: PyTorch, or an export on ONNX Runtime / OpenVINO.

With ``--engine onnxruntime|openvino`` and no ``--export DIR``, the model (base + adapter) is
exported once into the medadapt cache, keyed by the sha256 of its merged weights, and reused by
later runs; int8 needs calibration images and therefore an explicit ``medadapt export``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from medadapt.adapt.artifact import read_adapter_meta
from medadapt.deploy.export import MANIFEST, export_model, read_manifest
from medadapt.deploy.runtime import DeployedSam, check_engine, default_cache_root
from medadapt.errors import MedadaptError
from medadapt.infer.ensemble import single_or_ensemble
from medadapt.infer.factory import (
    adapter_dir,
    automatic_mode,
    build_predictor,
    load_adapted_model,
    trained_slice_axis,
)
from medadapt.infer.predictor import SamPredictor
from medadapt.models.registry import build_model, get_sam_spec


def load_for_export(model: str | None, *, checkpoint: Path | None = None, adapter: Path | None = None):
    """(Sam, spec, source info, automatic-mode classes) of a base model or a fit run."""
    classes = None
    if adapter is not None:
        net, name, meta = load_adapted_model(adapter, model=model, checkpoint=checkpoint)
        classes, keep_largest = automatic_mode(meta)
        source = {"model": name, "checkpoint": str(checkpoint) if checkpoint else (meta.get("base") or {}).get("checkpoint"),
                  "adapter": str(Path(adapter).resolve()), "recipe": meta.get("recipe")}
        if classes:  # the automatic mode's post-processing travels with the export
            source["keep_largest"] = keep_largest
        source["slice_axis"] = trained_slice_axis(meta)
    else:
        name = model or "litemedsam"
        net = build_model(name, checkpoint=checkpoint)
        source = {"model": name, "checkpoint": str(checkpoint) if checkpoint else None, "adapter": None}
    return net.eval(), get_sam_spec(name), source, classes


def _weights_digest(net: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for key, tensor in sorted(net.state_dict().items()):
        h.update(key.encode())
        h.update(tensor.detach().float().contiguous().numpy().tobytes())
    return h.hexdigest()[:20]


def cached_export(model: str | None, *, engine: str, checkpoint=None, adapter=None,
                  cache_root: Path | None = None, precision: str = "fp32") -> Path:
    """The export folder of this model for ``engine``, created on first use.

    The split encoder of the ``mixed`` precision is only exported when that precision is asked
    for; a cached export without it is exported again then.
    """
    net, spec, source, classes = load_for_export(model, checkpoint=checkpoint, adapter=adapter)
    fmt = "onnx" if engine == "onnxruntime" else "openvino"
    folder = (cache_root or default_cache_root()) / "exports" / f"{spec.name}-{fmt}-{_weights_digest(net)}"
    manifest = folder / MANIFEST
    stale = precision == "mixed" and manifest.is_file() and "mixed" not in read_manifest(folder, verify=False)["precisions"]
    if not manifest.is_file() or stale:
        export_model(net, spec, folder, fmt=fmt, source=source, classes=classes, overwrite=True,
                     split_encoder=precision == "mixed")
    return folder


def frozen_encoder(opts) -> tuple[str, Callable[[torch.Tensor], torch.Tensor]]:
    """(cache tag, encode) of the fit's *base* model exported to ``opts.encoder_engine`` at fp32.

    For ``medadapt fit --encoder-engine openvino``: a frozen encoder's embeddings are computed once
    per slice, and fp32 OpenVINO computes them about twice as fast as eager PyTorch on a CPU, equal to
    it within float32 rounding (the cache stores them as float16 anyway).
    """
    engine = opts.encoder_engine
    check_engine(engine, "fp32")
    folder = cached_export(opts.model, engine=engine, checkpoint=Path(opts.checkpoint) if opts.checkpoint else None)
    deployed = DeployedSam(folder, engine=engine, precision="fp32")
    return deployed.fingerprint, deployed.encode


def build_engine_predictor(
    model: str | None,
    *,
    engine: str = "torch",
    precision: str = "fp32",
    export: Path | None = None,
    checkpoint: Path | None = None,
    adapter: Path | Sequence[Path] | None = None,
    batch_size: int | None = None,
    threads: int | None = None,
    cache_dir: Path | None = None,
    use_cache: bool = False,
    ov_cache: Path | None = None,
) -> SamPredictor:
    """A :class:`SamPredictor` on the chosen engine and precision (several adapters: their ensemble)."""
    check_engine(engine, precision)
    if adapter is not None and not isinstance(adapter, (str, Path)):
        if export is not None and len(adapter) > 1:
            raise MedadaptError("--export is the folder of one exported model; an ensemble has one per --adapter.",
                                fix="drop --export (each member is exported once into the cache), or pass one --adapter.")
        return single_or_ensemble(adapter, lambda a: build_engine_predictor(
            model, engine=engine, precision=precision, export=export, checkpoint=checkpoint, adapter=a,
            batch_size=batch_size, threads=threads, cache_dir=cache_dir, use_cache=use_cache, ov_cache=ov_cache))
    if engine == "torch":
        if export is not None:
            raise MedadaptError("--export is an ONNX / OpenVINO folder; --engine torch does not use it.",
                                fix="add --engine openvino (or onnxruntime), or drop --export.")
        return build_predictor(model, checkpoint=checkpoint, adapter=adapter, batch_size=batch_size,
                               precision=precision, cache_dir=cache_dir, use_cache=use_cache)
    if export is None:
        if precision == "int8":
            raise MedadaptError("--precision int8 needs an export quantised on calibration images.",
                                fix="run `medadapt export ... --int8-calibration DATA --out DIR`, then pass --export DIR.")
        export = cached_export(model, engine=engine, checkpoint=checkpoint, adapter=adapter, precision=precision)
    deployed = DeployedSam(export, engine=engine, precision=precision, threads=threads, cache_dir=ov_cache)
    spec = get_sam_spec(deployed.manifest["model"])
    classes = deployed.manifest.get("classes")
    predictor = SamPredictor(deployed, spec, batch_size=batch_size, cache_dir=cache_dir, use_cache=use_cache,
                             classes=classes if deployed.class_prompts is not None else None)
    # The adapter's current choices win over those recorded at export time.
    meta = read_adapter_meta(adapter_dir(adapter)) if adapter is not None else None
    source = deployed.manifest.get("source", {})
    if predictor.is_automatic:
        predictor.keep_largest = (automatic_mode(meta)[1] if meta is not None
                                  else [int(c) for c in source.get("keep_largest", [])])
    axis = trained_slice_axis(meta) if meta is not None else source.get("slice_axis")
    predictor.slice_axis = None if axis is None else int(axis)
    return predictor
