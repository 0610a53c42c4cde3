"""Dataset layouts: MSD, CSV (file and folder), paired folders (DRIVE suffix rule), CVPR24 npz."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from medadapt.data.datasets import LAYOUTS, Dataset, LoadOptions, detect_layout, load_segmentation_dataset
from medadapt.errors import MedadaptError

# --------------------------------------------------------------------------- real data


def test_hippocampus_msd(data_dir: Path):
    ds = load_segmentation_dataset(data_dir / "hippocampus")
    assert ds.layout == "msd" and ds.name == "Hippocampus"
    assert len(ds) == 60 and ds.is_3d
    assert ds.classes == {1: "Anterior", 2: "Posterior"}
    assert ds.modality == "mr"
    assert {c.group for c in ds.cases} == set(ds.keys())  # one volume = one group
    case = ds.load("hippocampus_001")
    assert case.image.dtype == np.uint8 and case.image.shape == case.label.shape
    assert case.image.max() > 200  # percentile-normalised, not raw MR values
    assert set(np.unique(case.label)) == {0, 1, 2}
    assert case.spacing == (1.0, 1.0, 1.0) and case.slice_axis == 2


def test_hippocampus_float_labels_are_integers(data_dir: Path):
    """Two hippocampus labels are stored as float32; they must come back as whole class ids."""
    ds = load_segmentation_dataset(data_dir / "hippocampus")
    for c in ds.cases:
        if nib.load(str(c.label)).get_data_dtype().kind == "f":
            lab = ds.load(c).label
            assert lab.dtype == np.uint8 and set(np.unique(lab)) <= {0, 1, 2}
            break
    else:
        pytest.fail("no float32 label found in hippocampus")


def test_prostate_csv_folder_defines_the_split(data_dir: Path):
    ds = load_segmentation_dataset(data_dir / "prostate_mri_2d")
    assert ds.layout == "csv" and len(ds) == 10 and not ds.is_3d
    assert ds.given_split is not None
    assert len(ds.given_split["train"]) == 5 and len(ds.given_split["val"]) == 5
    assert "BIDMC05_32" in ds.given_split["train"] and "UCL34_9" in ds.given_split["val"]
    # the mask column reads '/MRI-Prostate/masks/...': leading '/' and absent prefix are resolved
    case = ds.case("BIDMC05_32")
    assert case.label == data_dir / "prostate_mri_2d" / "masks" / "BIDMC05_32.png"
    assert case.group == "patient5"
    assert ds.case("RUNMC03_12").group == ds.case("RUNMC03_16").group == "patient77"
    loaded = ds.load(case)
    assert loaded.image.shape == (384, 384) and loaded.image.dtype == np.uint8
    assert loaded.slice_axis is None


def test_prostate_viewing_masks_become_binary(data_dir: Path):
    """Some prostate masks hold 0/254/255 (a lossy export): one foreground class, not classes 254/255."""
    ds = load_segmentation_dataset(data_dir / "prostate_mri_2d")
    lab = ds.load("BMC26_16").label
    assert set(np.unique(lab)) == {0, 1}
    raw = np.asarray(Image.open(ds.case("BMC26_16").label))
    assert int(lab.sum()) == int((raw > 0).sum())
    assert ds.classes == {1: "foreground"}
    kept = load_segmentation_dataset(data_dir / "prostate_mri_2d", binary=False).load("BMC26_16").label
    assert set(np.unique(kept)) == {0, 254, 255}


def test_prostate_single_csv_brings_its_val_sibling(data_dir: Path):
    ds = load_segmentation_dataset(data_dir / "prostate_mri_2d" / "train_5shot.csv")
    assert len(ds) == 10 and set(ds.given_split) == {"train", "val"}


def test_drive_paired_folders_with_suffix_rule(data_dir: Path):
    ds = load_segmentation_dataset(
        data_dir / "drive" / "training",
        label_dir="1st_manual",
        image_suffix="_training",
        label_suffix="_manual1",
    )
    assert ds.layout == "folders" and len(ds) == 20
    case = ds.case("21")
    assert case.image.name == "21_training.tif" and case.label.name == "21_manual1.gif"
    loaded = ds.load(case)
    assert loaded.image.shape == (584, 565, 3) and loaded.image.dtype == np.uint8
    assert set(np.unique(loaded.label)) == {0, 1}
    assert 0.05 < loaded.label.mean() < 0.2  # vessels, not the field-of-view mask


def test_drive_without_label_dir_is_refused(data_dir: Path):
    with pytest.raises(MedadaptError) as err:
        load_segmentation_dataset(data_dir / "drive" / "training")
    msg = str(err.value)
    assert str(data_dir / "drive" / "training") in msg and "1st_manual" in msg and "dataset.json" in msg


def test_drive_suffix_mismatch_names_the_images(data_dir: Path):
    with pytest.raises(MedadaptError, match="no label file with the same name"):
        load_segmentation_dataset(data_dir / "drive" / "training", label_dir="1st_manual")


# --------------------------------------------------------------------------- built in tmp_path


def _png(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def _pair(rng, h=24, w=32):
    img = rng.integers(0, 255, (h, w), dtype=np.uint8)
    mask = np.zeros((h, w), np.uint8)
    mask[5:15, 8:20] = 255
    return img, mask


def test_csv_with_header_modality_and_patient_folders(tmp_path: Path):
    rng = np.random.default_rng(0)
    rows = []
    for p in range(3):
        for s in range(2):
            img, mask = _pair(rng)
            _png(tmp_path / "data" / "imgs" / f"pat{p}" / f"slice_{s}.png", img)
            _png(tmp_path / "data" / "gt" / f"pat{p}" / f"slice_{s}.png", mask)
            rows.append(f"data/imgs/pat{p}/slice_{s}.png,/data/gt/pat{p}/slice_{s}.png,MRI")
    csv_path = tmp_path / "list.csv"
    csv_path.write_text("image,mask,modality\n" + "\n".join(rows) + "\n")
    ds = load_segmentation_dataset(csv_path)
    assert len(ds) == 6 and ds.given_split is None
    # file names repeat across patients: keys fall back to the relative path, groups to the patient folder
    assert ds.keys()[0] == "data/imgs/pat0/slice_0"
    assert [c.group for c in ds.cases] == ["pat0", "pat0", "pat1", "pat1", "pat2", "pat2"]
    assert ds.modality == "mr"
    loaded = ds.load(ds.cases[0])
    assert set(np.unique(loaded.label)) == {0, 1}


def test_csv_missing_file_is_named(tmp_path: Path):
    rng = np.random.default_rng(0)
    img, mask = _pair(rng)
    _png(tmp_path / "a.png", img)
    (tmp_path / "list.csv").write_text("a.png,masks/a.png\n")
    with pytest.raises(MedadaptError) as err:
        load_segmentation_dataset(tmp_path / "list.csv")
    msg = str(err.value)
    assert "list.csv" in msg and "masks/a.png" in msg and "row 1" in msg


def test_csv_folder_with_two_train_lists_is_ambiguous(tmp_path: Path):
    rng = np.random.default_rng(0)
    img, mask = _pair(rng)
    _png(tmp_path / "a.png", img)
    _png(tmp_path / "a_mask.png", mask)
    for name in ("train_1shot.csv", "train_5shot.csv"):
        (tmp_path / name).write_text("a.png,a_mask.png\n")
    with pytest.raises(MedadaptError, match="several train CSV"):
        load_segmentation_dataset(tmp_path)
    assert len(load_segmentation_dataset(tmp_path / "train_1shot.csv")) == 1


def test_paired_folders_and_explicit_pair_spec(tmp_path: Path):
    rng = np.random.default_rng(1)
    for i in range(3):
        img, mask = _pair(rng)
        _png(tmp_path / "images" / f"c{i}.png", img)
        _png(tmp_path / "masks" / f"c{i}.png", mask)
    ds = load_segmentation_dataset(tmp_path)
    assert ds.layout == "folders" and ds.keys() == ["c0", "c1", "c2"] and not ds.is_3d
    ds2 = load_segmentation_dataset(f"{tmp_path / 'images'}:{tmp_path / 'masks'}")
    assert ds2.keys() == ds.keys()
    with pytest.raises(MedadaptError, match="nowhere"):
        load_segmentation_dataset(f"{tmp_path / 'images'}:{tmp_path / 'nowhere'}")


def test_npz_folder_2d_and_3d(tmp_path: Path):
    rng = np.random.default_rng(2)
    gts3 = np.zeros((6, 20, 24), np.uint8)
    gts3[2:5, 4:10, 5:12] = 1
    gts3[1:3, 12:18, 14:20] = 2
    np.savez_compressed(
        tmp_path / "CT_demo_case1.npz", imgs=rng.integers(0, 255, (6, 20, 24), dtype=np.uint8), gts=gts3,
        spacing=np.array([2.5, 0.8, 0.8]),
    )  # fmt: skip
    gts2 = np.zeros((16, 16), np.uint8)
    gts2[3:9, 4:12] = 1
    np.savez_compressed(
        tmp_path / "2D_fundus_case2.npz", imgs=rng.integers(0, 255, (16, 16, 3), dtype=np.uint8), gts=gts2
    )
    ds = load_segmentation_dataset(tmp_path)
    assert ds.layout == "npz" and set(ds.keys()) == {"CT_demo_case1", "2D_fundus_case2"}
    c3, c2 = ds.case("CT_demo_case1"), ds.case("2D_fundus_case2")
    assert c3.is_3d and not c2.is_3d and not ds.is_3d
    l3 = ds.load(c3)
    assert l3.slice_axis == 0 and l3.spacing == (2.5, 0.8, 0.8) and np.array_equal(l3.label, gts3)
    l2 = ds.load(c2)
    assert l2.image.shape == (16, 16, 3) and l2.slice_axis is None
    assert ds.classes == {1: "class_1", 2: "class_2"}


def test_npz_without_gts_is_refused(tmp_path: Path):
    np.savez_compressed(tmp_path / "x.npz", imgs=np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(MedadaptError, match="gts") as err:
        load_segmentation_dataset(tmp_path)
    assert "x.npz" in str(err.value)


def _write_nifti(path: Path, arr: np.ndarray, spacing=(1.0, 1.0, 2.0)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(arr, np.diag([*spacing, 1.0])), path)


def test_nnunet_v2_layout(tmp_path: Path):
    rng = np.random.default_rng(3)
    for i in range(2):
        _write_nifti(
            tmp_path / "imagesTr" / f"case_{i}_0000.nii.gz",
            rng.normal(50, 10, (10, 12, 6)).astype(np.float32),
        )
        lab = np.zeros((10, 12, 6), np.uint8)
        lab[2:6, 3:8, 1:4] = 1
        _write_nifti(tmp_path / "labelsTr" / f"case_{i}.nii.gz", lab)
    (tmp_path / "dataset.json").write_text(
        json.dumps(
            {"channel_names": {"0": "CT"}, "labels": {"background": 0, "tumour": 1}, "file_ending": ".nii.gz"}
        )
    )
    ds = load_segmentation_dataset(tmp_path)
    assert ds.keys() == ["case_0", "case_1"] and ds.classes == {1: "tumour"} and ds.modality == "ct"
    loaded = ds.load("case_0")
    assert loaded.slice_axis == 2 and loaded.image.dtype == np.uint8


def test_msd_missing_listed_file_is_named(tmp_path: Path, data_dir: Path):
    root = tmp_path / "hippo"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    meta = json.loads((data_dir / "hippocampus" / "dataset.json").read_text())
    meta["training"] = meta["training"][:2]
    (root / "dataset.json").write_text(json.dumps(meta))
    for entry in meta["training"]:
        for k in ("image", "label"):
            shutil.copy(data_dir / "hippocampus" / entry[k], root / entry[k])
    (root / meta["training"][1]["label"]).unlink()
    with pytest.raises(MedadaptError) as err:
        load_segmentation_dataset(root)
    assert "hippocampus_003.nii.gz" in str(err.value) and "does not exist" in str(err.value)


def test_unknown_layout_and_missing_path(tmp_path: Path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(MedadaptError) as err:
        load_segmentation_dataset(tmp_path)
    assert str(tmp_path) in str(err.value) and "dataset.json" in str(err.value) and ".npz" in str(err.value)
    with pytest.raises(MedadaptError, match="does not exist"):
        load_segmentation_dataset(tmp_path / "absent")
    with pytest.raises(MedadaptError, match="not a dataset spec"):
        load_segmentation_dataset(tmp_path / "notes.txt")
    with pytest.raises(MedadaptError, match="unknown modality"):
        load_segmentation_dataset(tmp_path, modality="xyz")


def test_load_cache_is_bounded_and_read_only(tmp_path: Path):
    rng = np.random.default_rng(4)
    for i in range(4):
        img, mask = _pair(rng)
        _png(tmp_path / "images" / f"c{i}.png", img)
        _png(tmp_path / "labels" / f"c{i}.png", mask)
    ds = load_segmentation_dataset(tmp_path)
    ds.cache_size = 2
    first = ds.load("c0")
    assert ds.load("c0") is first
    assert not first.image.flags.writeable and not first.label.flags.writeable
    ds.load("c1")
    ds.load("c2")
    assert ds.load("c0") is not first  # evicted, read again
    assert np.array_equal(ds.load("c0").image, first.image)
    with pytest.raises(MedadaptError, match="no case 'nope'"):
        ds.load("nope")


def test_modality_override(tmp_path: Path):
    rng = np.random.default_rng(5)
    _write_nifti(tmp_path / "images" / "v.nii.gz", rng.normal(0, 300, (8, 8, 4)).astype(np.float32))
    _write_nifti(tmp_path / "labels" / "v.nii.gz", (rng.random((8, 8, 4)) > 0.5).astype(np.uint8))
    auto = load_segmentation_dataset(tmp_path)
    ct = load_segmentation_dataset(tmp_path, modality="ct", window="bone")
    assert isinstance(auto, Dataset) and ct.case("v").modality == "ct"
    assert not np.array_equal(auto.load("v").image, ct.load("v").image)
    with pytest.raises(MedadaptError, match="CT window"):
        load_segmentation_dataset(tmp_path, modality="mr", window="bone")


def test_drive_relative_path_with_label_dir(data_dir: Path, monkeypatch):
    """A relative dataset path with label_dir (the README's DRIVE command) finds the default image folder."""
    monkeypatch.chdir(data_dir / "drive")
    ds = load_segmentation_dataset(Path("training"), label_dir="1st_manual", image_suffix="_training", label_suffix="_manual1")
    assert len(ds) == 20 and ds.case("21").image.exists()


def test_layout_registry_detects_in_order(tmp_path: Path):
    assert list(LAYOUTS) == ["msd", "csv", "folders", "npz"]
    rng = np.random.default_rng(2)
    img, mask = _pair(rng)
    _png(tmp_path / "images" / "a.png", img)
    _png(tmp_path / "masks" / "a.png", mask)
    assert detect_layout(tmp_path).name == "folders"
    (tmp_path / "list.csv").write_text("image,mask\nimages/a.png,masks/a.png\n")
    assert detect_layout(tmp_path).name == "csv"  # a CSV beside the folders wins, as it is tried first
    assert detect_layout(tmp_path / "list.csv").name == "csv"
    assert detect_layout(tmp_path, LoadOptions(label_dir="masks")).name == "folders"  # the user named them
    (tmp_path / "dataset.json").write_text("{}")
    assert detect_layout(tmp_path).name == "msd" and detect_layout(tmp_path / "dataset.json").name == "msd"
    with pytest.raises(MedadaptError, match="not a dataset spec"):
        detect_layout(tmp_path / "images" / "a.png")
    with pytest.raises(MedadaptError, match="does not exist"):
        detect_layout(tmp_path / "nowhere")


def test_modality_override_builds_a_new_dataset(tmp_path: Path):
    rng = np.random.default_rng(3)
    img, mask = _pair(rng)
    _png(tmp_path / "images" / "a.png", img)
    _png(tmp_path / "masks" / "a.png", mask)
    ds = load_segmentation_dataset(tmp_path, modality="mr", binary=True)
    assert ds.modality == "mr" and ds.case("a").modality == "mr" and ds.binary is True
    assert ds.case(ds.cases[0]) is ds.cases[0] and ds.keys() == ["a"]  # key index built from the final cases
