"""Finding input files and pairing images with labels by name.

Users point medadapt at a file or a folder. Folders are searched recursively for supported files;
images and labels are paired by a *case key*: the file name without its extension, with the
nnU-Net channel suffix (``_0000``) and any user-given suffix rule removed (DRIVE pairs
``21_training.tif`` with ``21_manual1.gif`` through ``--image-suffix _training --label-suffix _manual1``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from medadapt.errors import MedadaptError

IMAGE_2D_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif", ".dcm")
VOLUME_SUFFIXES = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".nhdr")
NPZ_SUFFIXES = (".npz",)
ALL_SUFFIXES = IMAGE_2D_SUFFIXES + VOLUME_SUFFIXES + NPZ_SUFFIXES

_NNUNET_CHANNEL = re.compile(r"_\d{4}$")


def full_suffix(path: str | Path) -> str:
    """The file's format suffix, lower case, ``.nii.gz`` counted as one."""
    name = Path(path).name.lower()
    for suffix in sorted(ALL_SUFFIXES, key=len, reverse=True):
        if name.endswith(suffix):
            return suffix
    return Path(name).suffix


def stem(path: str | Path) -> str:
    """File name without its (possibly double) extension."""
    name = Path(path).name
    suffix = full_suffix(path)
    return name[: len(name) - len(suffix)] if suffix and name.lower().endswith(suffix) else Path(name).stem


def case_key(path: str | Path, strip_suffix: str | None = None) -> str:
    key = stem(path)
    if strip_suffix and key.endswith(strip_suffix):
        key = key[: -len(strip_suffix)]
    return _NNUNET_CHANNEL.sub("", key)


def is_volume_file(path: str | Path) -> bool:
    return full_suffix(path) in VOLUME_SUFFIXES


def find_files(source: str | Path, suffixes: tuple[str, ...] = ALL_SUFFIXES, *, what: str = "input") -> list[Path]:
    """A file, or every supported file below a folder (sorted). Errors when nothing usable is there."""
    source = Path(source)
    if not source.exists():
        raise MedadaptError(f"the {what} does not exist.", path=source, fix="check the path.")
    if source.is_file():
        if full_suffix(source) not in suffixes:
            raise MedadaptError(
                f"unsupported {what} file type '{full_suffix(source)}'.",
                path=source,
                fix=f"use one of: {', '.join(suffixes)}.",
            )
        return [source]
    files = sorted(
        p for p in source.rglob("*") if p.is_file() and not p.name.startswith(".") and full_suffix(p) in suffixes
    )
    if not files:
        raise MedadaptError(
            f"no {what} files found in this folder.",
            path=source,
            fix=f"point to a folder holding files of type {', '.join(suffixes)}.",
        )
    return files


@dataclass(frozen=True)
class Pair:
    key: str
    image: Path
    label: Path | None


def pair_by_name(
    images: list[Path],
    labels: list[Path] | None,
    *,
    image_suffix: str | None = None,
    label_suffix: str | None = None,
    labels_root: Path | None = None,
) -> list[Pair]:
    """Pair every image with the label of the same case key; every image must have one."""
    if labels is None:
        return [Pair(case_key(p, image_suffix), p, None) for p in images]
    by_key: dict[str, Path] = {}
    for lab in labels:
        key = case_key(lab, label_suffix)
        if key in by_key:
            raise MedadaptError(
                f"two label files share the case name '{key}': {by_key[key]} and {lab}.",
                path=labels_root,
                fix="keep one label file per case.",
            )
        by_key[key] = lab
    pairs, missing = [], []
    for img in images:
        key = case_key(img, image_suffix)
        if key not in by_key:
            missing.append(img.name)
        else:
            pairs.append(Pair(key, img, by_key[key]))
    if missing:
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise MedadaptError(
            f"no label file with the same name for {len(missing)} image(s): {shown}.",
            path=labels_root,
            fix="name labels like their images (nnU-Net '_0000' channel suffixes are ignored), or give "
            "--image-suffix/--label-suffix rules such as '_training'/'_manual1'.",
        )
    return pairs


def resolve_spec(spec: str | Path) -> str:
    """An absolute path for a data spec that is a path (so run folders stay valid from elsewhere)."""
    p = Path(spec)
    return str(p.resolve()) if p.exists() else str(spec)
