"""2D slice samples remember their volume and reassemble exactly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medadapt.data.datasets import load_segmentation_dataset
from medadapt.data.slices import SliceSample, iter_slices, reassemble, with_empty_slices


@pytest.fixture(scope="module")
def hippo(data_dir: Path):
    return load_segmentation_dataset(data_dir / "hippocampus")


def test_labelled_slices_remember_their_volume(hippo):
    keys = hippo.keys()[:3]
    samples = list(iter_slices(hippo, keys))
    assert {s.key for s in samples} == set(keys)
    for s in samples:
        vol = hippo.load(s.key)
        assert s.axis == vol.slice_axis == 2 and s.volume_shape == vol.label.shape
        assert np.array_equal(s.label, np.take(vol.label, s.index, axis=s.axis))
        assert np.array_equal(s.image, np.take(vol.image, s.index, axis=s.axis))
        assert s.label.any() and s.image.dtype == np.uint8 and len(s.spacing) == 2
    # every labelled slice, and only those
    vol = hippo.load(keys[0])
    expected = [i for i in range(vol.label.shape[2]) if vol.label[:, :, i].any()]
    assert [s.index for s in samples if s.key == keys[0]] == expected


def test_reassemble_is_exact(hippo):
    key = hippo.keys()[5]
    vol = hippo.load(key)
    for axis in (0, 1, 2):
        samples = list(iter_slices(hippo, [key], axis=axis, include_empty=True))
        assert len(samples) == vol.label.shape[axis]
        back = reassemble({s.index: s.label for s in samples}, vol.label.shape, axis)
        assert np.array_equal(back, vol.label)
    labelled = list(iter_slices(hippo, [key], axis=0))
    back = reassemble(((s.index, s.label) for s in labelled), vol.label.shape, 0)
    assert np.array_equal(back, vol.label)  # empty slices are zero anyway
    with pytest.raises(ValueError, match="shape"):
        reassemble({0: np.zeros((2, 2))}, vol.label.shape, 0)


def test_classes_and_min_pixels(hippo):
    key = hippo.keys()[0]
    only2 = list(iter_slices(hippo, [key], classes=[2]))
    assert only2 and all(set(np.unique(s.label)) <= {0, 2} and (s.label == 2).any() for s in only2)
    big = list(iter_slices(hippo, [key], min_pixels=50))
    allf = list(iter_slices(hippo, [key]))
    assert all(np.count_nonzero(s.label) >= 50 for s in big) and len(big) < len(allf)


def test_2d_images_are_yielded_whole(data_dir: Path):
    ds = load_segmentation_dataset(data_dir / "prostate_mri_2d")
    samples = list(iter_slices(ds, ds.keys()[:3]))
    assert [s.key for s in samples] == ds.keys()[:3]
    assert all(s.axis is None and s.index == 0 and s.image.shape == (384, 384) for s in samples)


def test_with_empty_slices_keeps_every_labelled_slice_and_caps_the_empty_ones():
    def sample(i: int, fg: bool) -> SliceSample:
        label = np.zeros((4, 4), np.uint8)
        label[1, 1] = fg
        return SliceSample("v", i, 2, np.zeros((4, 4), np.uint8), label, (1.0, 1.0), (4, 4, 20))

    samples = [sample(i, 5 <= i < 9) for i in range(20)]  # 4 labelled, 16 empty
    kept = with_empty_slices(samples, 0.5)
    assert [s.index for s in kept if s.label.any()] == [5, 6, 7, 8]
    empty = [s.index for s in kept if not s.label.any()]
    assert len(empty) == 2 and empty == sorted(empty) and empty[0] == 0 and empty[-1] == 19  # evenly spaced
    assert [s.index for s in with_empty_slices(samples, 0)] == [5, 6, 7, 8]
    assert len(with_empty_slices(samples, 100)) == 20  # never more than there are
