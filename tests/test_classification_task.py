"""The classification TrainTask on the shared engine: LoRA fit on PneumoniaMNIST, losses, reload."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from medadapt.adapt import load_adapter
from medadapt.data.classification import ClassificationSplit, load_medmnist, sample_fraction
from medadapt.engine.classify_task import (
    ClassificationTask,
    ClassifyConfig,
    build_classify_task,
    classifier_recipe,
    validation_metrics,
)
from medadapt.engine.config import TrainConfig
from medadapt.engine.fitted import load_trained_classifier
from medadapt.engine.trainer import Trainer, TrainTask
from medadapt.errors import MedadaptError
from medadapt.models.classification import VisionTransformer, input_spec, vit_patch16


def train_config(**kw) -> TrainConfig:
    base = dict(lr=1e-3, max_steps=3, epochs=None, batch_size=8, monitor="auroc", progress=False, tensorboard=False,
                log_every=1, val_every=3)
    return TrainConfig(**{**base, **kw})


def tiny(num_classes: int) -> VisionTransformer:
    torch.manual_seed(0)
    m = VisionTransformer(img_size=32, embed_dim=32, depth=2, num_heads=2, num_classes=num_classes)
    m.input_spec, m.backbone = input_spec("vit_small_patch16", 32), "tiny"
    return m


def split(task: str, n: int = 12, mask: np.ndarray | None = None) -> ClassificationSplit:
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 255, (n, 28, 28), dtype=np.uint8)
    if task == "multilabel":
        labels, names = (np.arange(n * 3).reshape(n, 3) % 2).astype(np.float32), ["a", "b", "c"]
    elif task == "multiclass":
        labels, names = np.arange(n) % 3, ["a", "b", "c"]
    else:
        labels, names = np.arange(n) % 2, ["neg", "pos"]
    return ClassificationSplit(images=imgs, labels=labels, task=task, class_names=names, ids=[str(i) for i in range(n)],
                               mask=mask)


@pytest.fixture(scope="module")
def vit_small_checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "vit_small.pth"
    torch.save({"model": vit_patch16("vit_small_patch16", num_classes=1000).state_dict()}, path)
    return path


def test_tiny_lora_fit_on_pneumoniamnist(data_dir, tmp_path):
    path = data_dir / "pneumoniamnist" / "pneumoniamnist_dev.npz"
    train, val = load_medmnist(path, "train"), load_medmnist(path, "val")
    train = train.subset(sample_fraction(train.labels, 0.01, seed=0))
    val = val.subset(sample_fraction(val.labels, 0.05, seed=0))
    model = tiny(1)
    task = ClassificationTask(model, train, val, train_config=train_config(), recipe=classifier_recipe(model, "lora"),
                              base={"model": "tiny"})
    # q/v LoRA (A [4,32] + B [32,4], twice) in 2 blocks + head (32 + 1) + fc_norm (2 x 32)
    assert task.applied.trainable == 2 * 2 * (4 * 32 * 2) + 33 + 64
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}

    result = Trainer(train_config(), task, tmp_path).fit()

    assert result.steps == 3 and np.isfinite(result.history[-1]["train_loss"])
    assert 0.0 <= result.history[-1]["auroc"] <= 1.0 and result.monitor == "auroc"
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)
    assert any(".lora_B" in n and p.abs().sum() > 0 for n, p in model.named_parameters())
    fresh = tiny(1)  # same seed: same base weights
    load_adapter(fresh, tmp_path)
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(fresh.eval()(x), model.eval()(x))


@pytest.mark.slow
def test_lora_fit_vit_small_from_checkpoint(data_dir, vit_small_checkpoint, tmp_path):
    cfg = ClassifyConfig(data=str(data_dir / "pneumoniamnist" / "pneumoniamnist_dev.npz"), label_fraction=0.01,
                         backbone="vit_small_patch16", checkpoint=str(vit_small_checkpoint), img_size=32,
                         recipe="lora", lora_rank=4)
    task = build_classify_task(cfg, train_config())
    assert isinstance(task, TrainTask)
    assert np.bincount(task.train.labels).tolist() == [4, 35]  # 1 % of 388 / 3494, stratified
    assert task.model.load_report.missing == ["head.bias", "head.weight"]  # head dropped, body loaded
    # q/v LoRA (A [4,384] + B [384,4], twice) in 12 blocks + head (384 + 1) + fc_norm (2 x 384)
    assert task.applied.trainable == 12 * 2 * (4 * 384 * 2) + 385 + 768
    task.val = task.val.subset(np.r_[0:20, 500:520])
    frozen = {n: p.detach().clone() for n, p in task.model.named_parameters() if not p.requires_grad}

    result = Trainer(train_config(), task, tmp_path).fit()

    assert result.steps == 3 and np.isfinite(result.history[-1]["train_loss"])
    assert 0.0 <= result.history[-1]["auroc"] <= 1.0
    assert all(torch.equal(p, frozen[n]) for n, p in task.model.named_parameters() if n in frozen)
    meta = json.loads((tmp_path / "adapter.json").read_text())
    assert meta["extra"]["classify"]["class_names"] == ["0", "1"] and meta["base"]["pool"] == "gap"
    reloaded = load_trained_classifier(tmp_path)
    x = torch.randn(2, 3, 32, 32)
    task.model.eval()
    torch.testing.assert_close(reloaded(x), task.model(x))


def test_masked_bce_ignores_unknown_labels():
    mask = np.ones((12, 3), bool)
    mask[0, 1] = False
    tr = split("multilabel", mask=mask)
    task = ClassificationTask(tiny(3), tr, None, train_config=train_config(), recipe=None)
    assert task.pos_weight is not None and task.pos_weight.shape == (3,)
    logits = torch.randn(12, 3)
    target = torch.from_numpy(tr.targets())
    known = torch.from_numpy(tr.known()).float()
    flipped = target.clone()
    flipped[0, 1] = 1 - flipped[0, 1]
    assert task._loss(logits, target, known) == task._loss(logits, flipped, known)
    flipped[0, 0] = 1 - flipped[0, 0]
    assert task._loss(logits, target, known) != task._loss(logits, flipped, known)
    assert task.validate() == {}


@pytest.mark.parametrize("kind,outputs", [("multiclass", 3), ("binary", 1)])
def test_step_and_validation_per_task_type(kind, outputs):
    tr = split(kind)
    task = ClassificationTask(tiny(outputs), tr, tr, train_config=train_config(), recipe=None, class_weights=True)
    batch = next(iter(task.train_batches(0)))
    loss, _ = task.training_step(batch)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    metrics = task.validate()
    assert set(metrics) == {"auroc", "ap", "accuracy", "val_loss"} and 0 <= metrics["auroc"] <= 1


def test_validation_metrics_perfect_scores():
    tr = split("multiclass", n=9)
    logits = np.eye(3)[tr.labels] * 5.0
    m = validation_metrics(tr, logits)
    assert m["auroc"] == 1.0 and m["accuracy"] == 1.0


def test_mismatched_outputs_and_layer_decay():
    with pytest.raises(MedadaptError, match="outputs"):
        ClassificationTask(tiny(3), split("binary"), None, train_config=train_config())
    model = tiny(1)
    task = ClassificationTask(model, split("binary"), None, train_config=train_config(), layer_decay=0.5,
                              recipe=classifier_recipe(model, "lora"))
    groups = task.parameters_to_train()
    scales = {g["lr_scale"] for g in groups}
    assert max(scales) == 1.0 and min(scales) == 0.5**2  # block 0 (layer 1 of 3) vs head


def test_random_vit_with_partial_recipe_is_refused(tmp_path):
    cfg = ClassifyConfig(data=str(tmp_path / "none.npz"), backbone="vit_base_patch16", recipe="lora")
    with pytest.raises(MedadaptError, match="randomly initialised"):
        build_classify_task(cfg, train_config())


def test_csv_source_holds_out_validation_and_cnn_needs_full(tmp_path):
    from PIL import Image

    rows = ["image,label"]
    for i in range(20):
        Image.fromarray(np.full((8, 8), 10 * i, np.uint8)).save(tmp_path / f"{i}.png")
        rows.append(f"{i}.png,{'pneu' if i % 4 == 0 else 'normal'}")
    (tmp_path / "all.csv").write_text("\n".join(rows) + "\n")
    cfg = ClassifyConfig(data=str(tmp_path / "all.csv"), backbone="cnn_small", recipe="full", img_size=16,
                         val_fraction=0.2, shots=2, fraction_seed=3)
    task = build_classify_task(cfg, train_config())
    # 20 % of each class held out with seed 0 (3 normal + 1 pneu), then 2 shots per class from the rest
    assert np.bincount(task.val.labels).tolist() == [3, 1] and len(task.train) == 4
    assert not set(task.train.ids) & set(task.val.ids)
    again = build_classify_task(cfg.model_copy(update={"fraction_seed": 4}), train_config())
    assert again.val.ids == task.val.ids  # validation does not move with the training seed
    with pytest.raises(MedadaptError, match="has no pre-training"):
        build_classify_task(cfg.model_copy(update={"recipe": "encoder-lora"}), train_config())
