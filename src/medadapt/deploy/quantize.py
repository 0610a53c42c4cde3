"""Post-training int8 quantisation of exported graphs, from ONNX Runtime's and NNCF's own tools.

The image encoder (>95 % of a prediction's compute) is quantised statically, calibrated on a few
images, on request (``medadapt export --int8-calibration``). ONNX graphs use ONNX Runtime's static QDQ quantisation
(per-channel int8 weights, uint8 activations: the fast VNNI path on x86) of the linear layers
only: quantising TinyViT's convolutions too (per-channel or per-tensor, with or without depthwise
ones, reduced range or u8u8) wrecked the embedding in our tests (0.7-0.9 relative error vs 0.14 for
the linear layers alone). OpenVINO IR uses NNCF with the transformer preset (keeps softmax / layer
norm in float). Both come from their own libraries; nothing here re-implements quantisation.

The mask decoder is what an interactive click waits for. Every ONNX export also holds
``mask_decoder.int8.onnx`` (and the split decoder's ``decoder_image.int8.onnx`` /
``cached_decoder.int8.onnx``): ONNX Runtime's dynamic quantisation (int8 weights, activation scales
computed per call, so no calibration data) of its MatMul / Gemm nodes. It is quantised from the decoder
graph laid out in token order (``graphs.TokenDecoderGraph``), whose output upscaling is matmuls too, so
the transformer's projections and the upscaling both run in int8. It is used only when asked for (``--decoder-precision int8``): it is faster, not equal (benchmarked in
``bench/bench_interactive.py``).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from medadapt.data.datasets import load_segmentation_dataset
from medadapt.data.slices import iter_slices
from medadapt.deploy.graphs import graph_file
from medadapt.errors import MedadaptError
from medadapt.models.preprocess import preprocess_image
from medadapt.models.registry import ModelSpec
from medadapt.optional import require


def calibration_images(data: str, spec: ModelSpec, *, count: int = 16, seed: int = 0, **dataset_options) -> np.ndarray:
    """``count`` preprocessed slices ``[N, 3, S, S]`` with foreground, spread over the dataset's cases."""
    dataset = load_segmentation_dataset(data, **dataset_options)
    samples = list(iter_slices(dataset, dataset.keys()))
    if not samples:
        raise MedadaptError("the calibration dataset holds no labelled slice.", path=Path(str(data)),
                            fix="give --calibration a dataset with foreground in its labels.")
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(samples), size=min(count, len(samples)), replace=False)
    out = []
    for i in sorted(pick):
        img = samples[i].image
        img = np.repeat(img[:, :, None], 3, axis=-1) if img.ndim == 2 else img
        out.append(preprocess_image(img, spec)[0].numpy())
    return np.stack(out).astype(np.float32)


def quantize_encoder(folder: Path, fmt: str, calibration: np.ndarray) -> Path:
    """Write ``image_encoder.int8.onnx`` / ``.xml`` next to the fp32 graph in ``folder``."""

    src = folder / graph_file("image_encoder", fmt)
    dst = folder / graph_file("image_encoder", fmt, "int8")
    if fmt == "onnx":
        _quantize_onnx(src, dst, calibration)
    else:
        _quantize_openvino(src, dst, calibration)
    return dst


def quantize_decoder(folder: Path, source: Path, name: str = "mask_decoder") -> Path:
    """Write ``{name}.int8.onnx`` into ``folder``: the fp32 ONNX decoder graph ``source`` with its
    MatMul / Gemm nodes dynamically quantised to int8."""
    require("onnxruntime", extra="deploy", purpose="the int8 mask decoder of an ONNX export")
    from onnxruntime.quantization import QuantType, quantize_dynamic

    dst = folder / graph_file(name, "onnx", "int8")
    root = logging.getLogger()  # quantize_dynamic advises shape pre-processing on the root logger; not needed here
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        quantize_dynamic(str(source), str(dst), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm"])
    finally:
        root.setLevel(level)
    return dst


def _quantize_onnx(src: Path, dst: Path, calibration: np.ndarray) -> None:
    require("onnxruntime", extra="deploy", purpose="int8 quantisation of an ONNX export")
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(calibration[i : i + 1] for i in range(len(calibration)))

        def get_next(self):
            batch = next(self._it, None)
            return None if batch is None else {"images": batch}

    prepped = dst.with_suffix(".prep.onnx")
    try:
        quant_pre_process(str(src), str(prepped), skip_symbolic_shape=True)
        quantize_static(
            str(prepped), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
            weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8,
            op_types_to_quantize=["MatMul", "Gemm"],  # see the module docstring: convolutions stay float
            extra_options={"ActivationSymmetric": False, "WeightSymmetric": True, "MatMulConstBOnly": True},
        )
    finally:
        prepped.unlink(missing_ok=True)


def _quantize_openvino(src: Path, dst: Path, calibration: np.ndarray) -> None:
    nncf = require("nncf", extra="deploy", purpose="int8 quantisation of an OpenVINO export")
    ov = require("openvino", extra="deploy", purpose="int8 quantisation of an OpenVINO export")
    model = ov.Core().read_model(str(src))
    dataset = nncf.Dataset([calibration[i : i + 1] for i in range(len(calibration))])
    quantized = nncf.quantize(
        model, dataset, subset_size=len(calibration), model_type=nncf.ModelType.TRANSFORMER,
        preset=nncf.QuantizationPreset.MIXED,
    )
    ov.save_model(quantized, str(dst), compress_to_fp16=False)
