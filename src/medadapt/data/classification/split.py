"""The classification split container: images, labels, task type and which labels are known.

The task type (binary / multi-class / multi-label) is inferred from the labels (:func:`infer_task`);
:func:`make_split` builds a checked :class:`ClassificationSplit` for every reader.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np

from medadapt.errors import MedadaptError
from medadapt.io.images import read_image_2d

TaskType = Literal["binary", "multiclass", "multilabel"]


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


def make_split(images, labels, class_names, ids, *, mask=None, source="", task=None, meta=None) -> ClassificationSplit:
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


