"""Sliding-window output lies on the input grid: same shape, same affine, same voxels."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from torch import nn

from medadapt.data.transforms3d import VolumePreprocessing
from medadapt.infer.sliding_window import logits_to_labels, segment_file, sliding_window_logits
from medadapt.models.volumetric import build_volumetric


class Threshold(nn.Module):
    """Softmax 'segmenter': class 1 where the (scaled) intensity is above 0.5, class 2 above 0.8."""

    def forward(self, x):
        return torch.cat([torch.zeros_like(x), 10 * (x - 0.5), 40 * (x - 0.8)], dim=1)


def _phantom(tmp_path, affine):
    rng = np.random.default_rng(0)
    arr = np.full((30, 41, 23), -500.0, np.float32)
    arr[5:20, 10:30, 4:18] = 150  # "organ": scaled intensity 0.765 -> class 1
    arr[8:12, 12:16, 6:9] = 250  # a brighter core -> class 2
    arr += rng.normal(0, 1, arr.shape).astype(np.float32)
    nib.save(nib.Nifti1Image(arr, affine), tmp_path / "img.nii.gz")
    return arr


OBLIQUE = np.array([[0.0, 0.0, -2.5, 10], [-0.8, 0.0, 0.0, 5], [0.0, 0.9, 0.0, -3], [0, 0, 0, 1]])


def test_output_geometry_equals_input_exactly_without_resampling(tmp_path):
    arr = _phantom(tmp_path, OBLIQUE)
    prep = VolumePreprocessing(modality="CT", spacing=None)  # orientation + crop only: exact inverse
    out = segment_file(
        Threshold(), tmp_path / "img.nii.gz", tmp_path / "seg.nii.gz", prep, (16, 16, 16), overlap=0.25
    )
    seg = nib.load(out)
    assert seg.shape == arr.shape
    assert np.allclose(seg.affine, OBLIQUE)
    expected = np.where(arr > 250 - 10, 2, np.where(arr > 100, 1, 0))
    np.testing.assert_array_equal(np.asarray(seg.dataobj), expected)


def test_output_geometry_after_resampling_and_largest_component(tmp_path):
    arr = _phantom(tmp_path, OBLIQUE)
    arr2 = arr.copy()
    arr2[25:28, 35:39, 19:22] = 150  # a separate blob, dropped by the largest-component step
    nib.save(nib.Nifti1Image(arr2, OBLIQUE), tmp_path / "img.nii.gz")
    prep = VolumePreprocessing(modality="CT", spacing=(1.5, 1.5, 1.5))
    out = segment_file(
        Threshold(),
        tmp_path / "img.nii.gz",
        tmp_path / "seg.nii.gz",
        prep,
        (16, 16, 16),
        largest_component=True,
    )
    seg = nib.load(out)
    labels = np.asarray(seg.dataobj)
    assert seg.shape == arr.shape and np.allclose(seg.affine, OBLIQUE)
    organ = arr > 100
    dice = 2 * np.sum((labels > 0) & organ) / (np.sum(labels > 0) + np.sum(organ))
    assert dice > 0.9
    assert labels[25:28, 35:39, 19:22].max() == 0


def test_sliding_window_blends_to_full_volume_and_sigmoid_labels():
    model = build_volumetric("unet3d", 2, strides=[1, 2, 2], filters=[4, 8, 16])
    x = torch.randn(1, 1, 20, 24, 18)
    logits = sliding_window_logits(model, x, (16, 16, 16), overlap=0.5)
    assert logits.shape == (1, 2, 20, 24, 18) and model.training  # mode restored
    z = torch.tensor([[-5.0, 3.0, 1.0], [-5.0, -4.0, -2.0]]).T.reshape(1, 3, 2, 1, 1)
    assert logits_to_labels(z, sigmoid=True).flatten().tolist() == [2, 0]
    assert logits_to_labels(z).flatten().tolist() == [1, 2]


@pytest.mark.slow
def test_real_swinunetr_sliding_window_96(tmp_path):
    _phantom(tmp_path, OBLIQUE)
    model = build_volumetric("swinunetr", 3)
    out = segment_file(
        model, tmp_path / "img.nii.gz", tmp_path / "seg.nii.gz", VolumePreprocessing(), (96, 96, 96)
    )
    assert nib.load(out).shape == (30, 41, 23)
