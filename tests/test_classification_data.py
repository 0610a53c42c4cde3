"""Classification data: readers for each layout, label-fraction sampling, preprocessing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from medadapt.data.classification import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    NIH_CLASSES,
    ClassificationDataset,
    ClassificationSplit,
    EpochPasses,
    ImageTransform,
    dataset_splits,
    holdout_split,
    infer_task,
    load_chexpert,
    load_classification_split,
    load_csv,
    load_medmnist,
    load_nih_chestxray14,
    load_rsna_pneumonia,
    load_split_file,
    sample_fraction,
    sample_shots,
)
from medadapt.errors import MedadaptError


def png(path, value=100, size=(20, 24)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full(size, value, np.uint8)).save(path)
    return path


# --------------------------------------------------------------------------- PneumoniaMNIST (real data)


def test_pneumoniamnist_loads(data_dir):
    path = data_dir / "pneumoniamnist" / "pneumoniamnist_dev.npz"
    train = load_medmnist(path, "train")
    assert train.images.shape == (3882, 28, 28) and train.images.dtype == np.uint8
    assert train.task == "binary" and train.num_outputs == 1 and train.num_classes == 2
    assert train.class_counts() == {"0": 388, "1": 3494}
    assert train.targets().shape == (3882, 1) and train.known().all()
    val = load_medmnist(path, "val")
    assert len(val) == 524 and val.task == "binary"
    assert load_classification_split(path, "val").ids == val.ids
    with pytest.raises(MedadaptError, match="choose a split present"):
        load_medmnist(path, "test")


def test_medmnist_any_size_and_task_types(tmp_path):
    rng = np.random.default_rng(0)
    multi = tmp_path / "path.npz"  # 9-class RGB at 64 px
    np.savez(multi, train_images=rng.integers(0, 255, (30, 64, 64, 3), dtype=np.uint8),
             train_labels=np.arange(30).reshape(-1, 1) % 9, val_images=np.zeros((4, 64, 64, 3), np.uint8),
             val_labels=np.zeros((4, 1), np.uint8))
    s = load_medmnist(multi, "val")
    assert s.task == "multiclass" and s.num_classes == 9 and s.num_outputs == 9  # from train labels
    chest = tmp_path / "chest.npz"  # 14 findings
    np.savez(chest, train_images=np.zeros((5, 28, 28), np.uint8), train_labels=rng.integers(0, 2, (5, 14)))
    s = load_medmnist(chest)
    assert s.task == "multilabel" and s.num_outputs == 14 and s.targets().dtype == np.float32
    bad = tmp_path / "organ3d.npz"
    np.savez(bad, train_images=np.zeros((2, 28, 28, 28)), train_labels=np.zeros((2, 1)))
    with pytest.raises(MedadaptError, match="3D MedMNIST"):
        load_medmnist(bad)
    short = tmp_path / "short.npz"
    np.savez(short, train_images=np.zeros((3, 28, 28)), train_labels=np.zeros((2, 1)))
    with pytest.raises(MedadaptError, match="3 images"):
        load_medmnist(short)


def test_infer_task():
    assert infer_task(np.array([0, 1, 1])) == ("binary", 2)
    assert infer_task(np.array([[0], [4]])) == ("multiclass", 5)
    assert infer_task(np.array([[0, 1], [1, 1]])) == ("multilabel", 2)
    with pytest.raises(MedadaptError):
        infer_task(np.array([0, -1]))
    with pytest.raises(MedadaptError):
        infer_task(np.array([[0, 2], [1, 1]]))


# --------------------------------------------------------------------------- fraction sampler


def test_fraction_sampler_single_label_keeps_every_class():
    labels = np.array([0] * 388 + [1] * 3494 + [2] * 7)
    idx = sample_fraction(labels, 0.01, seed=3)
    counts = np.bincount(labels[idx], minlength=3)
    assert counts.tolist() == [4, 35, 1]  # round(1 % of each class), at least one
    assert np.array_equal(idx, sample_fraction(labels, 0.01, seed=3))  # deterministic
    assert not np.array_equal(idx, sample_fraction(labels, 0.01, seed=4))
    assert np.all(np.diff(idx) > 0)
    assert np.array_equal(sample_fraction(labels, 1.0), np.arange(len(labels)))
    for bad in (0, -0.1, 1.5):
        with pytest.raises(MedadaptError, match="fraction"):
            sample_fraction(labels, bad)


def test_fraction_sampler_multilabel_is_stratified():
    rng = np.random.default_rng(0)
    prev = np.array([0.1, 0.02, 0.2, 0.05, 0.002, 0.0005])
    labels = (rng.random((20000, 6)) < prev).astype(np.float32)
    idx = sample_fraction(labels, 0.01, seed=0)
    got, full = labels[idx].sum(0), labels.sum(0)
    assert (got >= 1).all()  # every class keeps a positive, even the rarest (~10 in 20000)
    assert np.all(np.abs(got - np.round(0.01 * full)) <= 1)
    assert abs(len(idx) - 200) <= 6
    assert np.array_equal(idx, sample_fraction(labels, 0.01, seed=0))
    assert not np.array_equal(idx, sample_fraction(labels, 0.01, seed=1))
    # unknown labels (mask False) are not positives for stratification
    mask = np.ones_like(labels, bool)
    mask[:, 5] = False
    assert labels[sample_fraction(labels, 0.01, seed=0, mask=mask), 5].sum() <= got[5]


# --------------------------------------------------------------------------- public layouts


def make_nih(root):
    rows = [("00000001_000.png", "Cardiomegaly", "1"), ("00000001_001.png", "Cardiomegaly|Emphysema", "1"),
            ("00000002_000.png", "No Finding", "2"), ("00000003_000.png", "Hernia|Effusion", "3"),
            ("00000004_000.png", "Mass", "4"), ("00000005_000.png", "Nodule|Pneumonia", "5")]
    lines = ["Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age"]
    lines += [f"{n},{f},0,{p},50" for n, f, p in rows]
    (root / "Data_Entry_2017.csv").parent.mkdir(parents=True, exist_ok=True)
    (root / "Data_Entry_2017.csv").write_text("\n".join(lines) + "\n")
    (root / "train_val_list.txt").write_text("\n".join(r[0] for r in rows[:5]) + "\n")
    (root / "test_list.txt").write_text(rows[5][0] + "\n")
    for i, (n, _, _) in enumerate(rows):
        png(root / f"images_00{1 + i % 2}" / "images" / n)  # Kaggle layout, two archives
    return rows


def test_nih_chestxray14(tmp_path):
    make_nih(tmp_path)
    test = load_nih_chestxray14(tmp_path, "test")
    assert test.task == "multilabel" and test.class_names == list(NIH_CLASSES) and len(test) == 1
    assert {NIH_CLASSES[j] for j in np.flatnonzero(test.labels[0])} == {"Nodule", "Pneumonia"}
    tv = load_nih_chestxray14(tmp_path, "train_val")
    assert tv.labels[2].sum() == 0  # No Finding
    assert tv.labels[1, NIH_CLASSES.index("Emphysema")] == 1
    train = load_nih_chestxray14(tmp_path, "train", val_fraction=0.3)
    val = load_nih_chestxray14(tmp_path, "val", val_fraction=0.3)
    assert len(train) + len(val) == 5 and len(val) >= 1
    patients = lambda s: {i.split("_")[0] for i in s.ids}  # noqa: E731
    assert not patients(train) & patients(val)  # patient-wise split
    assert load_classification_split(tmp_path, "test").ids == test.ids
    assert load_nih_chestxray14(tmp_path, "test").load_image(0).shape == (20, 24)
    (tmp_path / "images_002" / "images" / "00000001_001.png").unlink()
    with pytest.raises(MedadaptError, match="1 of 5 images not found"):
        load_nih_chestxray14(tmp_path, "train_val")


def test_chexpert_uncertainty_policies(tmp_path):
    root = tmp_path / "CheXpert-v1.0-small"
    header = "Path,Sex,Frontal/Lateral,AP/PA,No Finding,Atelectasis,Cardiomegaly,Consolidation,Edema,Pleural Effusion"
    rows = ["CheXpert-v1.0-small/train/patient1/study1/view1_frontal.jpg,F,Frontal,AP,,1.0,-1.0,,0.0,",
            "CheXpert-v1.0-small/train/patient2/study1/view1_lateral.jpg,M,Lateral,,1.0,,,-1.0,0.0,1.0"]
    (root / "train").mkdir(parents=True)
    (root / "train.csv").write_text("\n".join([header, *rows]) + "\n")
    for r in rows:
        png(tmp_path / r.split(",")[0])
    ones = load_chexpert(root / "train.csv", uncertain="ones")
    assert ones.labels.tolist() == [[1, 1, 0, 0, 0], [0, 0, 1, 0, 1]] and ones.mask is None
    zeros = load_chexpert(root / "train.csv", uncertain="zeros")
    assert zeros.labels.tolist() == [[1, 0, 0, 0, 0], [0, 0, 0, 0, 1]]
    ignore = load_chexpert(root / "train.csv", uncertain="ignore")
    assert ignore.mask.tolist() == [[True, False, True, True, True], [True, True, False, True, True]]
    assert ignore.known().sum() == 8
    assert len(load_chexpert(root / "train.csv", frontal_only=True)) == 1
    assert load_classification_split(root / "train.csv", uncertain="zeros").labels.tolist() == zeros.labels.tolist()
    with pytest.raises(MedadaptError, match="uncertain"):
        load_chexpert(root / "train.csv", uncertain="maybe")
    with pytest.raises(MedadaptError, match="columns missing"):
        load_chexpert(root / "train.csv", classes=("Fracture",))


def test_rsna_pneumonia(tmp_path):
    lines = ["patientId,x,y,width,height,Target"]
    for i in range(40):
        if i % 4 == 0:  # pneumonia: two boxes -> two rows
            lines += [f"p{i:03d},10,10,5,5,1", f"p{i:03d},30,30,5,5,1"]
        else:
            lines.append(f"p{i:03d},,,,,0")
    (tmp_path / "stage_2_train_labels.csv").write_text("\n".join(lines) + "\n")
    (tmp_path / "stage_2_train_images").mkdir()
    for i in range(40):
        (tmp_path / "stage_2_train_images" / f"p{i:03d}.dcm").write_bytes(b"x")
    everything = load_rsna_pneumonia(tmp_path, "all")
    assert len(everything) == 40 and everything.task == "binary" and everything.labels.sum() == 10
    parts = [load_rsna_pneumonia(tmp_path, s) for s in ("train", "val", "test")]
    assert [len(p) for p in parts] == [28, 6, 6]
    pos = [int(p.labels.sum()) for p in parts]  # stratified per class: 10 positives cut 7 / 1.5 / 1.5
    assert pos[0] == 7 and sorted(pos[1:]) == [1, 2]
    assert sorted(sum((p.ids for p in parts), [])) == everything.ids
    assert load_rsna_pneumonia(tmp_path, "val").ids == parts[1].ids  # deterministic


def test_split_list_and_generic_csv(tmp_path):
    for n in ("a.png", "b.png", "c.png"):
        png(tmp_path / "all_classes" / n)
    (tmp_path / "train_1.txt").write_text("a.png 0 1 0\nb.png 1 0 0\n")  # MED-PEFT list layout
    s = load_split_file(tmp_path / "train_1.txt", class_names=["x", "y", "z"])
    assert s.task == "multilabel" and s.labels.tolist() == [[0, 1, 0], [1, 0, 0]]
    (tmp_path / "bad.txt").write_text("a.png 0 1\nb.png 1\n")
    with pytest.raises(MedadaptError, match="same number"):
        load_split_file(tmp_path / "bad.txt")

    (tmp_path / "cls.csv").write_text("image,label\nall_classes/a.png,normal\nall_classes/b.png,tumour\n"
                                      "all_classes/c.png,cyst\n")
    s = load_csv(tmp_path / "cls.csv")
    assert s.task == "multiclass" and s.class_names == ["cyst", "normal", "tumour"] and s.labels.tolist() == [1, 2, 0]
    (tmp_path / "ml.csv").write_text("image,effusion,mass\nall_classes/a.png,1,\nall_classes/b.png,0,-1\n")
    s = load_csv(tmp_path / "ml.csv")
    assert s.task == "multilabel" and s.mask.tolist() == [[True, False], [True, False]]
    (tmp_path / "missing.csv").write_text("image,label\nall_classes/nope.png,1\n")
    with pytest.raises(MedadaptError, match="not found"):
        load_csv(tmp_path / "missing.csv")
    (tmp_path / "nolabel.csv").write_text("image\nall_classes/a.png\n")
    with pytest.raises(MedadaptError, match="no label column"):
        load_csv(tmp_path / "nolabel.csv")
    with pytest.raises(MedadaptError, match="unknown dataset file type"):
        load_classification_split(png(tmp_path / "x.png"))


# --------------------------------------------------------------------------- preprocessing


def test_image_transform_imagenet_crop():
    img = np.full((30, 40), 255, np.uint8)
    x = ImageTransform(16, "imagenet", "crop")(img)
    assert x.shape == (3, 16, 16)
    want = (1.0 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    torch.testing.assert_close(x[:, 5, 5], want)
    rgb = np.zeros((16, 16, 3), np.uint8)
    rgb[..., 0] = 255
    y = ImageTransform(16, "imagenet", "crop")(rgb)
    assert y[0].mean() > 2 and y[1].mean() < -1  # channel order kept


def test_image_transform_minmax_pad_and_16bit():
    img = np.zeros((50, 100), np.uint16)
    img[:, :50] = 4000
    x = ImageTransform(32, "minmax", "pad")(img)
    assert x.shape == (3, 32, 32)
    assert x.max() == 1.0 and x.min() == 0.0
    assert x[:, 16:].abs().max() == 0  # long side 100 -> 32, short 50 -> 16, padded bottom
    assert torch.equal(x[0], x[2])  # grayscale replicated


def test_dataset_items_and_seeded_augmentation():
    from medadapt.data.classification import ClassificationSplit

    imgs = np.random.default_rng(0).integers(0, 255, (4, 28, 28), dtype=np.uint8)
    split = ClassificationSplit(images=imgs, labels=np.array([0, 1, 1, 0]), task="binary", class_names=["a", "b"],
                                ids=list("abcd"))
    ds = ClassificationDataset(split, ImageTransform(32, augment=True), seed=1)
    item = ds[1]
    assert item["image"].shape == (3, 32, 32) and item["target"].tolist() == [1.0] and item["known"].tolist() == [1.0]
    assert torch.equal(ds[1]["image"], item["image"])  # same (seed, epoch, index): same augmentation
    ds.epoch = 1
    assert not torch.equal(ds[1]["image"], item["image"])


# --------------------------------------------------------------------------- shots, hold-out, splits, classes


def test_sample_shots_single_and_multilabel():
    labels = np.array([0] * 50 + [1] * 5 + [2] * 2)
    idx = sample_shots(labels, 3, seed=1)
    assert np.bincount(labels[idx]).tolist() == [3, 3, 2]  # a class with fewer keeps all it has
    assert sample_shots(labels, 3, seed=1).tolist() == idx.tolist()
    assert sample_shots(labels, 3, seed=2).tolist() != idx.tolist()
    ml = np.zeros((40, 3), np.float32)
    ml[:30, 0], ml[30:36, 1], ml[36:, 2] = 1, 1, 1
    ml[0, 2] = 1
    idx = sample_shots(ml, 2, seed=0)
    assert (ml[idx].sum(0) >= 2).all() and len(idx) <= 6
    with pytest.raises(MedadaptError):
        sample_shots(labels, 0)


def test_holdout_split_is_stratified_and_seeded():
    labels = np.array([0] * 90 + [1] * 10)
    held = holdout_split(labels, 0.2, seed=0)
    assert np.bincount(labels[held]).tolist() == [18, 2]
    assert holdout_split(labels, 0.2, seed=0).tolist() == held.tolist()
    with pytest.raises(MedadaptError, match="too few"):
        holdout_split(np.array([0]), 0.5)


def test_dataset_splits_per_source(tmp_path):
    np.savez(tmp_path / "m.npz", train_images=np.zeros((2, 4, 4)), train_labels=np.zeros((2, 1)),
             test_images=np.zeros((2, 4, 4)), test_labels=np.zeros((2, 1)), extra_images=np.zeros((1, 4, 4)))
    assert dataset_splits(tmp_path / "m.npz") == ["train", "test"]
    (tmp_path / "a.csv").write_text("image,label\n")
    assert dataset_splits(tmp_path / "a.csv") is None
    (tmp_path / "nih").mkdir()
    (tmp_path / "nih" / "Data_Entry_2017.csv").write_text("Image Index\n")
    assert dataset_splits(tmp_path / "nih") == ["train", "val", "train_val", "test"]


def test_select_classes_keeps_columns_and_mask():
    mask = np.ones((4, 3), bool)
    mask[0, 2] = False
    s = ClassificationSplit(images=np.zeros((4, 2, 2), np.uint8), labels=np.eye(4, 3, dtype=np.float32),
                            task="multilabel", class_names=["a", "b", "c"], ids=list("wxyz"), mask=mask)
    sub = s.select_classes([2, 0])
    assert sub.class_names == ["c", "a"] and sub.labels[:, 1].tolist() == [1, 0, 0, 0]
    assert sub.mask[0].tolist() == [False, True]
    with pytest.raises(MedadaptError, match="0..2"):
        s.select_classes([3])
    with pytest.raises(MedadaptError, match="multi-label"):
        ClassificationSplit(images=np.zeros((2, 2, 2)), labels=np.array([0, 1]), task="binary",
                            class_names=["n", "p"], ids=["a", "b"]).select_classes([0])


def test_epoch_passes_cover_every_image_each_pass():
    order = list(EpochPasses(5, 12, torch.Generator().manual_seed(0)))
    assert len(order) == 12 and sorted(order[:5]) == [0, 1, 2, 3, 4] and sorted(order[5:10]) == [5, 6, 7, 8, 9]
    assert all(10 <= i < 15 for i in order[10:])
