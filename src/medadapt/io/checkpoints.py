"""Read foreign model checkpoints as flat ``{name: tensor}`` state dicts, safely.

PyTorch files are opened with ``torch.load(weights_only=True)``: a file that needs arbitrary
pickled Python objects is refused rather than executed. ``.safetensors`` files are read with
safetensors. Training checkpoints are unwrapped (``{"model": ...}``, ``{"state_dict": ...}``,
``{"net": ...}``), DataParallel ``module.`` prefixes are stripped and non-tensor entries
(epoch counters, optimiser settings) are dropped.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import torch

from medadapt.errors import MedadaptError

_WRAPPER_KEYS = ("model", "state_dict", "net", "model_state_dict")
_SAFE_FIX = (
    "open it in a trusted Python session and save only the weights, e.g. "
    "torch.save(model.state_dict(), 'weights.pth'), or convert it to .safetensors"
)


def read_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """Load the tensors of a ``.pth``/``.pt``/``.ckpt``/``.bin`` or ``.safetensors`` file on CPU."""
    path = Path(path)
    if not path.is_file():
        raise MedadaptError("checkpoint file not found", path=path,
                            fix="check the path; official SAM/MedSAM/MobileSAM weights are downloaded by hand")
    if path.stat().st_size == 0:
        raise MedadaptError("checkpoint file is empty", path=path, fix="download or copy the file again")
    obj = _read_safetensors(path) if path.suffix == ".safetensors" else _read_torch(path)
    return _to_state_dict(obj, path)


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as err:
        raise MedadaptError(f"not a readable safetensors file ({err})", path=path,
                            fix="download or copy the file again") from err


def _read_torch(path: Path) -> object:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if not _is_torch_file(path):  # random bytes also fail as "unpickling"
            raise MedadaptError(
                "not a readable PyTorch checkpoint: neither a torch.save zip archive nor a pickle",
                path=path, fix="download or copy the file again, or pass a .pth/.safetensors weights file",
            ) from err
        # weights_only refused a global it does not allow: the file embeds Python objects.
        raise MedadaptError(
            "checkpoint holds pickled Python objects, not just tensors; refusing to unpickle it "
            f"because that can run arbitrary code ({str(err).splitlines()[0]})",
            path=path, fix=_SAFE_FIX,
        ) from err
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, AttributeError) as err:
        raise MedadaptError(
            f"not a readable PyTorch checkpoint, it may be truncated or of another format ({err})",
            path=path, fix="download or copy the file again, or pass a .pth/.safetensors weights file",
        ) from err


def _is_torch_file(path: Path) -> bool:
    """A ``torch.save`` zip archive, or a legacy pickle (protocol 2+ starts with byte 0x80)."""
    if zipfile.is_zipfile(path):
        return True
    with path.open("rb") as f:
        return f.read(1) == b"\x80"


def _to_state_dict(obj: object, path: Path) -> dict[str, torch.Tensor]:
    for _ in range(3):  # e.g. {"state_dict": {"model": {...}}}
        if not isinstance(obj, dict):
            break
        inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), dict)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, dict):
        raise MedadaptError(f"checkpoint holds a {type(obj).__name__}, not a state dict", path=path,
                            fix="pass a file saved with torch.save(model.state_dict(), ...)")
    state: dict[str, torch.Tensor] = {}
    for key, value in obj.items():
        if isinstance(key, str) and isinstance(value, torch.Tensor):
            while key.startswith("module."):
                key = key[len("module."):]
            state[key] = value
    if not state:
        raise MedadaptError("checkpoint contains no tensors", path=path,
                            fix="pass a file saved with torch.save(model.state_dict(), ...)")
    return state
