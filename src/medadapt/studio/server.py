"""Start the studio: check the folder and the adapter, load the model, print the URL, serve with uvicorn."""

from __future__ import annotations

import secrets
import socket
from collections.abc import Callable
from pathlib import Path

from medadapt.errors import MedadaptError
from medadapt.studio.adaptation import DEFAULT_STEPS, AdaptationLoop
from medadapt.studio.app import create_app, is_local
from medadapt.studio.cases import CaseFolder
from medadapt.studio.state import Studio


def studio_url(host: str, port: int, token: str | None) -> str:
    """The URL to open: a wildcard address is shown as this machine's name."""
    shown = socket.gethostname() if host in ("0.0.0.0", "::", "") else host
    shown = f"[{shown}]" if ":" in shown else shown
    return f"http://{shown}:{port}/" + (f"?token={token}" if token else "")


def check_port(host: str, port: int) -> None:
    """Refuse a port another program holds, before the model is loaded."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as err:
            raise MedadaptError(f"cannot listen on {host}:{port} ({err.strerror}).",
                                fix="pick another --port, or stop the program that uses it.") from None


ENCODER_ENGINES = ("auto", "torch", "openvino", "onnxruntime")


def build_studio(data_dir: Path, *, adapter: Path | None = None, model: str | None = None, adapt: bool = True,
                 fit_steps: int = DEFAULT_STEPS, encoder_engine: str = "auto", echo: Callable[[str], None] = print
                 ) -> tuple[Studio, AdaptationLoop | None]:
    """The studio of ``data_dir`` with its model loaded; with ``adapt``, the loop that refits the adapter
    after each save. Without ``adapter``, the adapter the studio used last in this folder is resumed.

    ``encoder_engine`` encodes the slices, for the page and for the background fits alike; ``auto`` is
    ``medadapt fit``'s default (:func:`medadapt.deploy.auto.fit_encoder_engine`: OpenVINO fp32 when
    installed). An adapter that trains the image encoder keeps its own (torch) encoder.
    """
    from medadapt.deploy.auto import fit_encoder_engine
    from medadapt.deploy.backend import base_encoder
    from medadapt.infer.factory import PredictorSpec, adapters_of, load_predictor
    from medadapt.run import RunFolder

    if encoder_engine not in ENCODER_ENGINES:
        raise MedadaptError(f"--encoder-engine '{encoder_engine}' is not one of {', '.join(ENCODER_ENGINES)}.",
                            fix="use auto (the fastest engine that keeps the results), torch or openvino.")
    folder = CaseFolder(data_dir)
    engine, notice = fit_encoder_engine(encoder_engine)
    if notice:
        echo(notice)
    encoders: dict[str, Callable] = {}  # base model -> its exported encoder, built once

    def build(run: Path | None):
        base = frozen_base(run, model) if engine != "torch" else None
        if base is not None and base not in encoders:
            encoders[base] = base_encoder(base, engine)[1]
        return load_predictor(PredictorSpec(model=model, adapters=adapters_of(run), use_cache=True,
                                            encoder=encoders.get(base)))

    studio = Studio(folder, lambda: None)
    loop = None
    if adapt:
        def use(run: Path | None) -> None:
            studio.switch(build(run), run and f"studio adapter {run.name}")

        loop = AdaptationLoop(folder, use, steps=fit_steps, model=model or "litemedsam", build=build,
                              encoder_engine=engine)
    if adapter is not None:
        RunFolder.resolve(adapter)  # a wrong --adapter fails now, not at the first click
        name = str(adapter)
    elif loop is not None and (last := loop.current()) is not None:
        adapter, name = last, f"studio adapter {last.name}"
        echo(f"resuming the studio's adapter {last}")
    else:
        name = None
    echo(f"loading the model{f' with the adapter {adapter}' if adapter else ''} (encoder: {engine})…")
    studio.switch(build(adapter), name)
    studio.encoder_engine = engine
    if loop is not None and (unfinished := loop.resume_unfinished()) is not None:
        echo(f"continuing the unfinished fit {unfinished} in the background")
    return studio, loop


def frozen_base(run: Path | None, model: str | None) -> str | None:
    """The base model whose exported image encoder can serve ``run`` (None: the zero-shot ``model``), or None
    where the adapter changes the encoder (its tensors include image-encoder ones), names its own
    checkpoint, or is a modality bank."""
    from medadapt.run import RunFolder, is_bank

    if run is None:
        return model or "litemedsam"
    if is_bank(run):
        return None
    meta = RunFolder.resolve(run).read_adapter_meta()
    base = meta.get("base") or {}
    if base.get("checkpoint") or any(name.startswith("image_encoder.") for name in meta.get("tensors") or {}):
        return None
    return base.get("model") or model or "litemedsam"


def serve(data_dir: Path, *, adapter: Path | None = None, model: str | None = None, host: str = "127.0.0.1",
          port: int = 8765, adapt: bool = True, fit_steps: int = DEFAULT_STEPS, encoder_engine: str = "auto",
          echo: Callable[[str], None] = print) -> None:
    """Serve the studio for ``data_dir`` until interrupted. Off localhost, a fresh token guards it."""
    import uvicorn

    check_port(host, port)
    studio, loop = build_studio(data_dir, adapter=adapter, model=model, adapt=adapt, fit_steps=fit_steps,
                                encoder_engine=encoder_engine, echo=echo)
    local = is_local(host)
    token = None if local else secrets.token_urlsafe(24)
    app = create_app(studio, token=token, local_only=local, loop=loop)
    echo(f"medadapt studio for {studio.folder.root} ({len(studio.folder.cases)} cases):")
    echo(studio_url(host, port, token))
    if not local:
        echo("anyone who can reach this address and has the token can read and write the labels of this folder.")
    uvicorn.run(app, host=host, port=port, log_level="warning")
