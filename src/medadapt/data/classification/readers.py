"""Image classification data: dataset readers, label-fraction sampling, per-backbone preprocessing.

Readers turn each public layout into one :class:`ClassificationSplit` (images + labels + task type):

- MedMNIST ``.npz`` of any resolution (``train_images`` / ``train_labels`` / ``val_*`` / ``test_*``);
- NIH ChestX-ray14 (``Data_Entry_2017.csv``, ``train_val_list.txt`` / ``test_list.txt``, 14 findings in
  the order used by CXR-MAE, MRM and MED-PEFT);
- CheXpert CSVs with a policy for uncertain (-1) labels: ``ones``, ``zeros`` or ``ignore`` (masked out
  of the loss and the metrics);
- RSNA Pneumonia (``stage_2_train_labels.csv``, one image-level label per patient);
- MED-PEFT / MRM split lists (``relative/path.png l1 l2 ...``) and a generic ``image,label1,...`` CSV.

The task type (binary / multi-class / multi-label) is inferred from the labels.
:func:`sample_fraction` draws the 1 % / 10 % label subsets of "Less could be better": stratified per
class, every class kept, deterministic for a seed. Iterative stratification (Sechidis et al., 2011) is
written out for the multi-label case because scikit-learn has no multi-label stratifier and
scikit-multilearn is not a dependency. :func:`sample_shots` draws k images per class instead,
:func:`holdout_split` a validation part for sources that have none, :func:`dataset_splits` lists
the split names a source offers.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from medadapt.errors import MedadaptError

TaskType = Literal["binary", "multiclass", "multilabel"]
Uncertain = Literal["ones", "zeros", "ignore"]

NIH_CLASSES = (
    "Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
    "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia",
)
# The five CheXpert competition findings (Irvin et al., 2019), as evaluated by MRM and MED-PEFT.
CHEXPERT_COMPETITION = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# --------------------------------------------------------------------------- the split container


@dataclass
class ClassificationSplit:
    """Images and labels of one split.

    ``images``: an ``N×H×W[×C]`` array (MedMNIST) or ``N`` file paths.
    ``labels``: int ``[N]`` for binary / multi-class, float ``[N,K]`` of 0/1 for multi-label.
    ``mask``: bool ``[N,K]``, False where a label is unknown (CheXpert ``ignore``); None = all known.
    """

    images: np.ndarray | list[Path]
    labels: np.ndarray
    task: TaskType
    class_names: list[str]
    ids: list[str]
    mask: np.ndarray | None = None
    source: str = ""
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.images)
        if len(self.labels) != n or len(self.ids) != n or (self.mask is not None and len(self.mask) != n):
            raise MedadaptError(f"{n} images but {len(self.labels)} labels", path=self.source or None,
                                fix="every image needs exactly one label row")

    def __len__(self) -> int:
        return len(self.images)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def num_outputs(self) -> int:
        """Logits the model needs: 1 for binary (sigmoid), else one per class."""
        return 1 if self.task == "binary" else self.num_classes

    def targets(self) -> np.ndarray:
        """Loss targets: float ``[N,num_outputs]`` for binary / multi-label, int64 ``[N]`` for multi-class."""
        if self.task == "multiclass":
            return self.labels.astype(np.int64)
        if self.task == "binary":
            return self.labels.reshape(-1, 1).astype(np.float32)
        return self.labels.astype(np.float32)

    def known(self) -> np.ndarray:
        """Bool ``[N,num_outputs]`` (``[N,1]`` for multi-class): which labels count in loss and metrics."""
        width = 1 if self.task == "multiclass" else self.num_outputs
        return np.ones((len(self), width), bool) if self.mask is None else self.mask.astype(bool)

    def class_counts(self) -> dict[str, int]:
        """Images per class (multi-label: known positives per class)."""
        if self.task == "multilabel":
            pos = ((self.labels > 0.5) & self.known()).sum(axis=0)
            return {c: int(n) for c, n in zip(self.class_names, pos, strict=True)}
        counts = np.bincount(self.labels.astype(np.int64), minlength=self.num_classes)
        return {c: int(n) for c, n in zip(self.class_names, counts, strict=True)}

    def subset(self, indices: Sequence[int] | np.ndarray) -> ClassificationSplit:
        idx = np.asarray(indices, dtype=np.int64)
        images = self.images[idx] if isinstance(self.images, np.ndarray) else [self.images[i] for i in idx]
        return replace(self, images=images, labels=self.labels[idx], ids=[self.ids[i] for i in idx],
                       mask=None if self.mask is None else self.mask[idx], meta=dict(self.meta))

    def select_classes(self, indices: Sequence[int]) -> ClassificationSplit:
        """Keep only the label columns ``indices`` of a multi-label split (e.g. 5 of NIH's 14)."""
        idx = [int(i) for i in indices]
        if self.task != "multilabel":
            raise MedadaptError(f"choosing classes applies to multi-label data; this {self.task} data has "
                                f"classes {self.class_names}", path=self.source or None,
                                fix="drop --classes (all classes of single-label data are trained together)")
        bad = [i for i in idx if not 0 <= i < self.num_classes]
        if bad or not idx or len(set(idx)) != len(idx):
            raise MedadaptError(f"classes {idx} must be distinct indices in 0..{self.num_classes - 1} "
                                f"({', '.join(f'{j}={c}' for j, c in enumerate(self.class_names))})",
                                path=self.source or None)
        return replace(self, labels=self.labels[:, idx], class_names=[self.class_names[i] for i in idx],
                       mask=None if self.mask is None else self.mask[:, idx], meta=dict(self.meta))

    def load_image(self, i: int) -> np.ndarray:
        """Pixels of image ``i``: ``H×W`` or ``H×W×3`` in the stored dtype."""
        if isinstance(self.images, np.ndarray):
            return self.images[i]
        from medadapt.io.images import read_image_2d

        return read_image_2d(self.images[i])


def infer_task(labels: np.ndarray, mask: np.ndarray | None = None, *, source: str | None = None) -> tuple[TaskType, int]:
    """(task, number of classes) from a label array: ``[N]``/``[N,1]`` ints or ``[N,K]`` 0/1 columns."""
    labels = np.asarray(labels)
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.size == 0:
        raise MedadaptError("no labels found", path=source, fix="check that the file lists labelled images")
    if labels.ndim == 1:
        if not np.all(np.isfinite(labels)) or np.any(labels < 0) or np.any(labels != np.round(labels)):
            raise MedadaptError("single-column labels must be non-negative integers (class indices)", path=source,
                                fix="encode classes as 0..C-1, or use one 0/1 column per class for multi-label")
        n = int(labels.max()) + 1
        return ("binary", 2) if n <= 2 else ("multiclass", n)
    if labels.ndim == 2:
        values = labels if mask is None else labels[mask.astype(bool)]
        if not np.isin(values, (0, 1)).all():
            raise MedadaptError(f"multi-label columns must hold 0/1, found {np.unique(values)[:10].tolist()}",
                                path=source, fix="use 1 for present, 0 for absent (and -1 or blank for unknown)")
        return "multilabel", labels.shape[1]
    raise MedadaptError(f"labels have shape {labels.shape}; expected [N] or [N,K]", path=source)


def _split(images, labels, class_names, ids, *, mask=None, source="", task=None, meta=None) -> ClassificationSplit:
    labels = np.asarray(labels)
    inferred, n_classes = infer_task(labels, mask, source=source)
    if task == "binary" and inferred != "binary":
        raise MedadaptError(f"task 'binary' but the labels hold {n_classes} classes", path=source or None)
    task = task or inferred
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if task == "multiclass" and inferred == "binary":  # a 2-class problem declared multi-class
        n_classes = max(n_classes, len(class_names or ()))
    if class_names is None:
        class_names = [str(c) for c in range(n_classes)]
    if task != "multilabel":
        labels = labels.astype(np.int64)
        if len(class_names) < n_classes:
            raise MedadaptError(f"labels go up to {n_classes - 1} but only {len(class_names)} class names given",
                                path=source)
    else:
        labels = labels.astype(np.float32)
    return ClassificationSplit(images=images, labels=labels, task=task, class_names=list(class_names), ids=list(ids),
                               mask=mask, source=str(source), meta=meta or {})


# --------------------------------------------------------------------------- readers


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
    return _split(images, labels, names, ids, source=str(path), task=task, meta={"format": "medmnist", "split": split})


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
    return _split([index[n] for n in names], labels, list(NIH_CLASSES), names, source=str(root), task="multilabel",
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
    return _split(paths, raw, list(classes), rels, mask=mask, source=str(csv_path), task="multilabel",
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
        part = _stratified_parts(labels, fractions, seed)
        keep = np.flatnonzero(part == ("train", "val", "test").index(split))
        ids, labels = [ids[i] for i in keep], labels[keep]
    folder = Path(image_dir) if image_dir is not None else root / "stage_2_train_images"
    paths = _resolve_all([f"{p}.dcm" for p in ids], [folder], table)
    return _split(paths, labels, ["normal", "pneumonia"], ids, source=str(root), task="binary",
                  meta={"format": "rsna", "split": split})


def _stratified_parts(labels: np.ndarray, fractions: Sequence[float], seed: int) -> np.ndarray:
    """Part index per item, each class shuffled (seeded) and cut by ``fractions``."""
    rng = np.random.default_rng(seed)
    part = np.zeros(len(labels), np.int64)
    bounds = np.cumsum(fractions)[:-1]
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        cuts = np.round(bounds * len(idx)).astype(int)
        for k, chunk in enumerate(np.split(idx, cuts)):
            part[chunk] = k
    return part


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
    return _split(paths, labels, class_names, rels, source=str(list_path), meta={"format": "split_list"})


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
    return _split(paths, labels, names, rels, mask=mask, source=str(csv_path), task=task, meta={"format": "csv"})


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


# --------------------------------------------------------------------------- label-fraction sampling


def sample_fraction(labels: np.ndarray, fraction: float, seed: int = 0, *, mask: np.ndarray | None = None) -> np.ndarray:
    """Sorted indices of a deterministic, class-stratified ``fraction`` of the items.

    Single-label (``[N]``): each class keeps ``round(fraction * n_c)`` items, at least one. Multi-label
    (``[N,K]``): iterative stratification towards ``fraction`` of each class's positives, then one
    positive added for any class left without one. ``fraction=1`` returns every index.
    """
    labels = np.asarray(labels)
    if not (0 < fraction <= 1):
        raise MedadaptError(f"label fraction must be in (0, 1], got {fraction}", fix="use e.g. 0.01 for 1 % of labels")
    n = len(labels)
    if n == 0:
        raise MedadaptError("cannot sample from an empty split")
    if fraction == 1:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim == 1:
        keep = []
        for c in np.unique(labels):
            idx = np.flatnonzero(labels == c)
            k = min(len(idx), max(1, round(fraction * len(idx))))
            keep.append(rng.choice(idx, size=k, replace=False))
        return np.sort(np.concatenate(keep))
    pos = labels > 0.5
    if mask is not None:
        pos &= mask.astype(bool)
    chosen = _iterative_stratification(pos, fraction, rng)
    for j in np.flatnonzero(pos.any(axis=0) & ~pos[chosen].any(axis=0)):
        chosen[rng.choice(np.flatnonzero(pos[:, j]))] = True
    return np.flatnonzero(chosen)


def sample_shots(labels: np.ndarray, shots: int, seed: int = 0, *, mask: np.ndarray | None = None) -> np.ndarray:
    """Sorted indices of ``shots`` images per class (all of a class when it has fewer), seeded.

    Multi-label: classes from the rarest up, random positives are added until each class has ``shots``
    (an image counts for every class it is positive for, so common classes may get more).
    """
    labels = np.asarray(labels)
    if shots < 1:
        raise MedadaptError(f"shots must be >= 1, got {shots}", fix="use e.g. --shots 10 (images per class)")
    rng = np.random.default_rng(seed)
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim == 1:
        keep = [rng.permutation(np.flatnonzero(labels == c))[:shots] for c in np.unique(labels)]
        return np.sort(np.concatenate(keep))
    pos = labels > 0.5
    if mask is not None:
        pos &= mask.astype(bool)
    chosen = np.zeros(len(labels), bool)
    for j in np.argsort(pos.sum(axis=0), kind="stable"):
        need = shots - int(pos[chosen, j].sum())
        if need > 0:
            chosen[rng.permutation(np.flatnonzero(pos[:, j] & ~chosen))[:need]] = True
    return np.flatnonzero(chosen)


def holdout_split(labels: np.ndarray, fraction: float, seed: int = 0) -> np.ndarray:
    """Bool ``[N]``: a seeded ``fraction`` held out for validation, stratified by class (multi-label:
    by the iterative stratification of :func:`sample_fraction`). For sources without a validation split."""
    labels = np.asarray(labels)
    if not 0 < fraction < 1:
        raise MedadaptError(f"validation fraction must be in (0, 1), got {fraction}")
    held = np.zeros(len(labels), bool)
    held[sample_fraction(labels, fraction, seed)] = True
    if held.all() or not held.any():
        raise MedadaptError(f"{len(labels)} labelled images are too few to hold {fraction:.0%} out for validation",
                            fix="pass a separate validation file (val_data)")
    return held


def _iterative_stratification(pos: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Sechidis et al. (2011) with two folds (kept, rest); returns a bool ``[N]`` of kept items.

    Rarest label first, each of its unassigned items goes to the fold that still wants most of that label
    (ties: the fold that wants most items, then random); label-free items fill the folds' remaining sizes.
    """
    n, k = pos.shape
    ratios = np.array([fraction, 1.0 - fraction])
    want_items = ratios * n
    want_label = np.outer(ratios, pos.sum(axis=0))  # [2,K]
    fold = np.full(n, -1)
    remaining = pos.copy()
    while remaining.any():
        counts = remaining.sum(axis=0)
        live = np.flatnonzero(counts)
        rarest = live[counts[live] == counts[live].min()]
        label = int(rng.choice(rarest))
        for i in rng.permutation(np.flatnonzero(remaining[:, label])):
            best = np.flatnonzero(want_label[:, label] == want_label[:, label].max())
            if len(best) > 1:
                best = best[want_items[best] == want_items[best].max()]
            f = int(rng.choice(best))
            fold[i] = f
            want_items[f] -= 1
            want_label[f] -= pos[i]
            remaining[i] = False
    free = rng.permutation(np.flatnonzero(fold < 0))
    n_keep = int(max(0, min(len(free), round(want_items[0]))))
    fold[free[:n_keep]] = 0
    return fold == 0


# --------------------------------------------------------------------------- preprocessing and dataset


class ImageTransform:
    """``H×W[×C]`` pixels -> float tensor ``[3,size,size]`` the way a backbone was pre-trained.

    ``normalize="imagenet"``: uint8 / 255 (other dtypes: min-max per image) -> ImageNet mean/std.
    ``normalize="minmax"``: min-max per image to [0,1] (LiteMedSAM). ``fit="crop"``: short side to
    ``size`` then centre crop (MED-PEFT eval transform); ``fit="pad"``: long side to ``size`` then
    zero-pad bottom/right (SAM). Grayscale is replicated to 3 channels. ``augment`` adds MONAI's
    random affine (±10° rotation, ±10 % scale, ±5 % shift) for training.
    """

    def __init__(self, size: int, normalize: str = "imagenet", fit: str = "crop", *, augment: bool = False,
                 seed: int = 0):
        if normalize not in ("imagenet", "minmax") or fit not in ("crop", "pad"):
            raise MedadaptError(f"unknown preprocessing normalize={normalize!r} fit={fit!r}",
                                fix="normalize: imagenet|minmax, fit: crop|pad")
        self.size, self.normalize, self.fit = size, normalize, fit
        self.affine = None
        if augment:
            from monai.transforms import RandAffine

            self.affine = RandAffine(prob=0.8, rotate_range=(math.pi / 18,), scale_range=(0.1, 0.1),
                                     translate_range=(0.05 * size, 0.05 * size), padding_mode="zeros")
            self.affine.set_random_state(seed=seed)

    def __call__(self, image: np.ndarray, seed: int | None = None) -> torch.Tensor:
        """``seed`` fixes this call's random augmentation (reproducible whatever the loader workers)."""
        x = torch.from_numpy(np.ascontiguousarray(image))
        if x.ndim == 2:
            x = x[None]
        elif x.ndim == 3 and x.shape[-1] in (1, 3, 4):
            x = x[..., :3].permute(2, 0, 1)  # HWC -> CHW
        else:
            raise MedadaptError(f"image has shape {tuple(image.shape)}; expected H×W or H×W×3")
        x = self._resize(x.float()[None])[0]  # [C,h,w], short (crop) or long (pad) side = size
        if self.normalize == "imagenet" and image.dtype == np.uint8:
            x = x / 255.0
        else:  # LiteMedSAM's min-max after the resize; also brings 16-bit / float radiographs to [0,1]
            x = (x - x.min()) / (x.max() - x.min()).clamp_min(1e-8)
        x = self._crop_or_pad(x)  # [C,S,S]
        if self.affine is not None:  # on one channel for grayscale: 3x cheaper than after replication
            if seed is not None:
                self.affine.set_random_state(seed=seed % 2**32)
            x = torch.as_tensor(self.affine(x)).float()
        if x.shape[0] == 1:
            x = x.expand(3, -1, -1)
        if self.normalize == "imagenet":
            mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
            x = (x - mean) / torch.tensor(IMAGENET_STD).view(3, 1, 1)
        return x.contiguous()

    def _resize(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        s = self.size
        if self.fit == "crop":  # short side -> s; the long side never rounds below s
            scale = s / min(h, w)
            nh, nw = max(s, round(h * scale)), max(s, round(w * scale))
        else:  # long side -> s
            scale = s / max(h, w)
            nh, nw = min(s, max(1, round(h * scale))), min(s, max(1, round(w * scale)))
        if (nh, nw) == (h, w):
            return x
        return F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False, antialias=scale < 1)

    def _crop_or_pad(self, x: torch.Tensor) -> torch.Tensor:
        (h, w), s = x.shape[-2:], self.size
        if self.fit == "crop":
            top, left = (h - s) // 2, (w - s) // 2
            return x[..., top:top + s, left:left + s]
        return F.pad(x, (0, s - w, 0, s - h))


class ClassificationDataset(torch.utils.data.Dataset):
    """Torch dataset over a split: ``{"image": [3,S,S], "target", "known", "index"}``.

    ``target`` is float ``[num_outputs]`` (BCE) or an int64 scalar (CE); ``known`` marks labels that
    count. Augmentation of item ``i`` is seeded by ``(seed, epoch, i)``: set ``epoch`` each epoch.
    """

    def __init__(self, split: ClassificationSplit, transform: ImageTransform, *, seed: int = 0):
        self.split, self.transform, self.seed, self.epoch = split, transform, seed, 0
        self._targets = torch.from_numpy(split.targets())
        self._known = torch.from_numpy(split.known()).float()

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int) -> dict:
        # i >= len: the same image on a later pass of one long epoch (EpochPasses), augmented anew
        seed = (self.seed * 1_000_003 + self.epoch * 100_003 + i) % 2**32
        i = i % len(self.split)
        return {"image": self.transform(self.split.load_image(i), seed), "target": self._targets[i],
                "known": self._known[i], "index": i}


class EpochPasses(torch.utils.data.Sampler[int]):
    """``num_samples`` indices made of fresh permutations of ``range(n)``, pass ``p`` offset by ``p*n``.

    Lets one "epoch" span several passes over a few-label training set (so validation, which the
    trainer runs at each epoch end, happens every ``val_every`` steps, not every few steps) while
    every pass still sees each image once, with its own augmentation seed (datasets map ``i % n``).
    """

    def __init__(self, n: int, num_samples: int, generator: torch.Generator | None = None):
        self.n, self.num_samples, self.generator = n, num_samples, generator

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self):
        passes = -(-self.num_samples // self.n)
        order = torch.cat([torch.randperm(self.n, generator=self.generator) + p * self.n for p in range(passes)])
        return iter(order[: self.num_samples].tolist())
