"""The synthetic demo dataset loads with the MSD loader and is deterministic."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from medadapt.data.datasets import load_segmentation_dataset
from medadapt.data.fewshot import make_split
from medadapt.data.slices import iter_slices
from medadapt.data.synthetic import make_synthetic_dataset, synthetic_case


def test_loads_with_the_msd_loader(tmp_path: Path):
    root = make_synthetic_dataset(tmp_path / "synth", n_cases=4, seed=0)
    ds = load_segmentation_dataset(root)
    assert ds.layout == "msd" and len(ds) == 4 and ds.is_3d and ds.modality == "mr"
    assert ds.classes == {1: "bright_structure", 2: "dark_structure"}
    case = ds.load(ds.cases[0])
    assert case.image.shape == (48, 48, 32) and case.slice_axis == 2 and case.spacing == (1.0, 1.0, 1.5)
    assert set(np.unique(case.label)) == {0, 1, 2}
    assert list(iter_slices(ds, ds.keys()))
    split = make_split(ds, shots=1, n_val=1, test=2)
    assert len(split.train) == 1 and len(split.test) == 2


def test_deterministic_and_seed_dependent(tmp_path: Path):
    a = make_synthetic_dataset(tmp_path / "a", n_cases=2, seed=3)
    b = make_synthetic_dataset(tmp_path / "b", n_cases=2, seed=3)
    c = make_synthetic_dataset(tmp_path / "c", n_cases=2, seed=4)
    name = "imagesTr/synth_001.nii.gz"
    arr = [np.asarray(nib.load(str(root / name)).dataobj) for root in (a, b, c)]
    assert np.array_equal(arr[0], arr[1]) and not np.array_equal(arr[0], arr[2])


def test_structures_have_contrast_but_are_not_trivial():
    for i in range(6):
        image, label = synthetic_case(np.random.default_rng([7, i]))
        assert image.dtype == np.int16 and label.dtype == np.uint8
        for c in (1, 2):
            assert 30 < int((label == c).sum()) < 0.05 * label.size  # present, small
        tissue = image[(label == 0) & (image > 200)]
        bright, dark = image[label == 1], image[label == 2]
        assert np.median(bright) > np.median(tissue) > np.median(dark)
        # noisy: a global threshold at the midpoint mislabels a visible share of tissue voxels
        assert np.mean(tissue > (np.median(bright) + np.median(tissue)) / 2) > 0.001
