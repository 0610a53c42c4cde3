"""Real volumes (MSD hippocampus): transforms, few-shot task on cached features, partial-label pretraining."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medadapt.data.transforms3d import VolumePreprocessing, preprocess_transforms, training_transforms
from medadapt.data.volume_dataset import (
    few_shot_volumes,
    load_volume_dataset,
    volume_preprocessing,
    volume_records,
)
from medadapt.engine.pretrain import ClassTemplate, PartialLabelLoss, PartialLabelTask
from medadapt.engine.transductive import ConstraintConfig, ProportionConstraint
from medadapt.engine.volumetric_task import VolumetricTask
from medadapt.models.volumetric import TextConditionedHead, build_volumetric, embed_class_names

SMALL_UNET = {"strides": [1, 2, 2], "filters": [4, 8, 16]}
ROI = (16, 16, 16)


@pytest.fixture(scope="module")
def hippo(data_dir):
    ds = load_volume_dataset(data_dir / "hippocampus")
    split = few_shot_volumes(ds, 2, seed=0, n_val=1)
    prep = volume_preprocessing(ds, VolumePreprocessing(spacing=None))
    return ds, split, prep


def test_split_and_preprocessing(hippo):
    ds, split, prep = hippo
    assert prep.modality == "MR" and len(split.train) == 2
    assert not set(split.train) & set(split.test)
    # the held-out volumes do not depend on k or the seed
    assert few_shot_volumes(ds, 5, seed=3, n_val=1).test == split.test
    rec = volume_records(ds, split.train[:1])[0]
    out = preprocess_transforms(prep)(rec)
    assert float(out["image"].min()) == 0.0 and float(out["image"].max()) == 1.0  # MR percentiles -> [0, 1]
    assert set(np.unique(out["label"].numpy())) == {0, 1, 2}
    # pos:neg = 1:0 -> every crop is centred on a labelled voxel; the label map renumbers classes
    tf = training_transforms(prep, (8, 8, 8), pos=1, neg=0, num_samples=4, label_map={2: 1})
    tf.set_random_state(0)
    crops = tf(rec)
    assert len(crops) == 4 and all(c["label"].max() == 1 for c in crops)
    assert all(c["image"].shape == (1, 8, 8, 8) for c in crops)


def test_few_shot_task_head_only_with_transductive_constraint(hippo):
    ds, split, prep = hippo
    torch.manual_seed(0)
    model = build_volumetric("unet3d", 2, **SMALL_UNET)  # binary: background + anterior
    model.backbone.requires_grad_(False)
    query = preprocess_transforms(prep, keys=("image",))({"image": str(ds.case(split.test[0]).image)})[
        "image"
    ]
    support = [
        preprocess_transforms(prep, label_map={1: 1})(r)["label"][0].numpy()
        for r in volume_records(ds, split.train)
    ]
    tc = ProportionConstraint(
        model,
        query[None].as_tensor(),
        support,
        ROI,
        config=ConstraintConfig(warmup_epochs=1),
        foreground=lambda z: z.softmax(1)[:, 1],
    )
    task = VolumetricTask(
        model,
        volume_records(ds, split.train),
        volume_records(ds, split.val),
        prep,
        recipe="linear-probe",
        roi_size=ROI,
        label_map={1: 1},
        fixed_crops=2,
        transductive=tc,
        class_names=["anterior"],
        overlap=0.0,
    )
    assert task.cache_features and task.applied.trainable == 2 * 4 + 2
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.SGD(task.parameters_to_train(), lr=0.1)
    for epoch in (0, 1):
        for batch in task.train_batches(epoch):
            loss, logs = task.training_step(batch)
            opt.zero_grad()
            loss.backward()
            opt.step()
        assert ("proportion_penalty" in logs) == (epoch >= 1)
    # a resumed run replays (draws without training on) the batches before its checkpoint: the
    # task's batch index, which seeds the transductive query subset, follows the draws
    batches = task.train_batches(1)
    drawn = list(batches)  # no training_step
    assert len(drawn) == len(batches) >= 2 and task._step_in_epoch == len(drawn) - 1
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed == {"head.conv.conv.weight", "head.conv.conv.bias"}  # the 1x1x1 classifier only
    with torch.no_grad():
        metrics = task.validate()
    assert 0.0 <= metrics["dice"] <= 1.0 and "dice_anterior" in metrics


def test_partial_label_pretraining_step(hippo):
    ds, split, prep = hippo
    template = ClassTemplate(("anterior", "posterior"), {"A": {1: "anterior"}, "B": {2: "posterior"}})
    assert template.label_map("B") == {2: 2}
    torch.manual_seed(0)
    model = build_volumetric("unet3d", 2, **SMALL_UNET)
    model.head = TextConditionedHead(
        model.feature_channels, model.bottleneck_channels, embed_class_names(template.classes, "onehot")
    )
    records = {"A": volume_records(ds, split.train[:1]), "B": volume_records(ds, split.train[1:2])}
    task = PartialLabelTask(model, template, records, prep, ROI, batch_size=2, num_samples=1)
    batch = next(iter(task.train_batches(0)))
    ids = list(batch["dataset_id"])
    assert sorted(ids) == ["A", "B"]
    # dataset A's labels hold only anterior (posterior voxels became unlabelled, stored as 0), B's only posterior
    for i, d in enumerate(ids):
        assert set(torch.unique(batch["label"][i]).tolist()) <= ({0, 1} if d == "A" else {0, 2})
    loss, logs = task.training_step(batch)
    assert torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None for p in model.head.controller.parameters())

    # A class a dataset does not label contributes nothing: its logits get no gradient there.
    logits = torch.randn(2, 2, 4, 4, 4, requires_grad=True)
    labels = torch.randint(0, 3, (2, 1, 4, 4, 4))
    loss, _ = PartialLabelLoss()(logits, labels, template.labelled(["A", "B"]))
    loss.backward()
    g = logits.grad.abs().flatten(2).sum(2)
    assert g[0, 1] == 0 and g[1, 0] == 0 and g[0, 0] > 0 and g[1, 1] > 0
