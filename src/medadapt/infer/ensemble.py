"""Ensembles of prompt-free segmenters: class probabilities averaged voxel by voxel in the volume's frame.

nnU-Net ensembles its folds and configurations by averaging their softmax probabilities before the
labels are taken. Here the members are segmenters that need no prompt, of either task family:

- automatic-mode SAM-family adapters (``fit --prompt auto``), e.g. one fitted on axial and one on
  sagittal slices (``fit --slice-axis``): each member cuts the volume along its own trained axis and
  its class logits are put back into the volume's axis order
  (:func:`~medadapt.infer.volume.auto_volume_logits`); their sigmoid is the class probability;
- fitted 3D runs (``fit --task volumetric``, :class:`VolumetricMember`): the sliding-window class
  probabilities mapped back onto the input's grid (:func:`~medadapt.infer.sliding_window.volume_probabilities`).

The labels come from the members' mean probabilities with the rule both families use on their own:
each voxel takes the most probable class where that probability exceeds 0.5, else background (a
softmax 3D member contributes its class shares, background dropped). A 2D model sees a volume one
plane at a time, a 3D model sees it whole; their errors differ, which is what an ensemble needs
(``fit --method best`` scores the best 2D + best 3D pair by cross-validation).

Post-processing: the largest-component step is applied to the classes for which *every* member chose
it (a member that found it harmful vetoes it).
Written here because MONAI's ensembles (``EnsembleEvaluator``, ``MeanEnsemble``) run networks on one
input frame and stack all outputs before the mean; these members need their own view of the volume
(slices along their axis, or the 3D model's resampled grid), and the running sum holds two C-channel
float volumes however many members there are.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from medadapt.engine.fitted import load_fitted, prep_from_fields
from medadapt.errors import MedadaptError
from medadapt.infer.modality_bank import ModalityBankPredictor
from medadapt.infer.predictor import SamPredictor, class_labels, keep_largest_of
from medadapt.infer.sliding_window import volume_probabilities
from medadapt.infer.volume import Progress, auto_volume_logits
from medadapt.io.volumes import Volume


class VolumetricMember:
    """A fitted 3D run (``fit --task volumetric``) as an ensemble member: class probabilities of a volume."""

    is_automatic = True
    needs_volume = True  # reads the raw volume (intensities and geometry), not the SAM-normalised array
    slice_axis = None
    images_encoded = encoder_calls = 0
    mirror = False  # left-right mirroring is a SAM-family option; a 3D member ignores it

    def __init__(self, run: str | Path, *, batch_size: int = 4):
        self.model, fit_config, _ = load_fitted(run)
        self.resolved = fit_config["resolved"]
        self.classes = [int(c) for c in self.resolved["classes"]]
        self.keep_largest = list(self.classes) if self.resolved.get("largest_component") else []
        self.batch_size = batch_size

    def probabilities(self, volume: Volume) -> np.ndarray:
        """float32 ``[C, *volume.array.shape]`` class probabilities on the input's grid."""
        r = self.resolved
        return volume_probabilities(self.model, volume, prep_from_fields(r["preprocessing"]), r["roi"],
                                    overlap=r.get("overlap", 0.5), sw_batch_size=self.batch_size,
                                    sigmoid=r["sigmoid"])


def sam_probabilities(member: SamPredictor, image: np.ndarray, *, slice_axis: int,
                      progress: Progress | None = None) -> np.ndarray:
    """float32 ``[C, *image.shape[:3]]`` class probabilities of an automatic-mode SAM predictor (sigmoid of
    its class logits), slice by slice along ``slice_axis`` of the SAM-normalised volume ``image``."""
    logits = auto_volume_logits(member, image, slice_axis=slice_axis, progress=progress)
    return torch.sigmoid(torch.from_numpy(logits)).numpy()


def labels_from_probabilities(prob: np.ndarray, classes: Sequence[int]) -> np.ndarray:
    """``[C, ...]`` class probabilities → label map of class ids (the most probable class above 0.5)."""
    return class_labels(np.asarray(prob, dtype=np.float32) - 0.5, classes)  # p > 0.5 <=> logit > 0


def shared_keep_largest(members: Sequence[Sequence[int]]) -> list[int]:
    """The classes whose largest-component step every member chose (see the module docstring)."""
    return sorted(set.intersection(*(set(m) for m in members)))


def ensemble_labels(probs: Sequence[np.ndarray], classes: Sequence[int], keep_largest: Sequence[int]) -> np.ndarray:
    """Labels from the mean of the members' ``[C, ...]`` class probabilities, then the shared
    largest-component step: what :class:`EnsemblePredictor` gives, from probabilities already computed
    (cross-validation scores a pair of candidates this way without running them again)."""
    mean = np.mean(np.stack([np.asarray(p, np.float32) for p in probs]), axis=0)
    return keep_largest_of(labels_from_probabilities(mean, classes), keep_largest)



class EnsemblePredictor:
    """Several prompt-free segmenters with the same classes, used as one (see the module docstring)."""

    def __init__(self, members: Sequence[SamPredictor | VolumetricMember], sources: Sequence[str | Path]):
        if len(members) < 2 or len(members) != len(sources):
            raise ValueError("an ensemble needs two or more members, one source each")
        for member, source in zip(members, sources, strict=True):
            if isinstance(member, ModalityBankPredictor):
                raise MedadaptError(
                    "a modality bank cannot be an ensemble member (it switches adapters per case).",
                    path=source, fix="ensemble the bank's per-modality runs, or pass a single --adapter.",
                )
            if not member.is_automatic:
                raise MedadaptError(
                    "ensembles average the class probabilities of prompt-free models; this adapter expects "
                    "box or point prompts.",
                    path=source, fix="pass only runs of `medadapt fit --prompt auto` or `--task volumetric`.",
                )
            if list(member.classes) != list(members[0].classes):
                raise MedadaptError(
                    f"this run segments classes {list(member.classes)}, the first one {list(members[0].classes)}; "
                    "an ensemble averages the same classes.",
                    path=source, fix="ensemble runs fitted on the same dataset (same classes).",
                )
        self.members = list(members)
        self.sources = [str(s) for s in sources]
        sam = [m for m in self.members if isinstance(m, SamPredictor)]
        self.spec = sam[0].spec if sam else None
        self.classes = list(members[0].classes)
        self.keep_largest = shared_keep_largest([m.keep_largest for m in members])
        # Members keep their own trained axes; a volume's default (or --slice-axis) is for the others.
        self.slice_axis = None

    is_automatic = True

    @property
    def needs_volume(self) -> bool:
        """Whether a member reads the raw volume (a 3D run): callers then pass ``volume=``."""
        return any(getattr(m, "needs_volume", False) for m in self.members)

    @property
    def mirror(self) -> bool:
        return any(m.mirror for m in self.members)

    @mirror.setter
    def mirror(self, value: bool) -> None:
        for member in self.members:
            member.mirror = value

    @property
    def resize(self) -> str | None:
        """How the SAM-family members enlarge small slices (each resolved its own; None without one)."""
        values = sorted({m.resize for m in self.members if isinstance(m, SamPredictor)})
        return ", ".join(values) if values else None

    @property
    def images_encoded(self) -> int:
        return sum(m.images_encoded for m in self.members)

    @property
    def encoder_calls(self) -> int:
        return sum(m.encoder_calls for m in self.members)

    def member_axes(self, slice_axis: int) -> list[int | None]:
        """The axis each SAM-family member cuts a volume along: its trained one, else ``slice_axis``
        (None for a 3D member)."""
        return [None if isinstance(m, VolumetricMember) else slice_axis if m.slice_axis is None else m.slice_axis
                for m in self.members]

    def volume_probabilities(self, image: np.ndarray, *, slice_axis: int = 0, volume: Volume | None = None,
                             progress: Progress | None = None) -> np.ndarray:
        """float32 ``[C, *image.shape[:3]]``: the members' mean class probabilities in the volume's frame.

        ``image``: the SAM-normalised volume (what SAM-family members see); ``volume``: the volume as read
        (intensities and geometry: what a 3D member sees), needed when :attr:`needs_volume`.
        """
        total = None
        for member, axis in zip(self.members, self.member_axes(slice_axis), strict=True):
            if isinstance(member, VolumetricMember):
                if volume is None:
                    raise MedadaptError("this ensemble has a 3D member, which needs the volume file, not an array.",
                                        fix="segment volume files (NIfTI / MHA / NRRD / DICOM) with it.")
                prob = member.probabilities(volume)
            else:
                prob = sam_probabilities(member, image, slice_axis=axis, progress=progress)
            total = prob if total is None else np.add(total, prob, out=total)
        total /= len(self.members)
        return total

    def segment_volume_auto(self, volume_image: np.ndarray, *, slice_axis: int = 0, volume: Volume | None = None,
                            progress: Progress | None = None) -> np.ndarray:
        """uint16 label volume in ``volume_image``'s axis order from the members' mean class probabilities."""
        prob = self.volume_probabilities(volume_image, slice_axis=slice_axis, volume=volume, progress=progress)
        return self.postprocess_auto(labels_from_probabilities(prob, self.classes))

    def segment_auto(self, image: np.ndarray) -> np.ndarray:
        """A 2D image: the members' mean class probabilities → labels (SAM-family members only)."""
        if self.needs_volume:
            raise MedadaptError("this ensemble has a 3D member, which segments volumes, not 2D images.",
                                fix="pass volumes, or ensemble SAM-family runs only for 2D images.")
        prob = sum(torch.sigmoid(m.auto_image_logits(image)[0]) for m in self.members) / len(self.members)
        return self.postprocess_auto(labels_from_probabilities(np.asarray(prob), self.classes))

    def postprocess_auto(self, labels: np.ndarray) -> np.ndarray:
        return keep_largest_of(labels, self.keep_largest)


def check_prompt_mode(predictor, mode: str, path=None) -> None:
    """An ensemble segments without prompts only; refuse box / point modes with a clear error."""
    if isinstance(predictor, EnsemblePredictor) and mode != "auto":
        raise MedadaptError(
            f"--adapter was given {len(predictor.members)} times (an ensemble), which segments without prompts; "
            f"'{mode}' prompts need a single adapter.",
            path=path, fix="use --prompts auto (predict) / --prompt auto (evaluate), or pass one --adapter.",
        )


def check_mirror(mirror: bool, mode: str, path=None) -> None:
    """``--mirror`` only changes automatic-mode (no prompt) inference; refuse it for prompted modes."""
    if mirror and mode != "auto":
        raise MedadaptError(
            f"--mirror applies to automatic mode (no prompt) only, not to {mode} prompts.",
            path=path, fix="pass --adapter RUN of a `medadapt fit --prompt auto` run, or leave --mirror out.",
        )
