"""Dataset specs → a list of labelled cases.

A user names a dataset by a path; :func:`load_segmentation_dataset` recognises its layout and returns a
:class:`Dataset`: the class names, the modality and one :class:`CaseRef` per image/label pair, each
with a *group* (the patient or volume it belongs to) so that splits never put one patient on both
sides. Layouts (the :data:`LAYOUTS` registry; :func:`detect_layout` tries them in this order, unless the
user names the image / label folders):

- ``msd``: Medical Segmentation Decathlon / nnU-Net: ``dataset.json`` + ``imagesTr/`` + ``labelsTr/``;
- ``csv``: a CSV of ``image,mask[,modality]`` rows (finetune-SAM style; paths relative to the CSV's
  folder), or a folder holding ``train*.csv`` / ``val*.csv`` / ``test*.csv``, which then define the
  split (:attr:`Dataset.given_split`);
- ``folders``: paired image/mask folders (``images/`` + ``masks/`` or ``labels/``, ``imagesTr/`` +
  ``labelsTr/``, a ``label_dir`` given by the user such as DRIVE's ``1st_manual``, or ``"IMG_DIR:MASK_DIR"``),
  matched by name with the ``image_suffix`` / ``label_suffix`` rule;
- ``npz``: a folder of CVPR24 ``.npz`` cases holding ``imgs`` and ``gts``.

Nothing is read at load time beyond file names and headers; :meth:`Dataset.load` reads one case and
keeps the last few in memory, because training iterates over the same few cases many times.
"""

from __future__ import annotations

import csv
import json
import os
import zipfile
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import NamedTuple

import numpy as np

from medadapt.data.intensity import MODALITIES, normalise_for_sam
from medadapt.errors import MedadaptError
from medadapt.io.cvpr24 import read_cvpr24
from medadapt.io.discovery import (
    IMAGE_2D_SUFFIXES,
    NPZ_SUFFIXES,
    VOLUME_SUFFIXES,
    case_key,
    find_files,
    full_suffix,
    is_volume_file,
    pair_by_name,
    stem,
)
from medadapt.io.images import read_image_2d, read_label_2d
from medadapt.io.volumes import check_pair, default_slice_axis, read_volume

_IMAGE_DIRS = ("images", "imagesTr", "imgs", "img")
_LABEL_DIRS = ("masks", "labels", "labelsTr", "gts", "gt")
_SPLIT_ROLES = {
    "train": ("train", "training"),
    "val": ("val", "valid", "validation"),
    "test": ("test", "testing"),
}
_CSV_IMAGE_COLS = ("image", "img", "image_path", "img_path", "images")
_CSV_LABEL_COLS = ("mask", "label", "seg", "gt", "mask_path", "label_path", "masks", "labels")
_CSV_GROUP_COLS = ("group", "patient", "patient_id", "subject", "subject_id", "case")
# Passed to normalise_for_sam for images already made for display (8-bit 2D files, CVPR24 npz).
_DISPLAY = "rgb"


# --------------------------------------------------------------------------- data model


@dataclass(frozen=True)
class CaseRef:
    """One labelled case: where it is, how to normalise it and which patient/volume it belongs to."""

    key: str  # unique within the dataset
    image: Path
    label: Path | None  # None for npz cases, whose labels live in the same file
    modality: str  # a key of normalise_for_sam, or "auto" (decided from the pixels)
    group: str  # patient / volume id: splits never separate a group
    is_3d: bool


class LoadedCase(NamedTuple):
    """A case ready for slicing: ``image`` uint8 0..255 (volume, ``H×W`` or ``H×W×3``), ``label`` integers.

    ``label`` is uint8 unless the case has more than 255 classes. ``spacing`` is in array-axis order;
    ``slice_axis`` is the through-plane axis of a volume, None for 2D images. Arrays are read-only:
    they are shared with the dataset's cache.
    """

    image: np.ndarray
    label: np.ndarray
    spacing: tuple[float, ...]
    slice_axis: int | None


@dataclass(eq=False)
class Dataset:
    """Cases of one dataset, and :meth:`load` to read them."""

    name: str
    root: Path
    layout: str  # "msd" | "csv" | "folders" | "npz"
    modality: str
    cases: list[CaseRef]
    class_names: dict[int, str] | None = None  # foreground classes; None: found from the labels on first use
    given_split: dict[str, list[str]] | None = (
        None  # {"train": keys, "val": keys[, "test": keys]} from the data
    )
    window: str | tuple[float, float] | None = None  # CT window for normalise_for_sam
    binary: bool | None = None  # True: every label > 0 is class 1; None: only for 2D viewing masks (see load)
    cache_size: int = 4
    _cache: OrderedDict = field(default_factory=OrderedDict, init=False, repr=False)

    def __post_init__(self) -> None:
        self._by_key = {c.key: c for c in self.cases}
        if len(self._by_key) != len(self.cases):
            raise ValueError("case keys must be unique")

    @property
    def is_3d(self) -> bool:
        return bool(self.cases) and all(c.is_3d for c in self.cases)

    @property
    def classes(self) -> dict[int, str]:
        """Foreground class id → name (from ``dataset.json``, else the label values found, named ``class_<id>``)."""
        if self.class_names is None:
            found: set[int] = set()
            for case in self.cases:
                found.update(int(v) for v in np.unique(self.load(case).label) if v != 0)
            self.class_names = {1: "foreground"} if found <= {1} else {c: f"class_{c}" for c in sorted(found)}
        return self.class_names

    def keys(self) -> list[str]:
        return [c.key for c in self.cases]

    def case(self, key: str | CaseRef) -> CaseRef:
        if isinstance(key, CaseRef):
            return key
        try:
            return self._by_key[key]
        except KeyError:
            raise MedadaptError(
                f"dataset '{self.name}' has no case '{key}'.",
                path=self.root,
                fix="check the split file belongs to this dataset (case keys are file names without extension).",
            ) from None

    def groups(self) -> dict[str, list[str]]:
        """Group id → its case keys, in dataset order."""
        out: dict[str, list[str]] = {}
        for c in self.cases:
            out.setdefault(c.group, []).append(c.key)
        return out

    def load(self, case: str | CaseRef) -> LoadedCase:
        """Read, check and normalise one case (the last ``cache_size`` cases stay in memory)."""
        ref = self.case(case)
        if ref.key in self._cache:
            self._cache.move_to_end(ref.key)
            return self._cache[ref.key]
        loaded = _read_case(ref, self.window, self.binary)
        for arr in (loaded.image, loaded.label):
            arr.flags.writeable = False
        self._cache[ref.key] = loaded
        while len(self._cache) > max(0, self.cache_size):
            self._cache.popitem(last=False)
        return loaded

    def __len__(self) -> int:
        return len(self.cases)

    def __getstate__(self):  # pickled into DataLoader workers without the cached arrays
        state = self.__dict__.copy()
        state["_cache"] = OrderedDict()
        return state


# --------------------------------------------------------------------------- entry point


@dataclass(frozen=True)
class LoadOptions:
    """What the user said about a dataset beyond its path (see :func:`load_segmentation_dataset`)."""

    image_suffix: str | None = None
    label_suffix: str | None = None
    label_dir: str | Path | None = None
    image_dir: str | Path | None = None
    folder_pair: tuple[Path, Path] | None = None  # from an "IMG_DIR:MASK_DIR" spec

    @property
    def names_folders(self) -> bool:
        """The user named the image / label folders: the paired-folder layout, whatever else is there."""
        return self.folder_pair is not None or self.label_dir is not None or self.image_dir is not None


@dataclass(frozen=True)
class Layout:
    """A dataset layout: ``detect(path)`` says whether ``path`` is one, ``read(path, options)`` lists it."""

    name: str
    description: str
    detect: Callable[[Path], bool]
    read: Callable[[Path, LoadOptions], Dataset]


def detect_layout(path: Path, options: LoadOptions | None = None) -> Layout:
    """The layout of ``path``: the paired folders when the user named them, else the first of
    :data:`LAYOUTS` (in order) whose ``detect`` accepts it; a :class:`MedadaptError` otherwise."""
    options = options or LoadOptions()
    if options.folder_pair is not None or (options.names_folders and path.is_dir()):
        return LAYOUTS["folders"]
    if not path.exists():
        raise MedadaptError("the dataset does not exist.", path=path, fix=f"give one of these layouts: {_layout_help()}.")
    for layout in LAYOUTS.values():
        if layout.detect(path):
            return layout
    if path.is_file():
        raise MedadaptError(
            "is a file but not a dataset spec (a .csv or a dataset.json).",
            path=path,
            fix=f"give one of these layouts: {_layout_help()}.",
        )
    hint = ""
    if _first_dir(path, _IMAGE_DIRS) and (path / "mask").is_dir():
        hint = " ('mask/' is not taken as labels: in DRIVE it is the field of view; name the label folder, e.g. label_dir='1st_manual')"
    raise MedadaptError(
        f"no known dataset layout found{hint}.", path=path, fix=f"give one of these layouts: {_layout_help()}."
    )


def load_segmentation_dataset(
    spec: str | Path,
    *,
    image_suffix: str | None = None,
    label_suffix: str | None = None,
    modality: str = "auto",
    label_dir: str | Path | None = None,
    image_dir: str | Path | None = None,
    window: str | tuple[float, float] | None = None,
    binary: bool | None = None,
) -> Dataset:
    """Recognise the layout at ``spec`` and list its cases (see the module docstring for layouts).

    ``modality`` overrides what the dataset declares ("auto": ``dataset.json`` / CSV column, else
    decided per case: 8-bit 2D images pass through, volumes get MR-style percentiles, or a CT window
    when they hold Hounsfield units). ``label_dir`` / ``image_dir`` name the label / image sub-folders
    of a paired-folder dataset (DRIVE: ``label_dir="1st_manual"``, ``image_suffix="_training"``,
    ``label_suffix="_manual1"``). ``binary=True`` merges all classes into one (finetune-SAM's
    "combine_all"); by default only 2D masks saved for viewing are (0 and values ≥ 128 only, e.g. the
    0/254/255 prostate masks), ``False`` keeps every value as a class.
    """
    modality = _check_modality(modality)
    text, path = str(spec), Path(spec)
    pair = _split_folder_pair(text) if not path.exists() and ":" in text else None
    options = LoadOptions(image_suffix, label_suffix, label_dir, image_dir, pair)
    ds = detect_layout(path, options).read(path, options)
    if modality != "auto":
        ds = replace(ds, modality=modality, cases=[_with_modality(c, modality) for c in ds.cases])
    if window is not None and ds.modality not in ("ct", "auto"):
        raise MedadaptError(
            f"a CT window was given but the dataset's modality is '{ds.modality}'.",
            path=ds.root,
            fix="drop the window, or pass modality='ct' if the images hold Hounsfield units.",
        )
    return replace(ds, window=window, binary=binary)


def _check_modality(modality: str) -> str:
    key = modality.strip().lower()
    if key != "auto" and key not in MODALITIES:
        raise MedadaptError(
            f"unknown modality '{modality}'.", fix=f"use auto or one of: {', '.join(MODALITIES)}."
        )
    return key


def _with_modality(case: CaseRef, modality: str) -> CaseRef:
    return CaseRef(case.key, case.image, case.label, modality, case.group, case.is_3d)


def modality_key(name: str | None) -> str:
    """A declared modality name (``dataset.json``, CSV) → a key of :func:`normalise_for_sam`.

    CT and PET keep their own rule; nnU-Net's ``noNorm`` / ``rgb_to_0_1`` are display images; every other
    name (MRI, T2, FLAIR, ADC, ...) is MR-like and gets foreground percentiles, as in MedSAM.
    """
    if not name:
        return "auto"
    key = name.strip().lower()
    if key in ("mr", "mri"):
        return "mr"
    if key in MODALITIES:
        return key
    if key in ("nonorm", "rgb_to_0_1", "rescale_to_0_1"):
        return _DISPLAY
    return "mr"


def _first_dir(root: Path, names: tuple[str, ...]) -> Path | None:
    for n in names:
        if (root / n).is_dir():
            return root / n
    return None


def _split_folder_pair(text: str) -> tuple[Path, Path] | None:
    """``IMG_DIR:MASK_DIR`` (a Windows drive letter is not a separator)."""
    for i, ch in enumerate(text):
        if ch == ":" and i > 1:
            left, right = Path(text[:i]), Path(text[i + 1 :])
            if left.is_dir() or right.is_dir():
                for p in (left, right):
                    if not p.is_dir():
                        raise MedadaptError(
                            "the folder does not exist.",
                            path=p,
                            fix="give 'IMG_DIR:MASK_DIR' with two existing folders.",
                        )
                return left, right
    return None


# --------------------------------------------------------------------------- MSD / nnU-Net


def _load_msd(root: Path) -> Dataset:
    meta_path = root / "dataset.json"
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise MedadaptError(
            f"cannot be read as JSON ({err}).", path=meta_path, fix="repair or re-download dataset.json."
        ) from err
    channels = meta.get("channel_names") or meta.get("modality") or {}
    if len(channels) > 1:
        raise MedadaptError(
            f"declares {len(channels)} image channels ({', '.join(map(str, channels.values()))}); "
            "2D SAM-family models take one image channel.",
            path=meta_path,
            fix="make a single-channel copy of the dataset (one modality) and point medadapt at it.",
        )
    declared = next(iter(channels.values()), None)
    classes = classes_from_dataset_json(meta.get("labels") or {}, meta_path)
    if meta.get("training"):
        pairs = []
        for i, entry in enumerate(meta["training"]):
            try:
                img, lab = root / entry["image"], root / entry["label"]
            except (KeyError, TypeError):
                raise MedadaptError(
                    f"'training' entry {i} lacks 'image' / 'label'.", path=meta_path
                ) from None
            img = _nnunet_channel_file(img)
            for p, what in ((img, "image"), (lab, "label")):
                if not p.is_file():
                    raise MedadaptError(
                        f"the {what} listed in dataset.json (training entry {i}) does not exist.",
                        path=p,
                        fix="check the imagesTr/ and labelsTr/ folders are complete, or fix dataset.json.",
                    )
            pairs.append((case_key(lab), img, lab))
    else:  # nnU-Net v2: no list, pair imagesTr/<case>_0000 with labelsTr/<case>
        for sub in ("imagesTr", "labelsTr"):
            if not (root / sub).is_dir():
                raise MedadaptError(
                    f"has no '{sub}' folder.",
                    path=root,
                    fix="an MSD / nnU-Net dataset holds imagesTr/ and labelsTr/.",
                )
        found = pair_by_name(
            find_files(root / "imagesTr", VOLUME_SUFFIXES + IMAGE_2D_SUFFIXES, what="image"),
            find_files(root / "labelsTr", VOLUME_SUFFIXES + IMAGE_2D_SUFFIXES, what="label"),
            labels_root=root / "labelsTr",
        )
        pairs = [(p.key, p.image, p.label) for p in found]
    mod = modality_key(declared)
    cases = [CaseRef(k, img, lab, mod, k, _is_3d_file(img)) for k, img, lab in pairs]
    _check_unique(cases, meta_path)
    return Dataset(str(meta.get("name") or root.name), root, "msd", mod, cases, class_names=classes)


def classes_from_dataset_json(labels: dict, path: Path) -> dict[int, str]:
    """MSD ``{"1": "name"}`` or nnU-Net v2 ``{"name": 1}`` → ``{1: "name"}`` without background."""
    out: dict[int, str] = {}
    for a, b in labels.items():
        if isinstance(b, str) and str(a).lstrip("-").isdigit():
            out[int(a)] = b
        elif isinstance(b, int):
            out[b] = str(a)
        else:
            raise MedadaptError(
                f"label '{a}': {b!r} is a region (several classes); only one id per class is supported.",
                path=path,
                fix="list one integer id per class in 'labels'.",
            )
    out.pop(0, None)
    return out


def _nnunet_channel_file(img: Path) -> Path:
    """MSD lists ``imagesTr/case.nii.gz``; nnU-Net conversions store ``imagesTr/case_0000.nii.gz``."""
    if img.is_file():
        return img
    suffix = full_suffix(img)
    alt = img.with_name(stem(img) + "_0000" + suffix)
    return alt if alt.is_file() else img


def _is_3d_file(path: Path) -> bool:
    """A volume file with more than one slice (nnU-Net stores 2D datasets as 1-slice NIfTI)."""
    if not is_volume_file(path):
        return False
    if full_suffix(path) in (".nii", ".nii.gz"):
        import nibabel as nib  # lazy: start-up time (see medadapt.io.volumes)

        try:
            shape = nib.load(str(path)).shape
        except Exception:
            return True  # let the reader report the problem when the case is loaded
        return sum(s > 1 for s in shape[:3]) >= 3
    return True


# --------------------------------------------------------------------------- CSV


def _load_csv_folder(root: Path) -> Dataset:
    files = sorted(p for p in root.iterdir() if p.suffix.lower() == ".csv" and p.is_file())
    roles = {role: [p for p in files if _csv_role(p) == role] for role in _SPLIT_ROLES}
    for role, found in roles.items():
        if len(found) > 1:
            raise MedadaptError(
                f"holds several {role} CSV files ({', '.join(p.name for p in found)}).",
                path=root,
                fix=f"point at the CSV you mean (e.g. {found[0]}); its val/test siblings with the same name pattern are used with it.",
            )
    if not roles["train"]:
        if len(files) == 1:
            return _load_csv_file(files[0])
        raise MedadaptError(
            f"holds CSV files ({', '.join(p.name for p in files)}) but none is named train*.csv.",
            path=root,
            fix="name the training list train*.csv (and val*/test*.csv), or point at one CSV file.",
        )
    return _load_csv_file(roles["train"][0])


def _csv_role(path: Path) -> str | None:
    words = path.stem.lower().replace("-", "_").split("_")
    for role, names in _SPLIT_ROLES.items():
        if any(w in names for w in words):
            return role
    return None


def _csv_siblings(path: Path) -> dict[str, Path]:
    """``train_5shot.csv`` → its ``val_5shot.csv`` / ``test_5shot.csv`` (same pattern, same folder)."""
    out = {"train": path}
    words = path.stem.split("_")
    lower = [w.lower() for w in words]
    idx = next((i for i, w in enumerate(lower) if w in _SPLIT_ROLES["train"]), None)
    if idx is None:
        return {}
    for role in ("val", "test"):
        for name in _SPLIT_ROLES[role]:
            cand = path.with_name("_".join(words[:idx] + [name] + words[idx + 1 :]) + path.suffix)
            if cand.is_file():
                out[role] = cand
                break
    return out


def _load_csv_file(path: Path) -> Dataset:
    """One CSV; a ``train*`` CSV brings its ``val*`` / ``test*`` siblings, which define the split."""
    siblings = _csv_siblings(path)
    if len(siblings) < 2:  # no val/test list beside it: the CSV is just a list of cases
        siblings = {"all": path}
    rows: list[tuple[str, Path, Path, str, str | None]] = []  # role, image, label, modality, group
    for role, csv_path in siblings.items():
        rows += [(role, *r) for r in _read_pairs_csv(csv_path)]
    seen: dict[Path, str] = {}
    for role, img, *_ in rows:
        if img in seen and seen[img] != role:
            raise MedadaptError(
                f"{img.name} is listed both in the {seen[img]} and the {role} CSV.",
                path=path.parent,
                fix="a case must be in one split only.",
            )
        seen[img] = role
    images = [r[1] for r in rows]
    keys = _unique_keys(images, path.parent)
    groups = _groups_from_paths(images, keys)
    cases, split = [], {}
    for (role, img, lab, mod, group), key in zip(rows, keys, strict=True):
        is_3d = _is_3d_file(img)
        cases.append(CaseRef(key, img, lab, mod, group or groups[key], is_3d))
        split.setdefault(role, []).append(key)
    if len({c.key for c in cases}) != len(cases):
        raise MedadaptError("lists the same image twice.", path=path, fix="keep one row per image.")
    given = None if "all" in split else split
    mods = {c.modality for c in cases}
    name = path.parent.name if given else path.stem
    return Dataset(
        name, path.parent, "csv", mods.pop() if len(mods) == 1 else "auto", cases, given_split=given
    )


def _read_pairs_csv(path: Path) -> list[tuple[Path, Path, str, str | None]]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            raw = [r for r in csv.reader(f) if r and any(c.strip() for c in r)]
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise MedadaptError(f"cannot be read as CSV ({err}).", path=path) from err
    if not raw:
        raise MedadaptError("is empty.", path=path, fix="list one 'image,mask' pair per row.")
    header = [c.strip().lower() for c in raw[0]]
    cols = {"image": 0, "label": 1, "modality": 2, "group": None}
    first = 1
    if any(h in _CSV_IMAGE_COLS for h in header) and any(h in _CSV_LABEL_COLS for h in header):
        cols = {
            "image": next(i for i, h in enumerate(header) if h in _CSV_IMAGE_COLS),
            "label": next(i for i, h in enumerate(header) if h in _CSV_LABEL_COLS),
            "modality": header.index("modality") if "modality" in header else None,
            "group": next((i for i, h in enumerate(header) if h in _CSV_GROUP_COLS), None),
        }
        raw, first = raw[1:], 2
    out = []
    for line, row in enumerate(raw, start=first):
        cells = [c.strip() for c in row]
        if len(cells) < 2:
            raise MedadaptError(f"row {line} has {len(cells)} column(s); 'image,mask' expected.", path=path)

        def cell(name: str, cells=cells) -> str | None:
            i = cols[name]
            return cells[i] if i is not None and i < len(cells) and cells[i] else None

        img = _resolve_csv_path(cell("image") or "", path, line, "image")
        lab = _resolve_csv_path(cell("label") or "", path, line, "mask")
        out.append((img, lab, modality_key(cell("modality")), cell("group")))
    return out


def _resolve_csv_path(text: str, csv_path: Path, line: int, what: str) -> Path:
    """A CSV path relative to the CSV's folder, tolerating a leading '/' and one absent top folder.

    finetune-SAM lists ``/MRI-Prostate/masks/x.png`` meaning ``<csv folder>/MRI-Prostate/masks/x.png``;
    copies of the data often drop the ``MRI-Prostate/`` level. A real absolute path that exists wins.
    """
    if not text:
        raise MedadaptError(f"row {line} has no {what} path.", path=csv_path)
    base = csv_path.parent
    rel = Path(text.replace("\\", "/").lstrip("/"))
    candidates = [Path(text)] if Path(text).is_absolute() else []
    candidates += [base / rel]
    if len(rel.parts) > 2:  # drop one top folder, never down to a bare file name (it could be the image)
        candidates.append(base / Path(*rel.parts[1:]))
    for c in candidates:
        if c.is_file():
            return c
    raise MedadaptError(
        f"the {what} '{text}' on row {line} does not exist (looked for {', '.join(str(c) for c in candidates)}).",
        path=csv_path,
        fix="paths in the CSV are relative to the CSV's folder; check the file is there.",
    )


# --------------------------------------------------------------------------- paired folders


def _load_folders(
    images: Path, labels: Path | None, root: Path, image_suffix: str | None, label_suffix: str | None
) -> Dataset:
    if labels is None or not labels.is_dir():
        raise MedadaptError(
            "the label folder does not exist." if labels is not None else "no label folder found.",
            path=labels or root,
            fix=f"give the label folder (one of {', '.join(_LABEL_DIRS)}, or label_dir=NAME).",
        )
    if not images.is_dir():
        raise MedadaptError(
            "the image folder does not exist.", path=images, fix="give image_dir=NAME or 'IMG_DIR:MASK_DIR'."
        )
    suffixes = IMAGE_2D_SUFFIXES + VOLUME_SUFFIXES
    pairs = pair_by_name(
        find_files(images, suffixes, what="image"),
        find_files(labels, suffixes, what="label"),
        image_suffix=image_suffix,
        label_suffix=label_suffix,
        labels_root=labels,
    )
    groups = _groups_from_paths([p.image for p in pairs], [p.key for p in pairs], images)
    cases = [CaseRef(p.key, p.image, p.label, "auto", groups[p.key], _is_3d_file(p.image)) for p in pairs]
    _check_unique(cases, images)
    return Dataset(root.name, root, "folders", "auto", cases)


# --------------------------------------------------------------------------- CVPR24 npz


def _load_npz(root: Path) -> Dataset:
    files = find_files(root, NPZ_SUFFIXES, what=".npz")
    cases = []
    for f in files:
        names, shape = _npz_header(f)
        if "gts" not in names:
            raise MedadaptError(
                f"has no 'gts' array (found: {', '.join(sorted(names)) or 'nothing'}); training cases need ground truth.",
                path=f,
                fix="use the challenge's training files (imgs + gts), or remove this file from the folder.",
            )
        cases.append(CaseRef(stem(f), f, None, _DISPLAY, stem(f), _npz_is_3d(f, shape, "spacing" in names)))
    keys = _unique_keys(files, root)
    cases = [CaseRef(k, c.image, None, c.modality, k, c.is_3d) for c, k in zip(cases, keys, strict=True)]
    return Dataset(root.name, root, "npz", _DISPLAY, cases)


def _npz_header(path: Path) -> tuple[set[str], tuple[int, ...] | None]:
    """Array names and the shape of ``imgs``, read from the archive headers without decompressing data."""
    try:
        with zipfile.ZipFile(path) as z:
            names = {n[:-4] for n in z.namelist() if n.endswith(".npy")}
            shape = None
            if "imgs" in names:
                with z.open("imgs.npy") as f:
                    major, _ = np.lib.format.read_magic(f)
                    read_header = (
                        np.lib.format.read_array_header_1_0
                        if major == 1
                        else np.lib.format.read_array_header_2_0
                    )
                    shape = read_header(f)[0]
    except (OSError, zipfile.BadZipFile, ValueError) as err:
        raise MedadaptError(
            f"is not a readable .npz archive ({err}).",
            path=path,
            fix="re-save it with numpy.savez_compressed.",
        ) from err
    if "imgs" not in names:
        raise MedadaptError(
            f"has no 'imgs' array (found: {', '.join(sorted(names)) or 'nothing'}).", path=path
        )
    return names, shape


def _npz_is_3d(path: Path, shape: tuple[int, ...] | None, has_spacing: bool) -> bool:
    """The CVPR24 rule (as :func:`medadapt.io.cvpr24.read_cvpr24`): name prefix, else the image shape."""
    name = path.name.upper()
    if name.startswith(("2D_", "3D_")):
        return name.startswith("3D_")
    return not (len(shape or ()) == 2 or (len(shape or ()) == 3 and shape[-1] == 3 and not has_spacing))


# --------------------------------------------------------------------------- the registry


def _read_msd(path: Path, options: LoadOptions) -> Dataset:
    return _load_msd(path.parent if path.is_file() else path)


def _read_csv(path: Path, options: LoadOptions) -> Dataset:
    return _load_csv_file(path) if path.is_file() else _load_csv_folder(path)


def _read_folders(path: Path, options: LoadOptions) -> Dataset:
    if options.folder_pair is not None:
        images, labels = options.folder_pair
        root = images.parent
    elif options.names_folders:
        # _first_dir returns root / name: joining it to a relative ``path`` again would double it
        images = path / options.image_dir if options.image_dir is not None else (
            _first_dir(path, _IMAGE_DIRS) or path / "images")
        labels = path / options.label_dir if options.label_dir is not None else _first_dir(path, _LABEL_DIRS)
        root = path
    else:
        images, labels, root = _first_dir(path, _IMAGE_DIRS) or path / "images", _first_dir(path, _LABEL_DIRS), path
    return _load_folders(images, labels, root, options.image_suffix, options.label_suffix)


def _has_csv(path: Path) -> bool:
    if path.is_file():
        return path.suffix.lower() == ".csv"
    return any(p.suffix.lower() == ".csv" for p in path.iterdir())


#: Layout name -> layout, in the order :func:`detect_layout` tries them.
LAYOUTS: dict[str, Layout] = {
    layout.name: layout
    for layout in (
        Layout("msd", "MSD / nnU-Net folder (dataset.json + imagesTr/ + labelsTr/)",
               lambda p: p.name == "dataset.json" if p.is_file() else (p / "dataset.json").is_file(), _read_msd),
        Layout("csv", "CSV file of image,mask[,modality] rows, or a folder of train*/val*/test*.csv files",
               _has_csv, _read_csv),
        Layout("folders", "paired folders (images/ + masks/ or labels/, a --label-dir, or 'IMG_DIR:MASK_DIR')",
               lambda p: p.is_dir() and bool(_first_dir(p, _IMAGE_DIRS) and _first_dir(p, _LABEL_DIRS)),
               _read_folders),
        Layout("npz", "folder of CVPR24 .npz cases (imgs + gts)",
               lambda p: p.is_dir() and any(p.rglob("*.npz")), lambda p, o: _load_npz(p)),
    )
}


def _layout_help() -> str:
    return "; ".join(layout.description for layout in LAYOUTS.values())


# --------------------------------------------------------------------------- reading one case


def _read_case(ref: CaseRef, window, binary: bool | None) -> LoadedCase:
    loaded = _read_raw_case(ref, window, binary)
    if binary:
        loaded = loaded._replace(label=(loaded.label > 0).astype(np.uint8))
    return loaded


def _read_raw_case(ref: CaseRef, window, binary: bool | None = None) -> LoadedCase:
    if full_suffix(ref.image) == ".npz":
        c = read_cvpr24(ref.image, require_boxes=False)
        if c.gts is None:
            raise MedadaptError("has no 'gts' array.", path=ref.image)
        image = c.imgs if ref.modality == _DISPLAY else _normalise(c.imgs, ref, window)
        if c.ndim == 2:
            return LoadedCase(image, _labels(c.gts), (1.0, 1.0), None)
        return LoadedCase(image, _labels(c.gts), tuple(c.spacing or (1.0, 1.0, 1.0)), 0)
    if ref.is_3d:
        vol = read_volume(ref.image)
        lab = read_volume(ref.label, label=True)
        check_pair(vol, lab)
        return LoadedCase(
            _normalise(vol.array, ref, window),
            _labels(lab.array),
            tuple(vol.spacing),
            default_slice_axis(vol),
        )
    image = read_image_2d(ref.image)
    label = read_label_2d(ref.label, binary=binary)
    if label.shape != image.shape[:2]:
        raise MedadaptError(
            f"the mask has shape {label.shape} but its image {ref.image.name} has {image.shape[:2]}.",
            path=ref.label,
            fix="pair each image with its own mask at the same resolution.",
        )
    if image.ndim == 3 and image.shape[-1] != 3:
        raise MedadaptError(f"has {image.shape[-1]} channels; grey or RGB expected.", path=ref.image)
    return LoadedCase(_normalise(image, ref, window), _labels(label), (1.0, 1.0), None)


def _normalise(arr: np.ndarray, ref: CaseRef, window) -> np.ndarray:
    """8-bit 2D images are used as stored (they were made for display); the rest by modality."""
    if not ref.is_3d and arr.dtype == np.uint8 and ref.modality != "ct":
        return arr
    return normalise_for_sam(arr, ref.modality, window=window, is_volume=ref.is_3d)


def _labels(arr: np.ndarray) -> np.ndarray:
    arr = np.asarray(arr)
    return arr.astype(np.uint8) if arr.size == 0 or int(arr.max()) <= 255 else arr.astype(np.int32)


# --------------------------------------------------------------------------- keys and groups


def _unique_keys(paths: list[Path], root: Path) -> list[str]:
    """File-name keys; where names repeat across folders, the path below ``root`` (without extension)."""
    keys = [case_key(p) for p in paths]
    if len(set(keys)) == len(keys):
        return keys
    out = []
    for p in paths:
        try:
            rel = p.relative_to(root)
        except ValueError:
            rel = p
        out.append((rel.parent / stem(p)).as_posix())
    return out


def _groups_from_paths(images: list[Path], keys: list[str], root: Path | None = None) -> dict[str, str]:
    """Group = first folder below the images' common folder (``images/patient77/...`` → ``patient77``);
    a case is its own group when all images sit in one folder."""
    parents = {p.parent for p in images}
    if len(parents) <= 1:
        return {k: k for k in keys}
    common = Path(os.path.commonpath([str(p.parent) for p in images])) if root is None else root
    return {
        k: p.relative_to(common).parts[0] if len(p.relative_to(common).parts) > 1 else k
        for p, k in zip(images, keys, strict=True)
    }


def _check_unique(cases: list[CaseRef], where: Path) -> None:
    seen: dict[str, Path] = {}
    for c in cases:
        if c.key in seen:
            raise MedadaptError(
                f"two images share the case name '{c.key}': {seen[c.key]} and {c.image}.",
                path=where,
                fix="keep one image per case name.",
            )
        seen[c.key] = c.image
