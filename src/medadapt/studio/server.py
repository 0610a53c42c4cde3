"""Start the studio: check the folder and the adapter, load the model, print the URL, serve with uvicorn."""

from __future__ import annotations

import secrets
import socket
from collections.abc import Callable
from pathlib import Path

from medadapt.errors import MedadaptError
from medadapt.studio.app import create_app, is_local
from medadapt.studio.cases import CaseFolder
from medadapt.studio.state import Studio


def studio_url(host: str, port: int, token: str | None) -> str:
    shown = f"[{host}]" if ":" in host else host
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


def serve(data_dir: Path, *, adapter: Path | None = None, model: str | None = None, host: str = "127.0.0.1",
          port: int = 8765, echo: Callable[[str], None] = print) -> None:
    """Serve the studio for ``data_dir`` until interrupted. Off localhost, a fresh token guards it."""
    import uvicorn

    from medadapt.infer.factory import build_predictor
    from medadapt.run import RunFolder

    folder = CaseFolder(data_dir)
    if adapter is not None:
        RunFolder.resolve(adapter)  # a wrong --adapter fails now, not at the first click
    check_port(host, port)
    local = is_local(host)
    token = None if local else secrets.token_urlsafe(24)
    echo(f"loading the model{f' with the adapter {adapter}' if adapter else ''}…")
    predictor = build_predictor(model, adapter=adapter, use_cache=True)
    studio = Studio(folder, lambda: predictor)
    app = create_app(studio, token=token, local_only=local, adapter=str(adapter) if adapter else None)
    echo(f"medadapt studio for {folder.root} ({len(folder.cases)} cases): {studio_url(host, port, token)}")
    if not local:
        echo("anyone who can reach this address and has the token can read and write the labels of this folder.")
    uvicorn.run(app, host=host, port=port, log_level="warning")
