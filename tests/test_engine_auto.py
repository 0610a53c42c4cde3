"""``--engine auto`` follows the deployment benchmark, and the fit's default encoder is exact."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from medadapt.deploy.auto import (
    AUTO_TABLE,
    DSC_TOLERANCE,
    choose_engine,
    fit_encoder_engine,
    openvino_available,
)

RESULTS = Path(__file__).resolve().parents[1] / "bench" / "results" / "deploy.json"
NEEDS = {"openvino": "openvino", "onnxruntime": "onnxruntime"}


def _fastest_exact(offers: set[str]) -> tuple[str, str]:
    """From bench/results/deploy.json (volumes): the fastest engine/precision within DSC_TOLERANCE of torch fp32
    that a CPU offering ``offers`` can run (bf16 and mixed need bf16 units)."""
    volumes = json.loads(RESULTS.read_text())["volumes"]
    ref = volumes["torch fp32"]["mean_dsc"]
    best = None
    for name, row in volumes.items():
        parts = name.split()
        if len(parts) != 2 or abs(row["mean_dsc"] - ref) > DSC_TOLERANCE:
            continue
        engine, precision = parts
        if engine in NEEDS and NEEDS[engine] not in offers:
            continue
        if precision in ("bf16", "mixed") and engine != "torch" and "bf16" not in offers:
            continue
        if best is None or row["total_seconds"] < best[0]:
            best = (row["total_seconds"], engine, precision)
    return best[1], best[2]


@pytest.mark.parametrize("offers", [{"openvino", "onnxruntime", "bf16"}, {"openvino", "onnxruntime"},
                                    {"onnxruntime"}, set()])
def test_auto_picks_the_fastest_setting_within_tolerance_on_the_benchmark(offers):
    engine, precision, notice = choose_engine(where=("cpu", offers))
    assert (engine, precision) == _fastest_exact(offers)
    assert (notice is not None) == ("openvino" not in offers)


def test_auto_on_a_gpu_and_explicit_choices():
    assert choose_engine(where=("cuda", {"openvino", "bf16"}))[:2] == ("torch", "fp32")
    # an explicit precision keeps its value and takes the first engine that has it
    assert choose_engine("mixed", where=("cpu", {"openvino", "bf16"}))[:2] == ("openvino", "mixed")
    assert choose_engine("fp32", where=("cpu", {"openvino", "bf16"}))[:2] == ("openvino", "fp32")
    assert {row.engine for row in AUTO_TABLE} <= {"torch", "openvino", "onnxruntime"}
    assert fit_encoder_engine("torch") == ("torch", None)


@pytest.mark.skipif(not openvino_available(), reason="openvino is not installed")
def test_default_fit_encoder_is_openvino_fp32_with_torch_embeddings_on_a_real_slice(data_dir, tmp_path, monkeypatch):
    """The default fit fills its cache with OpenVINO fp32: on a real hippocampus slice its embeddings equal
    eager PyTorch's within float32 rounding."""
    import nibabel as nib

    from medadapt.data.intensity import normalise_for_sam
    from medadapt.deploy.backend import frozen_encoder
    from medadapt.engine.sam_fit import FitOptions
    from medadapt.models.preprocess import preprocess_image
    from medadapt.models.registry import build_model, get_sam_spec

    monkeypatch.setenv("MEDADAPT_CACHE", str(tmp_path / "medadapt-cache"))
    assert fit_encoder_engine("auto") == ("openvino", None) or torch.cuda.is_available()
    volume = np.asarray(nib.load(data_dir / "hippocampus" / "imagesTr" / "hippocampus_001.nii.gz").dataobj)
    image = normalise_for_sam(volume[:, :, volume.shape[2] // 2], "mr")
    x = preprocess_image(image, get_sam_spec("litemedsam"))[0][None]
    opts = FitOptions(data="unused", out=str(tmp_path / "run"), encoder_engine="openvino")
    tag, encode = frozen_encoder(opts)
    assert tag.startswith("openvino:fp32:")
    with torch.no_grad():
        ref = build_model("litemedsam").eval().encode(x)
    torch.testing.assert_close(encode(x), ref, rtol=0, atol=1e-4 * float(ref.abs().max()))
