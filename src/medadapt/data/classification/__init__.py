"""Image classification data: readers, label budgets, per-backbone preprocessing, the torch dataset.

- :mod:`.split`: :class:`ClassificationSplit` (images + labels + task type) and task inference;
- :mod:`.readers`: MedMNIST, NIH ChestX-ray14, CheXpert, RSNA Pneumonia, split lists, generic CSV;
- :mod:`.sampling`: label fractions, k shots per class, validation hold-outs;
- :mod:`.transforms`: the backbone's preprocessing as a MONAI ``Compose``;
- :mod:`.dataset`: the map-style dataset and the multi-pass epoch sampler.
"""

from medadapt.data.classification.dataset import ClassificationDataset, EpochPasses
from medadapt.data.classification.readers import (
    CHEXPERT_COMPETITION,
    NIH_CLASSES,
    Uncertain,
    dataset_splits,
    load_chexpert,
    load_classification_split,
    load_csv,
    load_medmnist,
    load_nih_chestxray14,
    load_rsna_pneumonia,
    load_split_file,
)
from medadapt.data.classification.sampling import (
    holdout_split,
    sample_fraction,
    sample_shots,
    stratified_parts,
)
from medadapt.data.classification.split import ClassificationSplit, TaskType, infer_task, make_split
from medadapt.data.classification.transforms import IMAGENET_MEAN, IMAGENET_STD, ImageTransform, ResizeSide

__all__ = [
    "CHEXPERT_COMPETITION",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "NIH_CLASSES",
    "ClassificationDataset",
    "ClassificationSplit",
    "EpochPasses",
    "ImageTransform",
    "ResizeSide",
    "TaskType",
    "Uncertain",
    "dataset_splits",
    "holdout_split",
    "infer_task",
    "load_chexpert",
    "load_classification_split",
    "load_csv",
    "load_medmnist",
    "load_nih_chestxray14",
    "load_rsna_pneumonia",
    "load_split_file",
    "make_split",
    "sample_fraction",
    "sample_shots",
    "stratified_parts",
]
