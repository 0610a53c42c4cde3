"""Export a (base or adapted) SAM-family model to ONNX or OpenVINO IR as three graphs + a manifest.

finetune-SAM cannot export adapted models; medadapt folds LoRA into the base weights first
(``adapt.artifact.merge_adapter``; bottleneck adapters are non-linear and stay in the graph), then
writes ``image_encoder``, ``prompt_encoder``, ``mask_encoder`` (mask prompts) and ``mask_decoder``
with a dynamic batch axis, the decoder split for repeated decodes of one embedding (``decoder_image``
once per embedding, ``cached_decoder`` per set of prompts; see ``deploy.graphs``), the
never-changing decoder inputs once in ``constants.npz`` (dense positional encoding, the no-mask
dense prompt, learned class tokens of an automatic-mode adapter), and ``manifest.json`` with the
preprocessing, input size, graph I/O and a sha256 per file.

ONNX uses the TorchScript exporter (opset 17: one ``LayerNormalization`` node per norm). OpenVINO
IR is converted from the PyTorch modules directly (``openvino.convert_model``), which gave a faster
CPU graph than converting the ONNX file in our measurements. ``int8`` graphs are added by
``deploy.quantize`` (post-training quantisation calibrated on a few images); ONNX exports also
hold a dynamically quantised int8 mask decoder for fast interactive clicks (``decoder_precisions``).

OpenVINO exports of TinyViT-family encoders (LiteMedSAM, MobileSAM, the distilled students) also
hold the encoder split in two, ``image_encoder_stem`` (patch stem + the first
``MIXED_FP32_STAGES`` stages) and ``image_encoder_trunk`` (the rest + neck), for the ``mixed``
precision: stem in fp32, trunk in bf16. bf16 everywhere moved hippocampus DSC by -0.009 (12
volumes, 2D box per slice); the loss comes mostly from the high-resolution first stages (fp32
stem + stage 0: -0.005; + stage 1: -0.002) while the trunk holds most of the compute, so
``mixed`` keeps most of bf16's speed (bench/bench_inference.py).
"""

from __future__ import annotations

import copy
import json
import shutil
import tempfile
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medadapt.adapt.artifact import merge_adapter
from medadapt.deploy.graphs import (
    CachedDecoderGraph,
    DecoderGraph,
    DecoderImageGraph,
    EncoderGraph,
    EncoderStemGraph,
    EncoderTrunkGraph,
    MaskGraph,
    PromptGraph,
    TokenDecoderGraph,
    graph_file,
    prompt_constants,
)
from medadapt.deploy.quantize import quantize_decoder, quantize_encoder
from medadapt.errors import MedadaptError
from medadapt.io.atomic import write_json
from medadapt.io.hashing import file_sha256
from medadapt.models.registry import ModelSpec
from medadapt.models.sam.tiny_vit import StagedEncoder
from medadapt.optional import require

FORMATS = ("onnx", "openvino")
MANIFEST = "manifest.json"
CONSTANTS = "constants.npz"
GRAPHS = ("image_encoder", "prompt_encoder", "mask_encoder", "mask_decoder", "decoder_image", "cached_decoder")
# The decoder graphs an int8 decoder precision quantises (ONNX).
DECODER_GRAPHS = ("mask_decoder", "decoder_image", "cached_decoder")
MIXED_GRAPHS = ("image_encoder_stem", "image_encoder_trunk")
# Stages of a staged (TinyViT-family) encoder kept in fp32 by the ``mixed`` precision.
MIXED_FP32_STAGES = 2
OPSET = 17
# Precisions the mask decoder can run at, per format: ONNX holds an int8 graph (``deploy.quantize``),
# OpenVINO compiles the fp32 graph with a bf16 inference-precision hint.
DECODER_PRECISIONS = {"onnx": ("fp32", "int8"), "openvino": ("fp32", "bf16")}
INT8_DECODER = "token-order upscaling"  # how the int8 decoder was made; cached exports made otherwise are renewed


def _examples(model: nn.Module, image_size: int, consts: dict[str, np.ndarray]) -> dict[str, tuple[torch.Tensor, ...]]:
    grid = model.prompt_encoder.image_embedding_size
    image_pe, dense = torch.from_numpy(consts["image_pe"]), torch.from_numpy(consts["no_mask_dense"])
    with torch.no_grad():
        side = DecoderImageGraph(model.mask_decoder, image_pe, dense)(torch.zeros(1, 256, *grid))
    return {
        "image_encoder": (torch.zeros(2, 3, image_size, image_size),),
        "prompt_encoder": (torch.tensor([[[10.0, 12.0], [80.0, 90.0]]] * 2), torch.tensor([[2, 3]] * 2)),
        "mask_encoder": (torch.zeros(2, 1, 4 * grid[0], 4 * grid[1]),),
        "mask_decoder": (torch.zeros(1, 256, *grid), image_pe, torch.zeros(2, 2, 256), dense),
        "decoder_image": (torch.zeros(1, 256, *grid),),
        "cached_decoder": (*side, torch.zeros(1, 2, 256)),
    }


IO_NAMES = {
    "image_encoder": (["images"], ["embeddings"]),
    "prompt_encoder": (["coords", "labels"], ["sparse"]),
    "mask_encoder": (["masks"], ["dense"]),
    "mask_decoder": (["embeddings", "image_pe", "sparse", "dense"], ["masks", "iou"]),
    "decoder_image": (["embeddings"], ["keys", "k", "v", "q"]),
    "cached_decoder": (["keys", "k", "v", "q", "sparse"], ["masks", "iou"]),
    "image_encoder_stem": (["images"], ["tokens"]),
    "image_encoder_trunk": (["tokens"], ["embeddings"]),
}
DYNAMIC_AXES = {
    "image_encoder": {"images": {0: "batch"}, "embeddings": {0: "batch"}},
    "prompt_encoder": {"coords": {0: "batch", 1: "points"}, "labels": {0: "batch", 1: "points"},
                       "sparse": {0: "batch", 1: "points"}},
    "mask_encoder": {"masks": {0: "batch"}, "dense": {0: "batch"}},
    "mask_decoder": {"embeddings": {0: "image_batch"}, "sparse": {0: "batch", 1: "points"},
                     "dense": {0: "image_batch"}, "masks": {0: "batch"}, "iou": {0: "batch"}},
    "decoder_image": {},
    "cached_decoder": {"sparse": {1: "points"}},  # one prompt set: an interactive click
    "image_encoder_stem": {"images": {0: "batch"}, "tokens": {0: "batch"}},
    "image_encoder_trunk": {"tokens": {0: "batch"}, "embeddings": {0: "batch"}},
}


def _modules(model: nn.Module, consts: dict[str, np.ndarray]) -> dict[str, nn.Module]:
    image_pe, dense = torch.from_numpy(consts["image_pe"]), torch.from_numpy(consts["no_mask_dense"])
    return {
        "image_encoder": EncoderGraph(model.image_encoder).eval(),
        "prompt_encoder": PromptGraph(model.prompt_encoder).eval(),
        "mask_encoder": MaskGraph(model.prompt_encoder).eval(),
        "mask_decoder": DecoderGraph(model.mask_decoder).eval(),
        "decoder_image": DecoderImageGraph(model.mask_decoder, image_pe, dense).eval(),
        "cached_decoder": CachedDecoderGraph(DecoderGraph(model.mask_decoder), image_pe).eval(),
    }


def _int8_sources(model: nn.Module, consts: dict[str, np.ndarray]) -> dict[str, nn.Module]:
    """The graphs the int8 decoder graphs are quantised from: the decoders in token order (``TokenDecoderGraph``)."""
    image_pe, dense = torch.from_numpy(consts["image_pe"]), torch.from_numpy(consts["no_mask_dense"])
    return {
        "mask_decoder": TokenDecoderGraph(model.mask_decoder).eval(),
        "decoder_image": DecoderImageGraph(model.mask_decoder, image_pe, dense).eval(),
        "cached_decoder": CachedDecoderGraph(TokenDecoderGraph(model.mask_decoder), image_pe).eval(),
    }


def supports_mixed(model: nn.Module) -> bool:
    """Whether the image encoder can be split for the ``mixed`` precision (TinyViT family)."""

    enc = model.image_encoder
    return isinstance(enc, StagedEncoder) and len(enc.layers) > MIXED_FP32_STAGES


def _mixed_modules(model: nn.Module, image_size: int) -> dict[str, tuple[nn.Module, tuple]]:
    """The two halves of the encoder with their example inputs."""
    enc, n = model.image_encoder, MIXED_FP32_STAGES
    images = torch.zeros(2, 3, image_size, image_size)
    with torch.no_grad():
        tokens = enc.forward_stem(images, n)
    return {"image_encoder_stem": (EncoderStemGraph(enc, n).eval(), (images,)),
            "image_encoder_trunk": (EncoderTrunkGraph(enc, n).eval(), (tokens,))}


def _export_onnx(module: nn.Module, example: tuple, path: Path, name: str) -> None:
    require("onnx", extra="deploy", purpose="export --format onnx")  # torch.onnx writes through it
    inputs, outputs = IO_NAMES[name]
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # TorchScript tracer / deprecation chatter
        torch.onnx.export(
            module, example, str(path), input_names=inputs, output_names=outputs,
            dynamic_axes=DYNAMIC_AXES[name], opset_version=OPSET, dynamo=False,
        )


def _export_openvino(module: nn.Module, example: tuple, path: Path, name: str) -> None:
    ov = require("openvino", extra="deploy", purpose="export --format openvino")
    inputs, _ = IO_NAMES[name]
    shapes = []
    for input_name, tensor in zip(inputs, example, strict=True):
        dims = list(tensor.shape)
        for axis in DYNAMIC_AXES[name].get(input_name, {}):
            dims[axis] = -1
        shapes.append((input_name, ov.PartialShape(dims), ov.Type.i64 if tensor.dtype == torch.int64 else ov.Type.f32))
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        ov_model = ov.convert_model(module, example_input=example, input=shapes)
    for out, out_name in zip(ov_model.outputs, IO_NAMES[name][1], strict=True):
        out.get_tensor().set_names({out_name})
    ov.save_model(ov_model, str(path), compress_to_fp16=False)


def export_model(
    model: nn.Module,
    spec: ModelSpec,
    out: str | Path,
    *,
    fmt: str = "onnx",
    source: dict[str, Any] | None = None,
    classes: list[int] | None = None,
    calibration: np.ndarray | None = None,
    overwrite: bool = False,
    split_encoder: bool = True,
) -> Path:
    """Write the export folder ``out`` atomically; returns the manifest path.

    ``model`` is a ``Sam`` (possibly adapted; it is copied, then LoRA is merged into the copy).
    ``source`` (model name, checkpoint, adapter) goes into the manifest. ``classes``: the class ids
    of an automatic-mode adapter's class tokens. ``calibration`` ``[N, 3, S, S]`` preprocessed images
    add int8 image-encoder graphs (see ``deploy.quantize``). ``split_encoder=False`` skips the
    ``mixed`` precision's two encoder halves (~11 s for LiteMedSAM) when no one will ask for them.
    """

    if fmt not in FORMATS:
        raise MedadaptError(f"--format '{fmt}' is not one of {', '.join(FORMATS)}.", fix="use --format onnx or openvino")
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not ((out / MANIFEST).is_file() and overwrite):
        raise MedadaptError(
            "the export folder exists and is not empty.", path=out,
            fix="choose a new --out folder (or pass --overwrite to replace an earlier medadapt export).",
        )
    merged = merge_adapter(copy.deepcopy(model)).eval().float()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        consts = prompt_constants(merged.prompt_encoder)
        examples = _examples(merged, spec.image_size, consts)
        for name, module in _modules(merged, consts).items():
            target = tmp / graph_file(name, fmt)
            (_export_onnx if fmt == "onnx" else _export_openvino)(module, examples[name], target, name)
        precisions = ["fp32"]
        if split_encoder and fmt == "openvino" and supports_mixed(merged):
            for name, (module, example) in _mixed_modules(merged, spec.image_size).items():
                _export_openvino(module, example, tmp / graph_file(name, fmt), name)
            precisions.append("mixed")
        if getattr(merged, "class_prompts", None) is not None:
            consts["class_tokens"] = merged.class_prompts.tokens.detach().float().numpy()
        np.savez(tmp / CONSTANTS, **consts)
        if fmt == "onnx":  # the int8 decoder graphs, quantised from the token-order layout of the same decoder
            for name, module in _int8_sources(merged, consts).items():
                token_order = tmp / f".{name}.tokens.onnx"
                _export_onnx(module, examples[name], token_order, name)
                quantize_decoder(tmp, token_order, name)
                token_order.unlink()
        if calibration is not None:
            quantize_encoder(tmp, fmt, calibration)
            precisions.append("int8")
        manifest = {
            "format": fmt,
            "medadapt_export": 1,
            "model": spec.name,
            "spec": {k: v for k, v in asdict(spec).items() if k not in ("encoder_config", "aliases")},
            "image_size": spec.image_size,
            "embedding_grid": list(merged.prompt_encoder.image_embedding_size),
            "preprocessing": {"normalization": spec.normalization, "box_rounding": spec.box_rounding,
                              "resize": "longest side to image_size, pad bottom/right"},
            "precisions": precisions,
            "decoder_precisions": list(DECODER_PRECISIONS[fmt]),
            "int8_decoder": INT8_DECODER if fmt == "onnx" else None,
            "opset": OPSET if fmt == "onnx" else None,
            "graphs": {name: {"inputs": IO_NAMES[name][0], "outputs": IO_NAMES[name][1]}
                       for name in GRAPHS + (MIXED_GRAPHS if "mixed" in precisions else ())},
            "mixed_fp32_stages": MIXED_FP32_STAGES if "mixed" in precisions else None,
            "classes": classes,
            "source": source or {},
            "files": {p.name: file_sha256(p) for p in sorted(tmp.iterdir()) if p.is_file()},
        }
        write_json(tmp / MANIFEST, manifest)
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out / MANIFEST


def _replace_dir(new: Path, dest: Path) -> None:
    """Move the finished folder into place; an earlier export is removed only after the move."""
    old = None
    if dest.exists():
        old = dest.with_name(f".{dest.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        dest.rename(old)
    new.rename(dest)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def read_manifest(folder: str | Path, *, verify: bool = True) -> dict[str, Any]:
    """The manifest of an export folder; with ``verify`` every file's sha256 is checked."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        raise MedadaptError("is not a medadapt export folder (no manifest.json).", path=folder,
                            fix="pass the --out folder of `medadapt export`.")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise MedadaptError(f"manifest.json cannot be read ({err}).", path=path, fix="re-run `medadapt export`.") from None
    if verify:
        for name, digest in manifest.get("files", {}).items():
            f = folder / name
            if not f.is_file() or file_sha256(f) != digest:
                raise MedadaptError(
                    f"{name} is missing or does not match its checksum in manifest.json.", path=f,
                    fix="the export is incomplete or was modified; re-run `medadapt export`.",
                )
    return manifest
