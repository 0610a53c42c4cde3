"""The inference back-end of ``predict``: PyTorch, or an export on ONNX Runtime / OpenVINO (:func:`load_predictor`).

With ``--engine onnxruntime|openvino`` and no ``--export DIR``, the model (base + adapter) is
exported once into the medadapt cache, keyed by the sha256 of its merged weights, and reused by
later runs; int8 needs calibration images and therefore an explicit ``medadapt export``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import torch

from medadapt.deploy.export import INT8_DECODER, MANIFEST, export_model, read_manifest
from medadapt.deploy.runtime import DeployedSam, check_decoder_precision, check_engine, default_cache_root
from medadapt.errors import MedadaptError
from medadapt.infer.factory import PredictorSpec, compose, load_adapted_model
from medadapt.infer.factory import load_predictor as load_torch_predictor
from medadapt.infer.predictor import SamPredictor
from medadapt.models.registry import build_model, get_sam_spec
from medadapt.run import RunFolder, ensemble_members, is_ensemble, trained_slice_axis


def load_for_export(model: str | None, *, checkpoint: Path | None = None, adapter: Path | None = None):
    """(Sam, spec, source info, automatic-mode classes) of a base model or a fit run."""
    classes = None
    if adapter is not None and is_ensemble(adapter):
        members = ", ".join(str(m) for m in ensemble_members(adapter))
        raise MedadaptError("is an ensemble run: one exported model cannot hold its members.", path=adapter,
                            fix=f"export each SAM-family member run on its own ({members}).")
    if adapter is not None:
        net, name, meta = load_adapted_model(adapter, model=model, checkpoint=checkpoint)
        classes, keep_largest = RunFolder.resolve(adapter).automatic_mode()
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
                  cache_root: Path | None = None, precision: str = "fp32", decoder_precision: str = "fp32") -> Path:
    """The export folder of this model for ``engine``, created on first use.

    The split encoder of the ``mixed`` precision is only exported when that precision is asked
    for; a cached export without it is exported again then, as is one without a mask encoder or the split
    decoder (written before they were exported) or,
    when the int8 mask decoder is asked for, one whose int8 decoder was made another way (or is missing).
    """
    net, spec, source, classes = load_for_export(model, checkpoint=checkpoint, adapter=adapter)
    fmt = "onnx" if engine == "onnxruntime" else "openvino"
    folder = (cache_root or default_cache_root()) / "exports" / f"{spec.name}-{fmt}-{_weights_digest(net)}"
    manifest = folder / MANIFEST
    stale = False
    if manifest.is_file():
        cached = read_manifest(folder, verify=False)
        stale = ((precision == "mixed" and "mixed" not in cached["precisions"])
                 or (decoder_precision == "int8" and cached.get("int8_decoder") != INT8_DECODER)
                 or not {"mask_encoder", "cached_decoder"} <= set(cached.get("graphs", {})))  # older exports
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
    return base_encoder(opts.model, opts.encoder_engine, Path(opts.checkpoint) if opts.checkpoint else None)


def base_encoder(model: str, engine: str, checkpoint: Path | None = None) -> tuple[str, Callable[[torch.Tensor], torch.Tensor]]:
    """(fingerprint, encode) of the base ``model``'s image encoder exported (once, into the cache) to
    ``engine`` at fp32: the encoder of every adapter whose recipe leaves it frozen."""
    check_engine(engine, "fp32")
    folder = cached_export(model, engine=engine, checkpoint=checkpoint)
    deployed = DeployedSam(folder, engine=engine, precision="fp32")
    return deployed.fingerprint, deployed.encode


def load_predictor(spec: PredictorSpec):
    """The predictor ``spec`` describes, on its back-end and precision (several adapters: their ensemble).

    torch goes to :func:`medadapt.infer.factory.load_predictor`; ONNX Runtime / OpenVINO run an export
    (``spec.export``, else one exported once into the cache). Every setting is passed to the predictor's
    constructor; an adapter run's current post-processing choice wins over the one recorded at export time.
    """
    check_engine(spec.backend, spec.precision)
    check_decoder_precision(spec.backend, spec.decoder_precision)
    if spec.export is not None and len(spec.adapters) > 1:
        raise MedadaptError("--export is the folder of one exported model; an ensemble has one per --adapter.",
                            fix="drop --export (each member is exported once into the cache), or pass one --adapter.")
    if spec.backend == "torch":
        if spec.export is not None:
            raise MedadaptError("--export is an ONNX / OpenVINO folder; --engine torch does not use it.",
                                fix="add --engine openvino (or onnxruntime), or drop --export.")
        return load_torch_predictor(spec)
    return compose(spec, _runtime_member)


def _runtime_member(spec: PredictorSpec) -> SamPredictor:
    adapter = spec.adapters[0] if spec.adapters else None
    export = spec.export
    if export is None:
        if spec.precision == "int8":
            raise MedadaptError("--precision int8 needs an export quantised on calibration images.",
                                fix="run `medadapt export ... --int8-calibration DATA --out DIR`, then pass --export DIR.")
        export = cached_export(spec.model, engine=spec.backend, checkpoint=spec.checkpoint, adapter=adapter,
                               precision=spec.precision, decoder_precision=spec.decoder_precision)
    deployed = DeployedSam(export, engine=spec.backend, precision=spec.precision, threads=spec.threads,
                           cache_dir=spec.ov_cache, decoder_precision=spec.decoder_precision)
    automatic = deployed.class_prompts is not None
    run = RunFolder.resolve(adapter) if adapter is not None else None
    source = deployed.manifest.get("source", {})
    if spec.keep_largest is not None:
        keep = [int(c) for c in spec.keep_largest]
    else:
        keep = run.keep_largest() if run is not None else [int(c) for c in source.get("keep_largest", [])]
    axis = trained_slice_axis(run.read_adapter_meta()) if run is not None else source.get("slice_axis")
    return SamPredictor(
        deployed, get_sam_spec(deployed.manifest["model"]), batch_size=spec.batch_size, cache_dir=spec.cache_dir,
        use_cache=spec.use_cache, classes=deployed.manifest.get("classes") if automatic else None,
        keep_largest=keep if automatic else (), slice_axis=axis, mirror=spec.mirror,
        resize=spec.resize_for(adapter is not None or automatic or bool(source.get("adapter"))),
        roi_margin=spec.roi_margin,
    )
