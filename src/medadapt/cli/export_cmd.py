"""``medadapt export``: a base or adapted model as ONNX / OpenVINO graphs with a checksummed manifest."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from medadapt.cli.common import console, set_threads, user_errors


@user_errors
def export(
    out: Path = typer.Option(..., "--out", "-o", help="Export folder (graphs, constants.npz, manifest.json)."),
    model: str | None = typer.Option(None, "--model", "-m", help="Model name (default litemedsam, or the adapter's base)."),
    checkpoint: Path | None = typer.Option(None, "--checkpoint", help="Official checkpoint file of the base model."),
    adapter: Path | None = typer.Option(None, "--adapter", help="A `medadapt fit` run: its adapter is merged in first."),
    fmt: str = typer.Option("onnx", "--format", "-f", help="onnx | openvino."),
    int8_calibration: str | None = typer.Option(
        None, "--int8-calibration", help="Dataset spec whose labelled slices calibrate an extra int8 image encoder."
    ),
    calibration_images: int = typer.Option(16, "--calibration-images", help="Slices used for int8 calibration."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an earlier medadapt export in --out."),
    threads: int | None = typer.Option(None, "--threads", help="Torch CPU threads."),
) -> None:
    """Export image encoder, prompt encoder and mask decoder (LoRA merged, dynamic batch) for
    `medadapt predict --engine onnxruntime|openvino --export DIR`."""
    from medadapt.deploy.backend import load_for_export
    from medadapt.deploy.export import export_model
    from medadapt.deploy.quantize import calibration_images as load_calibration

    set_threads(threads)
    start = time.perf_counter()
    net, spec, source, classes = load_for_export(model, checkpoint=checkpoint, adapter=adapter)
    calibration = None
    if int8_calibration is not None:
        calibration = load_calibration(int8_calibration, spec, count=calibration_images)
        source["int8_calibration"] = {"data": int8_calibration, "images": int(len(calibration))}
    manifest = export_model(net, spec, out, fmt=fmt, source=source, classes=classes, calibration=calibration,
                            overwrite=overwrite)
    size = sum(p.stat().st_size for p in out.iterdir() if p.is_file())
    console.print(
        f"exported {spec.name}{' + adapter' if adapter else ''} as {fmt} to {out} "
        f"({size / 2**20:.1f} MiB, {time.perf_counter() - start:.0f} s); manifest: {manifest}"
    )
    engine = "onnxruntime" if fmt == "onnx" else "openvino"
    console.print(f"use it: medadapt predict --engine {engine} --export {out} --input ... --out ...")
