"""MSD-layout volume datasets for 3D training: cases, few-shot split, MONAI datasets.

Listing the cases (``dataset.json`` + ``imagesTr/`` + ``labelsTr/``, class names, modality) is
:func:`medadapt.data.datasets.load_segmentation_dataset`, and the k-shot split is
:func:`medadapt.data.fewshot.make_split`: the held-out test volumes are fixed by the dataset alone
(whatever k and the seed), validation comes from the labelled pool, and the k training volumes are
drawn from the rest with the seed, so no evaluation volume is ever trained on. This module adds what
3D training needs on top: a check that the cases are volumes, the preprocessing matching the dataset's
modality, and MONAI datasets that cache the deterministic preprocessing of the few training volumes
(random crops are drawn fresh each epoch).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path

import torch
from monai.data import CacheDataset, DataLoader, list_data_collate
from monai.data import Dataset as MonaiDataset
from monai.transforms import Compose

from medadapt.data.datasets import Dataset, load_segmentation_dataset
from medadapt.data.fewshot import Split, make_split
from medadapt.data.transforms3d import VolumePreprocessing
from medadapt.errors import MedadaptError

__all__ = [
    "crop_loader",
    "few_shot_volumes",
    "load_volume_dataset",
    "volume_dataset",
    "volume_preprocessing",
    "volume_records",
]


def load_volume_dataset(spec: str | Path, *, modality: str = "auto") -> Dataset:
    """:func:`load_segmentation_dataset`, refusing datasets that are not 3D volumes."""
    ds = load_segmentation_dataset(spec, modality=modality)
    if not ds.is_3d:
        raise MedadaptError(
            "is not a dataset of 3D volumes", path=ds.root, fix="use a volumetric dataset (NIfTI/MHA volumes)"
        )
    return ds


def few_shot_volumes(
    dataset: Dataset, shots: int, *, seed: int = 0, n_val: int | None = None, test=None
) -> Split:
    """k training volumes (seeded), validation from the pool, fixed held-out test (see the module doc)."""
    kwargs = {} if test is None else {"test": test}
    return make_split(dataset, shots=shots, seed=seed, n_val=n_val, **kwargs)


def volume_preprocessing(dataset: Dataset, base: VolumePreprocessing | None = None) -> VolumePreprocessing:
    """``base`` (a model's preprocessing) with the dataset's modality: CT window for CT, else MR percentiles."""
    base = base or VolumePreprocessing()
    modality = "CT" if dataset.modality.lower() == "ct" else "MR"
    return replace(base, modality=modality)


def volume_records(
    dataset: Dataset, keys: Sequence[str], *, dataset_id: int | str | None = None
) -> list[dict[str, object]]:
    """``[{"image": path, "label": path, "case_id": key[, "dataset_id": id]}]`` for MONAI dict transforms."""
    out = []
    for key in keys:
        case = dataset.case(key)
        record: dict[str, object] = {"image": str(case.image), "case_id": case.key}
        if case.label is not None:
            record["label"] = str(case.label)
        if dataset_id is not None:
            record["dataset_id"] = dataset_id
        out.append(record)
    return out


def volume_dataset(
    records: Sequence[Mapping[str, object]], transform: Compose, *, cache: bool = True
) -> MonaiDataset:
    """A MONAI dataset; with ``cache`` the transforms up to the first random one run once per volume."""
    if not records:
        raise MedadaptError("no volumes to build a dataset from", fix="check the split has training cases")
    if cache:
        return CacheDataset(list(records), transform, cache_rate=1.0, num_workers=0, progress=False)
    return MonaiDataset(list(records), transform)


def crop_loader(dataset: MonaiDataset, batch_size: int, seed: int) -> DataLoader:
    """Shuffled loader of random crops whose order depends on ``seed`` only (pass seed + epoch).

    In-process (``num_workers=0``): the crop transforms are seeded with ``Compose.set_random_state``
    by the caller, which worker processes would not see. ``list_data_collate`` flattens the
    ``num_samples`` crops of each volume into the batch.
    """
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(seed),
        num_workers=0,
        collate_fn=list_data_collate,
    )
