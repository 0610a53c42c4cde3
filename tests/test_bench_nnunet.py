"""bench/bench_nnunet.py: medadapt's k-shot split written into nnU-Net's raw format (only the training cases,
geometry kept, a valid dataset.json), the test volumes kept apart, and scoring. nnU-Net itself is not needed."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import bench_nnunet  # noqa: E402
from medadapt.data.datasets import load_segmentation_dataset  # noqa: E402
from medadapt.data.fewshot import make_split  # noqa: E402

# oblique, anisotropic, with an offset: a writer that drops or re-derives geometry changes it
AFFINE = np.array([[0.0, -1.25, 0.1, 12.5], [1.2, 0.0, 0.0, -40.0], [0.0, 0.2, 7.9, 3.0], [0.0, 0.0, 0.0, 1.0]])


def _msd(root: Path, n: int = 9) -> Path:
    rng = np.random.default_rng(0)
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    training = []
    for i in range(n):
        key = f"vol_{i:03d}"
        img = rng.normal(100, 20, (12, 14, 6)).astype(np.float32)
        lab = np.zeros((12, 14, 6), np.float32)  # float labels, as some MSD files store them
        lab[2:6, 3:9, 1:4] = 1
        lab[7:10, 3:9, 2:5] = 2
        nib.save(nib.Nifti1Image(img, AFFINE), root / "imagesTr" / f"{key}.nii.gz")
        nib.save(nib.Nifti1Image(lab, AFFINE), root / "labelsTr" / f"{key}.nii.gz")
        training.append({"image": f"./imagesTr/{key}.nii.gz", "label": f"./labelsTr/{key}.nii.gz"})
    (root / "dataset.json").write_text(json.dumps({
        "name": "Tiny", "modality": {"0": "MRI"}, "labels": {"0": "background", "1": "front", "2": "back"},
        "numTraining": n, "training": training}))
    return root


@pytest.fixture()
def tiny(tmp_path):
    dataset = load_segmentation_dataset(str(_msd(tmp_path / "tiny")))
    return dataset, make_split(dataset, shots=2, seed=0)


def test_raw_folder_holds_only_the_training_cases_with_their_geometry(tiny, tmp_path):
    dataset, split = tiny
    raw = tmp_path / "raw"
    folder = bench_nnunet.write_raw_dataset(dataset, list(split.train), raw, 7, "tiny_k2_s0")
    assert folder == raw / "Dataset007_tiny_k2_s0"
    images = sorted(p.name for p in (folder / "imagesTr").iterdir())
    labels = sorted(p.name for p in (folder / "labelsTr").iterdir())
    assert images == sorted(f"{k}_0000.nii.gz" for k in split.train)
    assert labels == sorted(f"{k}.nii.gz" for k in split.train)
    everything = " ".join(str(p) for p in raw.rglob("*"))
    assert not any(k in everything for k in (*split.test, *split.val))
    assert not list(raw.glob(".*"))  # no temporary folder left behind
    for key in split.train:
        src = dataset.case(key)
        assert (folder / "imagesTr" / f"{key}_0000.nii.gz").read_bytes() == src.image.read_bytes()
        out = nib.load(str(folder / "labelsTr" / f"{key}.nii.gz"))
        ref = nib.load(str(src.label))
        np.testing.assert_allclose(out.affine, ref.affine, atol=1e-5)
        np.testing.assert_allclose(out.header.get_zooms(), ref.header.get_zooms(), atol=1e-6)
        assert out.get_data_dtype() == np.uint8
        np.testing.assert_array_equal(np.asanyarray(out.dataobj), ref.get_fdata().astype(np.uint8))
    meta = json.loads((folder / "dataset.json").read_text())
    assert meta["channel_names"] == {"0": "MRI"}
    assert meta["labels"] == {"background": 0, "front": 1, "back": 2}
    assert meta["numTraining"] == 2 and meta["file_ending"] == ".nii.gz"


def test_same_training_cases_as_the_other_benchmarks(tiny, tmp_path):
    dataset, split = tiny
    # the split bench_fewshot.py / bench_default_fit.py use: train for (k, seed), the fixed test set
    assert list(split.test) == list(make_split(dataset, shots=1, seed=0).test)
    assert set(make_split(dataset, shots=1, seed=0).train) <= set(split.train)
    folder = bench_nnunet.write_raw_dataset(dataset, list(split.train), tmp_path / "raw", 7, "t")
    assert sorted(p.name[:-len("_0000.nii.gz")] for p in (folder / "imagesTr").iterdir()) == sorted(split.train)


def test_test_volumes_go_to_a_separate_folder_and_score_like_the_benchmarks(tiny, tmp_path):
    dataset, split = tiny
    images, labels = tmp_path / "test_images", tmp_path / "test_labels"
    bench_nnunet.write_test_inputs(dataset, list(split.test), images, labels)
    assert sorted(p.name for p in images.iterdir()) == sorted(f"{k}_0000.nii.gz" for k in split.test)
    # a perfect prediction and one with class 2 missing
    pred = tmp_path / "pred"
    pred.mkdir()
    for i, key in enumerate(split.test):
        lab = nib.load(str(labels / f"{key}.nii.gz"))
        arr = np.asanyarray(lab.dataobj).copy()
        if i == 0:
            arr[arr == 2] = 0
        nib.save(nib.Nifti1Image(arr, lab.affine, lab.header), pred / f"{key}.nii.gz")
    scores = bench_nnunet.score_predictions(pred, labels, [1, 2])
    n = len(split.test)
    assert scores["scored_cases"] == n
    assert scores["dsc_per_class"]["1"] == pytest.approx(1.0)
    assert scores["dsc_per_class"]["2"] == pytest.approx((n - 1) / n)
    assert scores["dsc"] == pytest.approx((2 * n - 1) / (2 * n))
    assert scores["hd95_infinite"] == 1 and scores["hd95"] == pytest.approx(0.0)


def test_bad_inputs_are_refused_clearly(tiny, tmp_path, capsys):
    dataset, split = tiny
    with pytest.raises(bench_nnunet.BenchError, match="1..999"):
        bench_nnunet.write_raw_dataset(dataset, list(split.train), tmp_path, 1000, "t")
    with pytest.raises(bench_nnunet.BenchError, match="no training cases"):
        bench_nnunet.write_raw_dataset(dataset, [], tmp_path, 1, "t")
    rc = bench_nnunet.main(["--data", str(dataset.root), "--nnunet-bin", str(tmp_path / "nowhere"),
                            "--work", str(tmp_path / "w")])
    assert rc == 2 and "--nnunet-bin" in capsys.readouterr().err
    assert not (tmp_path / "w").exists()


def test_trainer_budget_and_run_keys():
    assert bench_nnunet.epochs_of("nnUNetTrainer") == 1000
    assert bench_nnunet.epochs_of("nnUNetTrainer_1epoch") == 1
    assert bench_nnunet.epochs_of("nnUNetTrainer_50epochs") == 50
    assert bench_nnunet.epochs_of("nnUNetTrainerDA5") is None
    assert bench_nnunet.run_key("nnUNetTrainer_10epochs", 5, 0) == "nnunet:nnUNetTrainer_10epochs/k5/s0"
    assert bench_nnunet.run_key("nnUNetTrainer_10epochs", 5, 0, "2d") == "nnunet:nnUNetTrainer_10epochs+2d/k5/s0"


def test_prediction_input_folder_links_only_the_chosen_volumes(tiny, tmp_path):
    dataset, split = tiny
    images, labels = tmp_path / "test_images", tmp_path / "test_labels"
    bench_nnunet.write_test_inputs(dataset, list(split.test), images, labels)
    chosen = sorted(images.iterdir())[:2]
    folder = bench_nnunet._linked_folder(tmp_path / "predict_in_2", chosen)
    assert sorted(p.name for p in folder.iterdir()) == [p.name for p in chosen]
    assert all((folder / p.name).samefile(p) for p in chosen) and not list(tmp_path.glob(".predict_in_2*"))


def _drive_like(root: Path, n: int = 6) -> Path:
    """A DRIVE-style 2D folder: RGB TIFF images, 0/255 GIF masks named by key."""
    from PIL import Image

    rng = np.random.default_rng(1)
    (root / "images").mkdir(parents=True)
    (root / "1st_manual").mkdir()
    for i in range(n):
        key = f"{21 + i}"
        Image.fromarray(rng.integers(0, 255, (20, 18, 3), dtype=np.uint8)).save(root / "images" / f"{key}_training.tif")
        mask = np.zeros((20, 18), np.uint8)
        mask[4:12, 3 + i : 9 + i] = 255
        Image.fromarray(mask).save(root / "1st_manual" / f"{key}_manual1.gif")
    return root


def test_2d_images_become_png_cases_for_nnunet_2d(tmp_path, capsys):
    from PIL import Image

    from medadapt.io.images import read_image_2d, read_label_2d

    root = _drive_like(tmp_path / "drive")
    dataset = load_segmentation_dataset(str(root), label_dir="1st_manual", image_suffix="_training",
                                        label_suffix="_manual1")
    assert not dataset.is_3d
    split = make_split(dataset, shots=2, seed=0)
    folder = bench_nnunet.write_raw_dataset(dataset, list(split.train), tmp_path / "raw", 8, "d")
    meta = json.loads((folder / "dataset.json").read_text())
    assert meta["file_ending"] == ".png" and meta["channel_names"] == {"0": "R", "1": "G", "2": "B"}
    assert sorted(p.name for p in (folder / "imagesTr").iterdir()) == sorted(f"{k}_0000.png" for k in split.train)
    for key in split.train:
        src = dataset.case(key)
        np.testing.assert_array_equal(np.asarray(Image.open(folder / "imagesTr" / f"{key}_0000.png")),
                                      read_image_2d(src.image))
        label = np.asarray(Image.open(folder / "labelsTr" / f"{key}.png"))
        assert set(np.unique(label)) == {0, 1}  # class indices, not the 0/255 of the viewing mask
        np.testing.assert_array_equal(label, read_label_2d(src.label))
    images, labels = tmp_path / "ti", tmp_path / "tl"
    bench_nnunet.write_test_inputs(dataset, list(split.test), images, labels)
    assert sorted(p.name for p in images.iterdir()) == sorted(f"{k}_0000.png" for k in split.test)
    scores = bench_nnunet.score_predictions(labels, labels, [1])  # a perfect prediction scores 1
    assert scores["scored_cases"] == len(split.test) and scores["dsc"] == pytest.approx(1.0)
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "python").touch()  # past the environment check, to the dataset's
    rc = bench_nnunet.main(["--data", str(root), "--label-dir", "1st_manual", "--image-suffix", "_training",
                            "--label-suffix", "_manual1", "--config", "3d_fullres", "--nnunet-bin", str(tmp_path / "bin"),
                            "--work", str(tmp_path / "w")])
    assert rc == 2 and "--config 2d" in capsys.readouterr().err and not (tmp_path / "w").exists()
