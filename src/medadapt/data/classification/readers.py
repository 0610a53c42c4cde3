"""Classification dataset readers: each public layout becomes one :class:`ClassificationSplit`.

- MedMNIST ``.npz`` of any resolution (``train_images`` / ``train_labels`` / ``val_*`` / ``test_*``);
- NIH ChestX-ray14 (``Data_Entry_2017.csv``, ``train_val_list.txt`` / ``test_list.txt``, 14 findings in
  the order used by CXR-MAE, MRM and MED-PEFT);
- CheXpert CSVs with a policy for uncertain (-1) labels: ``ones``, ``zeros`` or ``ignore`` (masked out
  of the loss and the metrics);
- RSNA Pneumonia (``stage_2_train_labels.csv``, one image-level label per patient);
- MED-PEFT / MRM split lists (``relative/path.png l1 l2 ...``) and a generic ``image,label1,...`` CSV.

:func:`load_classification_split` picks the reader from what a source is; :func:`dataset_splits`
lists the split names a source offers.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np

from medadapt.data.classification.sampling import stratified_parts
from medadapt.data.classification.split import ClassificationSplit, TaskType, infer_task, make_split
from medadapt.errors import MedadaptError

Uncertain = Literal["ones", "zeros", "ignore"]

NIH_CLASSES = (
    "Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
    "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia",
)
# The five CheXpert competition findings (Irvin et al., 2019), as evaluated by MRM and MED-PEFT.
CHEXPERT_COMPETITION = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion")


def load_medmnist(path: str | Path, split: str = "train", *, class_names: Sequence[str] | None = None) -> ClassificationSplit:
    """One split (``train`` / ``val`` / ``test``) of a MedMNIST ``.npz`` (2D, any size, gray or RGB).

    The task is inferred from ``train_labels`` when present so that every split of one file agrees
    (a small val split may lack a class).
    """
    path = Path(path)
    if not path.is_file():
        raise MedadaptError("MedMNIST file not found", path=path, fix="pass the path of a MedMNIST .npz file")
    try:
        npz = np.load(path, allow_pickle=False)
    except Exception as err:
        raise MedadaptError(f"cannot read as .npz ({type(err).__name__})", path=path,
                            fix="pass a MedMNIST .npz file (numpy.savez)") from err
    with npz:
        keys = set(npz.files)
        ik, lk = f"{split}_images", f"{split}_labels"
        if ik not in keys or lk not in keys:
            splits = sorted({k.rsplit("_", 1)[0] for k in keys if k.endswith(("_images", "_labels"))})
            raise MedadaptError(f"no '{ik}'/'{lk}' arrays (keys: {sorted(keys)})", path=path,
                                fix=f"choose a split present in the file: {', '.join(splits) or 'none'}")
        images, labels = npz[ik], npz[lk]
        ref = npz["train_labels"] if "train_labels" in keys else labels
    if images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[-1] not in (1, 3)):
        raise MedadaptError(f"'{ik}' has shape {images.shape}; expected N×H×W or N×H×W×3 (2D MedMNIST)",
                            path=path, fix="3D MedMNIST volumes are not supported by the 2D classifier")
    if len(images) != len(labels):
        raise MedadaptError(f"'{ik}' has {len(images)} images but '{lk}' has {len(labels)} rows", path=path)
    task, n_classes = infer_task(ref, source=str(path))
    if task != "multilabel":
        n_classes = max(n_classes, int(np.asarray(labels).max(initial=0)) + 1)
    names = list(class_names) if class_names is not None else [str(c) for c in range(n_classes)]
    ids = [f"{split}_{i:06d}" for i in range(len(images))]
    return make_split(images, labels, names, ids, source=str(path), task=task, meta={"format": "medmnist", "split": split})


def _read_label_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    if not path.is_file():
        raise MedadaptError("CSV file not found", path=path, fix="check the path")
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames:
            raise MedadaptError("CSV file is empty or has no header row", path=path,
                                fix="the first line must name the columns")
        rows = list(reader)
    return [c.strip() for c in reader.fieldnames], [{k.strip(): (v or "").strip() for k, v in r.items() if k} for r in rows]


def _index_images(folders: Sequence[Path]) -> dict[str, Path]:
    """File name -> path for every file directly in ``folders`` (one directory scan each)."""
    out: dict[str, Path] = {}
    for folder in folders:
        with os.scandir(folder) as it:
            for entry in it:
                if entry.is_file():
                    out.setdefault(entry.name, Path(entry.path))
    return out


def _read_name_list(path: Path) -> list[str]:
    if not path.is_file():
        raise MedadaptError("split list not found", path=path,
                            fix="NIH ChestX-ray14 ships train_val_list.txt and test_list.txt next to Data_Entry_2017.csv")
    return [ln.split()[0] for ln in path.read_text().splitlines() if ln.strip()]


def _patient_holdout(groups: Sequence[str], fraction: float, seed: int) -> np.ndarray:
    """Bool mask of items whose group (patient) falls in a seeded ``fraction`` of the groups."""
    uniq = np.array(sorted(set(groups)))
    rng = np.random.default_rng(seed)
    held = set(rng.permutation(uniq)[: max(1, round(fraction * len(uniq)))].tolist())
    return np.array([g in held for g in groups])


def load_nih_chestxray14(root: str | Path, split: str = "train", *, image_dir: str | Path | None = None,
                         val_fraction: float = 0.1, seed: int = 0) -> ClassificationSplit:
    """NIH ChestX-ray14 with the official lists, 14 findings (``No Finding`` = all zeros).

    ``split``: ``test`` (``test_list.txt``), ``train_val`` (``train_val_list.txt``), or ``train`` / ``val``:
    a patient-wise, seeded split of ``train_val`` holding ``val_fraction`` of the patients out, so one
    patient's images never sit on both sides. Images are searched in ``image_dir``, ``images/``,
    ``images_*/images/`` (the Kaggle layout) and ``all_classes/`` (MED-PEFT).
    """
    root = Path(root)
    entry = root / "Data_Entry_2017.csv"
    if split not in ("train", "val", "train_val", "test"):
        raise MedadaptError(f"unknown NIH split {split!r}", fix="use train, val, train_val or test")
    cols, rows = _read_label_csv(entry)
    for needed in ("Image Index", "Finding Labels"):
        if needed not in cols:
            raise MedadaptError(f"column '{needed}' missing (columns: {cols[:6]}...)", path=entry,
                                fix="use the original Data_Entry_2017.csv")
    by_name = {r["Image Index"]: r for r in rows}
    names = _read_name_list(root / ("test_list.txt" if split == "test" else "train_val_list.txt"))
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise MedadaptError(f"{len(unknown)} listed images are not in Data_Entry_2017.csv (e.g. {unknown[0]})",
                            path=entry, fix="use the list files and CSV of the same NIH release")
    if split in ("train", "val"):
        patients = [by_name[n].get("Patient ID") or n.split("_")[0] for n in names]
        held = _patient_holdout(patients, val_fraction, seed)
        names = [n for n, h in zip(names, held, strict=True) if h == (split == "val")]

    folders = [Path(image_dir)] if image_dir is not None else (
        [root / "images", root / "all_classes"] + sorted(root.glob("images_*/images")))
    folders = [f for f in folders if f.is_dir()]
    if not folders:
        raise MedadaptError("no image folder found", path=root,
                            fix="put the PNGs in images/ (or images_001/images/ ...), or pass image_dir")
    index = _index_images(folders)
    missing = [n for n in names if n not in index]
    if missing:
        raise MedadaptError(f"{len(missing)} of {len(names)} images not found (e.g. {missing[0]})", path=folders[0],
                            fix="extract every images_*.tar.gz archive, or pass image_dir")
    labels = np.zeros((len(names), len(NIH_CLASSES)), np.float32)
    col = {c: j for j, c in enumerate(NIH_CLASSES)}
    for i, n in enumerate(names):
        for finding in by_name[n]["Finding Labels"].split("|"):
            if finding in col:
                labels[i, col[finding]] = 1.0
    return make_split([index[n] for n in names], labels, list(NIH_CLASSES), names, source=str(root), task="multilabel",
                  meta={"format": "nih", "split": split})


def _resolve(rel: str, roots: Sequence[Path]) -> Path | None:
    for r in roots:
        p = r / rel
        if p.is_file():
            return p
    return None


def _resolve_all(rels: Sequence[str], roots: Sequence[Path], source: Path) -> list[Path]:
    paths = [_resolve(r, roots) for r in rels]
    missing = [r for r, p in zip(rels, paths, strict=True) if p is None]
    if missing:
        raise MedadaptError(
            f"{len(missing)} of {len(rels)} images not found (e.g. {missing[0]}; looked in {', '.join(map(str, roots))})",
            path=source, fix="pass image_root, the folder the image paths are relative to")
    return paths  # type: ignore[return-value]


def load_chexpert(csv_path: str | Path, *, image_root: str | Path | None = None, uncertain: Uncertain = "ones",
                  classes: Sequence[str] = CHEXPERT_COMPETITION, frontal_only: bool = False) -> ClassificationSplit:
    """CheXpert ``train.csv`` / ``valid.csv``: multi-label over ``classes``.

    Blank = not mentioned = negative (standard practice); uncertain ``-1`` becomes 1 (``ones``, U-Ones),
    0 (``zeros``, U-Zeros) or is masked out of loss and metrics (``ignore``). ``Path`` values
    (``CheXpert-v1.0-small/train/...``) are resolved against ``image_root``, the CSV's grandparent and
    the CSV's folder.
    """
    csv_path = Path(csv_path)
    if uncertain not in ("ones", "zeros", "ignore"):
        raise MedadaptError(f"unknown uncertain-label policy {uncertain!r}", fix="use ones, zeros or ignore")
    cols, rows = _read_label_csv(csv_path)
    absent = [c for c in ("Path", *classes) if c not in cols]
    if absent:
        raise MedadaptError(f"columns missing: {absent}", path=csv_path,
                            fix="use the CheXpert train.csv/valid.csv, or pick classes present in its header")
    if frontal_only:
        rows = [r for r in rows if r.get("Frontal/Lateral", "Frontal") == "Frontal"]
    raw = np.zeros((len(rows), len(classes)), np.float32)
    for i, r in enumerate(rows):
        for j, c in enumerate(classes):
            v = r[c]
            try:
                raw[i, j] = float(v) if v else 0.0
            except ValueError as err:
                raise MedadaptError(f"row {i + 2}, column '{c}': {v!r} is not 1, 0, -1 or blank", path=csv_path) from err
    if not np.isin(raw, (-1.0, 0.0, 1.0)).all():
        raise MedadaptError("CheXpert labels must be 1, 0, -1 or blank", path=csv_path)
    unc = raw == -1
    mask = None
    if uncertain == "ignore":
        mask = ~unc
        raw[unc] = 0.0
    else:
        raw[unc] = 1.0 if uncertain == "ones" else 0.0
    roots = [Path(image_root)] if image_root is not None else [csv_path.parent.parent, csv_path.parent]
    rels = [r["Path"] for r in rows]
    # "CheXpert-v1.0-small/valid/x.jpg" next to the CSV itself: drop the dataset folder name as well
    paths = [_resolve(p, roots) or _resolve(p.split("/", 1)[-1], roots) for p in rels]
    missing = [p for p, q in zip(rels, paths, strict=True) if q is None]
    if missing:
        raise MedadaptError(f"{len(missing)} of {len(rels)} images not found (e.g. {missing[0]})", path=csv_path,
                            fix="pass image_root, the folder that contains CheXpert-v1.0[-small]/")
    return make_split(paths, raw, list(classes), rels, mask=mask, source=str(csv_path), task="multilabel",
                  meta={"format": "chexpert", "uncertain": uncertain})


def load_rsna_pneumonia(root: str | Path, split: str = "train", *, image_dir: str | Path | None = None,
                        fractions: tuple[float, float, float] = (0.7, 0.15, 0.15), seed: int = 0) -> ClassificationSplit:
    """RSNA Pneumonia Detection: binary per image (any box = pneumonia) from ``stage_2_train_labels.csv``.

    Only the training set has labels, so ``train`` / ``val`` / ``test`` are a seeded split stratified by
    label with ``fractions``; ``all`` returns every image. Images: ``stage_2_train_images/<id>.dcm``.
    """
    root = Path(root)
    table = root / "stage_2_train_labels.csv"
    cols, rows = _read_label_csv(table)
    if "patientId" not in cols or "Target" not in cols:
        raise MedadaptError(f"columns 'patientId' and 'Target' expected, found {cols}", path=table,
                            fix="use the competition's stage_2_train_labels.csv")
    target: dict[str, int] = {}
    for i, r in enumerate(rows):
        if r["Target"] not in ("0", "1"):
            raise MedadaptError(f"row {i + 2}: Target {r['Target']!r} is not 0 or 1", path=table)
        target[r["patientId"]] = max(target.get(r["patientId"], 0), int(r["Target"]))
    ids = sorted(target)
    labels = np.array([target[p] for p in ids], np.int64)
    if split != "all":
        if split not in ("train", "val", "test"):
            raise MedadaptError(f"unknown RSNA split {split!r}", fix="use train, val, test or all")
        if len(fractions) != 3 or min(fractions) < 0 or not math.isclose(sum(fractions), 1.0):
            raise MedadaptError(f"fractions {fractions} must be three non-negative numbers summing to 1")
        part = stratified_parts(labels, fractions, seed)
        keep = np.flatnonzero(part == ("train", "val", "test").index(split))
        ids, labels = [ids[i] for i in keep], labels[keep]
    folder = Path(image_dir) if image_dir is not None else root / "stage_2_train_images"
    paths = _resolve_all([f"{p}.dcm" for p in ids], [folder], table)
    return make_split(paths, labels, ["normal", "pneumonia"], ids, source=str(root), task="binary",
                  meta={"format": "rsna", "split": split})


def load_split_file(list_path: str | Path, *, image_root: str | Path | None = None,
                    class_names: Sequence[str] | None = None) -> ClassificationSplit:
    """A MED-PEFT / MRM split list: one ``relative/path label1 [label2 ...]`` line per image.

    One label column gives binary / multi-class, several give multi-label. Paths are relative to
    ``image_root`` (default: the list's folder, then its ``all_classes/`` folder as MED-PEFT's NIH layout).
    """
    list_path = Path(list_path)
    if not list_path.is_file():
        raise MedadaptError("split list not found", path=list_path, fix="check the path")
    rels, rows = [], []
    for ln_no, line in enumerate(list_path.read_text().splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        try:
            rows.append([float(v) for v in parts[1:]])
        except ValueError as err:
            raise MedadaptError(f"line {ln_no}: labels must be numbers: {line[:80]!r}", path=list_path,
                                fix="each line is 'path l1 l2 ...' separated by spaces") from err
        rels.append(parts[0])
    widths = {len(r) for r in rows}
    if not rows or len(widths) != 1 or 0 in widths:
        raise MedadaptError(f"lines must all carry the same number (>=1) of labels, found {sorted(widths)}",
                            path=list_path, fix="each line is 'path l1 l2 ...'")
    labels = np.array(rows, np.float32)
    if class_names is not None and labels.shape[1] > 1 and len(class_names) != labels.shape[1]:
        raise MedadaptError(f"{labels.shape[1]} label columns but {len(class_names)} class names", path=list_path)
    roots = [Path(image_root)] if image_root is not None else [list_path.parent, list_path.parent / "all_classes"]
    paths = _resolve_all(rels, roots, list_path)
    return make_split(paths, labels, class_names, rels, source=str(list_path), meta={"format": "split_list"})


def load_csv(csv_path: str | Path, *, image_root: str | Path | None = None, image_column: str = "image",
             task: TaskType | None = None) -> ClassificationSplit:
    """Generic ``image,label1,label2,...`` CSV (paths relative to ``image_root`` or the CSV's folder).

    One label column: integer class indices, or class names (sorted to indices). Several columns:
    multi-label 0/1 per class; ``-1`` or blank marks an unknown label (masked out).
    """
    csv_path = Path(csv_path)
    cols, rows = _read_label_csv(csv_path)
    if image_column not in cols:
        raise MedadaptError(f"no '{image_column}' column (columns: {cols})", path=csv_path,
                            fix=f"name the image path column '{image_column}'")
    label_cols = [c for c in cols if c != image_column]
    if not label_cols:
        raise MedadaptError("no label column", path=csv_path, fix="add columns after the image: image,label")
    if not rows:
        raise MedadaptError("CSV has a header but no rows", path=csv_path)
    root = Path(image_root) if image_root is not None else csv_path.parent
    rels = [r[image_column] for r in rows]
    paths = _resolve_all(rels, [root], csv_path)
    mask = None
    if len(label_cols) == 1:
        vals = [r[label_cols[0]] for r in rows]
        if any(v == "" for v in vals):
            raise MedadaptError(f"{sum(v == '' for v in vals)} rows have no label", path=csv_path)
        try:
            labels = np.array([int(v) for v in vals], np.int64)
            names = None
        except ValueError:
            names = sorted(set(vals))
            labels = np.array([names.index(v) for v in vals], np.int64)
    else:
        names = label_cols
        labels = np.zeros((len(rows), len(label_cols)), np.float32)
        mask = np.ones_like(labels, bool)
        for i, r in enumerate(rows):
            for j, c in enumerate(label_cols):
                v = r[c]
                if v in ("", "-1", "-1.0"):
                    mask[i, j] = False
                    continue
                try:
                    labels[i, j] = float(v)
                except ValueError as err:
                    raise MedadaptError(f"row {i + 2}, column '{c}': {v!r} is not 0/1", path=csv_path) from err
        if mask.all():
            mask = None
    return make_split(paths, labels, names, rels, mask=mask, source=str(csv_path), task=task, meta={"format": "csv"})


def dataset_splits(source: str | Path) -> list[str] | None:
    """Split names ``source`` offers, or None for a single-file source (CSV, split list) that is one
    split by itself (pass another file for another split)."""
    source = Path(source)
    if source.is_dir():
        if (source / "Data_Entry_2017.csv").is_file():
            return ["train", "val", "train_val", "test"]
        if (source / "stage_2_train_labels.csv").is_file():
            return ["train", "val", "test", "all"]
        return []
    if source.suffix.lower() == ".npz" and source.is_file():
        try:
            with np.load(source, allow_pickle=False) as npz:
                keys = set(npz.files)
        except Exception:
            return []
        names = {k.removesuffix("_images") for k in keys if k.endswith("_images")}
        names = {n for n in names if f"{n}_labels" in keys}
        return [n for n in ("train", "val", "test") if n in names] + sorted(names - {"train", "val", "test"})
    return None


def load_classification_split(source: str | Path, split: str = "train", **kwargs) -> ClassificationSplit:
    """Pick the reader from what ``source`` is: ``.npz`` (MedMNIST), a folder with NIH's
    ``Data_Entry_2017.csv`` or RSNA's ``stage_2_train_labels.csv``, a CheXpert CSV (``Path`` column),
    a split list ``.txt``, or a generic CSV. ``split`` applies to the readers that have splits."""
    source = Path(source)
    if source.is_dir():
        if (source / "Data_Entry_2017.csv").is_file():
            return load_nih_chestxray14(source, split, **kwargs)
        if (source / "stage_2_train_labels.csv").is_file():
            return load_rsna_pneumonia(source, split, **kwargs)
        raise MedadaptError("folder is not a known classification layout", path=source,
                            fix="pass a MedMNIST .npz, a CSV, a split list, or the NIH / RSNA dataset folder")
    suffix = source.suffix.lower()
    if suffix == ".npz":
        return load_medmnist(source, split, **kwargs)
    if suffix == ".txt":
        return load_split_file(source, **kwargs)
    if suffix == ".csv":
        cols, _ = _read_label_csv(source)
        return load_chexpert(source, **kwargs) if "Path" in cols else load_csv(source, **kwargs)
    if not source.exists():
        raise MedadaptError("dataset not found", path=source, fix="check the path")
    raise MedadaptError(f"unknown dataset file type '{suffix}'", path=source, fix="use .npz, .csv or .txt")


