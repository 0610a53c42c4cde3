"""``medadapt studio``: label cases of a folder in the browser (box + clicks), saved beside the images."""

from __future__ import annotations

from pathlib import Path

import typer

from medadapt.cli.common import console, set_threads, user_errors


@user_errors
def studio(
    data_dir: Path = typer.Argument(..., metavar="DATA_DIR", help="An MSD / nnU-Net folder (imagesTr/) or a folder of NIfTI volumes."),
    adapter: Path | None = typer.Option(None, "--adapter", metavar="RUN", help="A `medadapt fit` run (default: the zero-shot model). An automatic-mode run opens each case with its prediction."),
    model: str | None = typer.Option(None, "--model", help="Zero-shot model when no --adapter (litemedsam)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on. Any address but localhost needs the access token printed in the URL."),
    port: int = typer.Option(8765, "--port", min=1, max=65535, help="Port to listen on."),
    adapt: bool = typer.Option(True, "--adapt/--no-adapt", help="After each save, refit an adapter from every saved case in the background and switch to it when it is done (runs in DATA_DIR/.medadapt-studio/adapters/)."),
    fit_steps: int = typer.Option(150, "--fit-steps", min=1, help="Training steps of each background fit."),
    encoder_engine: str = typer.Option(
        "auto", "--encoder-engine",
        help="auto (default) | torch | openvino | onnxruntime: engine that encodes the slices, for the page and the "
             "background fits. auto: as `medadapt fit` chooses, openvino fp32 when installed (same embeddings, "
             "about 2x faster on a CPU; exported once into the cache), else torch. An adapter that trains the "
             "image encoder keeps its torch encoder.",
    ),
    threads: int | None = typer.Option(None, "--threads", help="Torch CPU threads."),
) -> None:
    """Open a local web page to label the cases of DATA_DIR: draw a box, correct with clicks, save.

    Labels go to labelsTr/ beside the images (NIfTI with the image's geometry, written atomically);
    images are never modified. Stop with Ctrl-C.
    """
    from medadapt.optional import require

    require("fastapi", extra="studio", purpose="medadapt studio")
    require("uvicorn", extra="studio", purpose="medadapt studio")
    from medadapt.studio.server import serve

    set_threads(threads)
    serve(data_dir, adapter=adapter, model=model, host=host, port=port, adapt=adapt, fit_steps=fit_steps,
          encoder_engine=encoder_engine, echo=lambda line: console.print(line, soft_wrap=True))
