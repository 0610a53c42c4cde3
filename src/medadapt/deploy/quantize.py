"""Post-training int8 quantisation of an exported image encoder, calibrated on a few images.

Only the image encoder is quantised: it is >95 % of the compute, while the mask decoder is cheap
and its logits decide the mask boundary. ONNX graphs use ONNX Runtime's static QDQ quantisation
(per-channel int8 weights, uint8 activations: the fast VNNI path on x86) of the linear layers
only: quantising TinyViT's convolutions too (per-channel or per-tensor, with or without depthwise
ones, reduced range or u8u8) wrecked the embedding in our tests (0.7-0.9 relative error vs 0.14 for
the linear layers alone). OpenVINO IR uses NNCF with the transformer preset (keeps softmax / layer
norm in float). Both come from their own libraries; nothing here re-implements quantisation.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medadapt.data.datasets import load_segmentation_dataset
from medadapt.data.slices import iter_slices
from medadapt.errors import MedadaptError
from medadapt.models.preprocess import preprocess_image
from medadapt.models.registry import ModelSpec


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
    from medadapt.deploy.export import graph_file

    src = folder / graph_file("image_encoder", fmt)
    dst = folder / graph_file("image_encoder", fmt, "int8")
    if fmt == "onnx":
        _quantize_onnx(src, dst, calibration)
    else:
        _quantize_openvino(src, dst, calibration)
    return dst


def _quantize_onnx(src: Path, dst: Path, calibration: np.ndarray) -> None:
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
    import nncf
    import openvino as ov

    model = ov.Core().read_model(str(src))
    dataset = nncf.Dataset([calibration[i : i + 1] for i in range(len(calibration))])
    quantized = nncf.quantize(
        model, dataset, subset_size=len(calibration), model_type=nncf.ModelType.TRANSFORMER,
        preset=nncf.QuantizationPreset.MIXED,
    )
    ov.save_model(quantized, str(dst), compress_to_fp16=False)
