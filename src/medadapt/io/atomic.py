"""Atomic writes: a file is either complete or absent.

Outputs go to a temporary file in the destination folder, then ``os.replace`` moves it into
place, so a crash or a bad input never leaves a partial file behind. A command that writes a
folder of outputs stages them (``staged_dir``) so that a bad input half-way leaves none of them.
A stage or temporary file is removed when its command ends, also on Ctrl-C or SIGTERM
(``medadapt.cli.main`` turns SIGTERM into an exit). Both names carry the writer's process id, so
what a SIGKILLed process left is removed later: a stage by the next ``staged_dir`` for the same
destination, temporary files by the first ``atomic_path`` of a later process into the same folder.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np


@contextlib.contextmanager
def atomic_path(dest: str | Path, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``dest``; rename it to ``dest`` if the block succeeds.

    ``suffix`` keeps a file extension on the temporary name for writers that look at it
    (nibabel, SimpleITK, PIL). It defaults to the full suffix of ``dest`` (``.nii.gz``).
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if suffix is None:
        suffix = "".join(dest.suffixes)
    if str(dest.parent) not in _SWEPT_FOLDERS:  # once per folder and process: cache folders see many writes
        _SWEPT_FOLDERS.add(str(dest.parent))
        remove_stale_temp_files(dest.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.{os.getpid()}.", suffix=f".tmp{suffix}", dir=dest.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, dest)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def staged_dir(dest: str | Path) -> Iterator[Path]:
    """Yield a temporary folder beside ``dest``; move its files into ``dest`` if the block succeeds.

    On an error nothing reaches ``dest`` (not even an empty folder); files already in ``dest``
    are replaced only by a complete new set. The staged folder is flat (one file per output).
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_stages(dest)
    stage = Path(tempfile.mkdtemp(prefix=f".{dest.name}.{os.getpid()}.", suffix=".tmp", dir=dest.parent))
    try:
        yield stage
        dest.mkdir(exist_ok=True)
        for f in sorted(stage.iterdir()):
            os.replace(f, dest / f.name)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


# ".NAME.PID.RANDOM.tmp[SUFFIX]": mkstemp's / mkdtemp's random part has no dot, so the number right
# before it is the process id (".out.7.<pid>.x.tmp", a stage of "out.7", is not one of "out").
_TEMP_NAME = re.compile(r"\.(?P<name>.+)\.(?P<pid>\d+)\.[^.]+\.tmp(?P<suffix>.*)")
_SWEPT_FOLDERS: set[str] = set()


def _left_by_dead_process(entry: Path) -> re.Match | None:
    match = _TEMP_NAME.fullmatch(entry.name)
    return match if match and not _process_alive(int(match["pid"])) else None


def remove_stale_stages(dest: str | Path) -> list[Path]:
    """Remove ``staged_dir`` folders of ``dest`` whose process is gone (killed with SIGKILL); return them."""
    dest = Path(dest)
    removed = []
    if not dest.parent.is_dir():
        return removed
    for entry in dest.parent.iterdir():
        match = _left_by_dead_process(entry)
        if match and match["name"] == dest.name and not match["suffix"] and entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed


def remove_stale_temp_files(folder: str | Path) -> list[Path]:
    """Remove ``atomic_path`` temporary files in ``folder`` whose process is gone; return them."""
    removed = []
    with contextlib.suppress(OSError):
        for entry in Path(folder).iterdir():
            if _left_by_dead_process(entry) and entry.is_file():
                entry.unlink(missing_ok=True)
                removed.append(entry)
    return removed


def _process_alive(pid: int) -> bool:
    if os.name == "nt":  # os.kill there terminates the process instead of probing it
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists but belongs to someone else (or cannot be probed): leave it
    return True


def write_bytes(dest: str | Path, data: bytes) -> None:
    with atomic_path(dest) as tmp:
        tmp.write_bytes(data)


def write_text(dest: str | Path, text: str) -> None:
    with atomic_path(dest) as tmp:
        tmp.write_text(text)


def write_json(dest: str | Path, obj: Any) -> None:
    write_text(dest, json.dumps(obj, indent=2, default=_json_default, allow_nan=True) + "\n")


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o)}")
