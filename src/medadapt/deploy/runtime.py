"""Run an exported model with ONNX Runtime or OpenVINO behind the ``Sam`` interface.

:class:`DeployedSam` has ``encode`` / ``decode`` (and ``class_prompts.decode`` for automatic-mode
exports) with the same tensors in and out as ``models.sam.Sam``, so ``infer.SamPredictor`` and all
of its 2D / 3D features (embedding cache, batched slices, CVPR24 box propagation, automatic mode)
run unchanged on either engine. Precision applies to the image encoder, >95 % of the compute:

- ``onnxruntime``: ``fp32``, ``int8`` (graph quantised at export); it has no bf16 CPU kernels.
- ``openvino``: ``fp32``, ``bf16`` (inference-precision hint; needs a CPU with bf16, e.g. AVX512-BF16
  or AMX), ``mixed`` (TinyViT-family encoders: the high-resolution stem and first stages in fp32,
  the rest in bf16; nearly bf16's speed at fp32's DSC, see ``deploy.export``), ``int8`` (NNCF graph
  from export). Compiled models are kept in a cache directory so later runs skip compilation.
The prompt encoder runs in fp32. The mask decoder (what an interactive click waits for) runs in fp32
unless ``decoder_precision`` asks for ONNX Runtime's int8 decoder graph (every ONNX export holds one,
see ``deploy.quantize``) or OpenVINO's bf16 hint: faster, not equal (bench/bench_interactive.py).
Like ``Sam``, it hands out an embedding's prompt-free decoder work (``decoder_image``, the export's
``decoder_image`` graph) for callers that decode one embedding many times; ``decode`` then runs the
smaller ``cached_decoder`` graph, with the same result as the full decoder graph.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from medadapt.deploy.export import CONSTANTS, DECODER_GRAPHS, DECODER_PRECISIONS, read_manifest
from medadapt.deploy.graphs import graph_file, labelled_points
from medadapt.errors import MedadaptError
from medadapt.io.hashing import file_sha256
from medadapt.models.sam.sam import tensor_key
from medadapt.optional import require

ENGINES = ("torch", "onnxruntime", "openvino")
PRECISIONS = ("fp32", "bf16", "mixed", "int8")
SUPPORTED = {
    "torch": ("fp32", "bf16"),
    "onnxruntime": ("fp32", "int8"),
    "openvino": ("fp32", "bf16", "mixed", "int8"),
}


def check_engine(engine: str, precision: str) -> None:
    if engine not in ENGINES:
        raise MedadaptError(f"--engine '{engine}' is not one of {', '.join(ENGINES)}.", fix="use --engine openvino")
    if precision not in SUPPORTED[engine]:
        hint = {"int8": "export with --int8-calibration DATA and use --engine openvino or onnxruntime",
                "bf16": "use --engine openvino (or torch) for bf16",
                "mixed": "use --engine openvino for mixed precision"}.get(precision, "use --precision fp32")
        raise MedadaptError(
            f"--engine {engine} has no --precision {precision} (it supports {', '.join(SUPPORTED[engine])}).",
            fix=hint,
        )


def check_decoder_precision(engine: str, precision: str) -> None:
    """Refuse a mask-decoder precision ``engine`` has no graph or hint for (torch: fp32 only)."""
    supported = ("fp32",) if engine == "torch" else DECODER_PRECISIONS["onnx" if engine == "onnxruntime" else "openvino"]
    if precision not in supported:
        other = {"int8": "--engine onnxruntime", "bf16": "--engine openvino"}.get(precision)
        raise MedadaptError(
            f"--engine {engine} has no --decoder-precision {precision} (it supports {', '.join(supported)}).",
            fix=f"use {other} for the {precision} mask decoder" if other else "use --decoder-precision fp32",
        )


def cpu_has_bf16() -> bool:
    ov = require("openvino", extra="deploy", purpose="checking the CPU for bf16")
    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


# ONNX Runtime fuses residual Add + LayerNorm into SkipLayerNormalization where shapes are static (the cached
# decoder); on the image tokens that kernel made the cached decoder call 15-35 % slower (fp32 / int8, 1 or 2
# threads; the full decoder graph unchanged: bench/bench_decoder_graphs.py), so decoder graphs run without it.
DECODER_DISABLED_OPTIMIZERS = ("SkipLayerNormFusion",)

# ONNX Runtime's worker threads spin after a call, waiting for the next one. The prompt and decoder graphs are
# small calls with Python / torch work between them (box derivation, mask resizing), so a spinning worker only
# takes a core from that work and from the next graph's own session: with spinning off for every graph but the
# image encoder, a click through the whole exported pipeline re-decodes a slice faster (int8 and fp32 decoders) and
# an object's start (encoding its slices, decoding them) is no slower (bench/bench_click_pipeline.py).
DECODER_SPINNING = False


class OrtGraph:
    """One ONNX graph in an ONNX Runtime session (fixed thread count, all graph optimisations but ``disabled``;
    ``spinning``: worker threads spin between calls, ONNX Runtime's default)."""

    def __init__(self, path: Path, threads: int | None, disabled: tuple[str, ...] = (), spinning: bool = True):
        ort = require("onnxruntime", extra="deploy", purpose="--engine onnxruntime")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = int(threads)
            options.inter_op_num_threads = 1
        if not spinning:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        extra = {"disabled_optimizers": list(disabled)} if disabled else {}
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"], **extra)
        self.inputs = [i.name for i in self.session.get_inputs()]

    def __call__(self, *arrays: np.ndarray) -> list[np.ndarray]:
        return self.session.run(None, dict(zip(self.inputs, arrays, strict=True)))


class OvGraph:
    """One OpenVINO IR compiled for the CPU with a precision hint; one reusable infer request."""

    def __init__(self, path: Path, threads: int | None, precision: str, cache_dir: Path | None):
        ov = require("openvino", extra="deploy", purpose="--engine openvino")
        core = ov.Core()
        if cache_dir is not None:
            Path(cache_dir).mkdir(parents=True, exist_ok=True)
            core.set_property({"CACHE_DIR": str(cache_dir)})
        config = {"INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32", "PERFORMANCE_HINT": "LATENCY"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        self.compiled = core.compile_model(str(path), "CPU", config)
        self.request = self.compiled.create_infer_request()

    def __call__(self, *arrays: np.ndarray) -> list[np.ndarray]:
        result = self.request.infer(list(arrays), share_inputs=True)
        return [np.array(result[out]) for out in self.compiled.outputs]


class _Chain:
    """Two graphs run one after the other (the ``mixed`` encoder: fp32 stem, then bf16 trunk)."""

    def __init__(self, first, second):
        self.first, self.second = first, second

    def __call__(self, *arrays: np.ndarray) -> list[np.ndarray]:
        return self.second(*self.first(*arrays))


class _ClassPrompts:
    """Automatic mode of an export: the stored class tokens through the decoder graph."""

    def __init__(self, tokens: np.ndarray):
        self.tokens = tokens.astype(np.float32)  # [C, T, 256]
        self.num_classes = tokens.shape[0]

    def decode(self, model: DeployedSam, embeddings: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, c = embeddings.shape[0], self.num_classes
        src = np.repeat(embeddings.float().numpy(), c, axis=0)
        sparse = np.tile(self.tokens, (b, 1, 1))
        masks, iou = model.decoder(src, model.image_pe, sparse, model.no_mask_dense)
        return torch.from_numpy(masks[:, :1]).reshape(b, c, *masks.shape[-2:]), torch.from_numpy(iou[:, :1]).reshape(b, c)


@dataclass(frozen=True)
class ExportedDecoderImage:
    """One embedding's ``decoder_image`` graph outputs (keys, k, v, q) and the embedding they came from
    (held, with its ``models.sam.sam.tensor_key``)."""

    arrays: tuple[np.ndarray, ...]
    source: torch.Tensor
    source_key: tuple


class DeployedSam:
    """An export folder on an engine, with ``Sam``'s ``encode`` / ``decode`` / ``decoder_image`` signatures.

    ``decoder_spinning``: ONNX Runtime worker threads of the prompt and decoder graphs spin between calls
    (off by default, see ``DECODER_SPINNING``; the image encoder's always do).
    """

    def __init__(self, folder: str | Path, *, engine: str = "openvino", precision: str = "fp32",
                 threads: int | None = None, cache_dir: str | Path | None = None, decoder_precision: str = "fp32",
                 decoder_spinning: bool = DECODER_SPINNING):
        check_engine(engine, precision)
        check_decoder_precision(engine, decoder_precision)
        if engine == "torch":
            raise MedadaptError("--engine torch runs the PyTorch model itself, not an export folder.",
                                fix="use --engine onnxruntime or openvino with --export DIR.")
        self.folder = Path(folder)
        self.manifest = read_manifest(self.folder)
        fmt = self.manifest["format"]
        if (engine == "onnxruntime") != (fmt == "onnx"):
            raise MedadaptError(
                f"this export is in {fmt} format; --engine {engine} needs "
                f"{'onnx' if engine == 'onnxruntime' else 'openvino'}.",
                path=self.folder, fix=f"use --engine {'onnxruntime' if fmt == 'onnx' else 'openvino'} or re-export.",
            )
        if precision == "int8" and "int8" not in self.manifest.get("precisions", []):
            raise MedadaptError("this export has no int8 image encoder.", path=self.folder,
                                fix="re-run `medadapt export` with --int8-calibration DATA.")
        if precision == "mixed" and "mixed" not in self.manifest.get("precisions", []):
            raise MedadaptError("this export has no split image encoder for --precision mixed (OpenVINO exports of "
                                "TinyViT-family encoders have one, unless made before the mixed precision existed).",
                                path=self.folder,
                                fix="re-run `medadapt export --format openvino`, or use --precision bf16 or fp32.")
        if decoder_precision == "int8" and "int8" not in self.manifest.get("decoder_precisions", []):
            raise MedadaptError("this export has no int8 mask decoder (it was written before ONNX exports held one).",
                                path=self.folder,
                                fix="re-run `medadapt export` (exports cached by medadapt are renewed on their own).")
        if (precision in ("bf16", "mixed") or decoder_precision == "bf16") and not cpu_has_bf16():
            raise MedadaptError("this CPU has no bf16 support (OpenVINO reports no BF16 capability).",
                                fix="use --precision fp32 or int8, and --decoder-precision fp32.")
        self.engine, self.precision, self.decoder_precision = engine, precision, decoder_precision
        threads = threads or torch.get_num_threads()
        cache = Path(cache_dir) if cache_dir is not None else self.folder / "ov_cache"

        def graph(name: str, prec: str = "fp32"):
            path = self.folder / graph_file(name, fmt, "int8" if prec == "int8" else "fp32")
            if engine == "onnxruntime":
                return OrtGraph(path, threads, DECODER_DISABLED_OPTIMIZERS if name in DECODER_GRAPHS else (),
                                spinning=decoder_spinning or name.startswith("image_encoder"))
            return OvGraph(path, threads, prec, cache)

        if precision == "mixed":
            self.encoder = _Chain(graph("image_encoder_stem", "fp32"), graph("image_encoder_trunk", "bf16"))
            encoder_files = [graph_file(g, fmt) for g in ("image_encoder_stem", "image_encoder_trunk")]
        else:
            self.encoder = graph("image_encoder", precision)
            encoder_files = [graph_file("image_encoder", fmt, "int8" if precision == "int8" else "fp32")]
        self.prompt = graph("prompt_encoder")
        self.decoder = graph("mask_decoder", decoder_precision)
        graphs = self.manifest.get("graphs", {})
        # exports written before mask prompts were exported have no mask encoder: they decode without one
        self.mask_encoder = graph("mask_encoder") if "mask_encoder" in graphs else None
        # exports written before the decoder was split decode every call with the full decoder graph
        split = "cached_decoder" in graphs
        self.image_graph = graph("decoder_image", decoder_precision) if split else None
        self.cached_decoder = graph("cached_decoder", decoder_precision) if split else None
        consts = np.load(self.folder / CONSTANTS)
        self.image_pe = consts["image_pe"]
        self.no_mask_dense = consts["no_mask_dense"]
        self.class_prompts = _ClassPrompts(consts["class_tokens"]) if "class_tokens" in consts else None
        # Cache key of embeddings: the encoder graphs' checksums and the precision they run at.
        digest = "".join((self.manifest["files"].get(f) or file_sha256(self.folder / f))[:16] for f in encoder_files)
        self.fingerprint = f"{engine}:{precision}:{digest}"

    # -- the Sam interface used by SamPredictor ---------------------------------------------------
    def eval(self) -> DeployedSam:
        return self

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, 3, S, S]`` → ``[B, 256, 64, 64]`` float32."""
        x = np.ascontiguousarray(images.float().numpy())
        return torch.from_numpy(self.encoder(x)[0])

    def decoder_image(self, image_embeddings: torch.Tensor) -> ExportedDecoderImage | None:
        """The prompt-free decoder work for one embedding ``[1, 256, h, w]`` (None: this export has no split decoder)."""
        if self.image_graph is None:
            return None
        if image_embeddings.dim() != 4 or image_embeddings.shape[0] != 1:
            raise ValueError(f"decoder_image takes one embedding [1, C, h, w], got {tuple(image_embeddings.shape)}")
        emb = np.ascontiguousarray(image_embeddings.float().numpy())
        arrays = tuple(self.image_graph(emb))
        return ExportedDecoderImage(arrays, image_embeddings, tensor_key(image_embeddings))

    def is_current(self, image: ExportedDecoderImage, image_embeddings: torch.Tensor) -> bool:
        """Whether ``decode`` would use ``image`` for ``image_embeddings`` (the embedding it came from, unchanged)."""
        return tensor_key(image_embeddings) == image.source_key

    def decode(self, image_embeddings: torch.Tensor, points=None, boxes=None, masks=None,
               multimask_output: bool = False,
               decoder_image: ExportedDecoderImage | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``Sam.decode`` on the export; ``decoder_image`` (of ``image_embeddings``; one prompt set, no mask prompt)
        skips its work."""
        coords, labels = labelled_points(points, boxes)
        sparse = self.prompt(coords, labels)[0]
        sl = slice(1, None) if multimask_output else slice(0, 1)
        if (decoder_image is not None and masks is None and sparse.shape[0] == 1
                and self.is_current(decoder_image, image_embeddings)):  # the cached graph takes one prompt set
            all_masks, all_iou = self.cached_decoder(*decoder_image.arrays, sparse)
            return torch.from_numpy(all_masks[:, sl]), torch.from_numpy(all_iou[:, sl])
        emb = np.ascontiguousarray(image_embeddings.float().numpy())
        if masks is not None:
            dense = self._mask_prompt(masks, sparse.shape[0])
            if emb.shape[0] == 1 and dense.shape[0] > 1:  # one image, several prompts: one batch for both
                emb = np.repeat(emb, dense.shape[0], axis=0)
        else:
            dense = self.no_mask_dense if emb.shape[0] == 1 else np.repeat(self.no_mask_dense, emb.shape[0], axis=0)
        all_masks, all_iou = self.decoder(emb, self.image_pe, sparse, dense)
        return torch.from_numpy(all_masks[:, sl]), torch.from_numpy(all_iou[:, sl])


    def _mask_prompt(self, masks: torch.Tensor, batch: int) -> np.ndarray:
        """Low-res mask logits ``[B, 1, 4h, 4w]`` → the decoder's dense prompt ``[B, 256, h, w]``."""
        if self.mask_encoder is None:
            raise MedadaptError("this export has no mask encoder, so it cannot take a mask prompt (it was "
                                "written before mask prompts were exported).", path=self.folder,
                                fix="re-run `medadapt export` (exports cached by medadapt are renewed on their own).")
        arr = np.ascontiguousarray(masks.float().numpy())
        if arr.ndim != 4 or arr.shape[1] != 1 or arr.shape[0] not in (1, batch):
            raise MedadaptError(f"a mask prompt must be [B, 1, H, W] logits with B = 1 or {batch}; got {list(arr.shape)}.",
                                fix="pass the low-res logits of an earlier decode as the mask prompt.")
        return self.mask_encoder(arr)[0]


def default_cache_root() -> Path:
    """Where on-the-fly exports and OpenVINO's compiled-model cache live (``MEDADAPT_CACHE`` overrides)."""
    return Path(os.environ.get("MEDADAPT_CACHE", Path.home() / ".cache" / "medadapt"))
