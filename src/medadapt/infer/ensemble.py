"""Ensembles of automatic-mode adapters: class logits averaged voxel by voxel in the volume's frame.

nnU-Net ensembles its folds and configurations by averaging their predictions before the labels are
taken. Here the members are automatic-mode (no prompt) adapters, e.g. one fitted on axial and one on
sagittal slices (``fit --slice-axis``): each member cuts the volume along its own trained axis, its
class logits are put back into the volume's axis order (:func:`~medadapt.infer.volume.auto_volume_logits`),
and the labels come from the members' mean, as ``--mirror`` averages an image's logits with its mirror
image's. A 2D model sees a volume one plane at a time; a second plane sees the structure's extent
across the first plane's slices (bench: ``bench_fewshot.py --ensemble``).

Post-processing: the largest-component step is applied to the classes for which *every* member chose
it on its own validation cases (a member that found it harmful vetoes it).
Written here because MONAI's ensembles (``EnsembleEvaluator``, ``MeanEnsemble``) run networks on one
input frame and stack all outputs before the mean; these members need their own slicing of the volume,
and the running sum holds two C-channel float volumes however many members there are.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from medadapt.errors import MedadaptError
from medadapt.infer.modality_bank import ModalityBankPredictor
from medadapt.infer.predictor import SamPredictor, class_labels, keep_largest_of
from medadapt.infer.volume import Progress, auto_volume_logits


class EnsemblePredictor:
    """Several automatic-mode predictors with the same classes, used as one."""

    def __init__(self, members: Sequence[SamPredictor], sources: Sequence[str | Path]):
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
                    "ensembles average the class logits of automatic-mode adapters; this adapter expects "
                    "box or point prompts.",
                    path=source, fix="pass only runs of `medadapt fit --prompt auto` to a repeated --adapter.",
                )
            if member.classes != members[0].classes:
                raise MedadaptError(
                    f"this adapter segments classes {member.classes}, the first one {members[0].classes}; "
                    "an ensemble averages the same classes.",
                    path=source, fix="ensemble adapters fitted on the same dataset (same classes).",
                )
        self.members = list(members)
        self.sources = [str(s) for s in sources]
        self.spec = members[0].spec
        self.classes = list(members[0].classes)
        self.keep_largest = sorted(set.intersection(*(set(m.keep_largest) for m in members)))
        # Members keep their own trained axes; a volume's default (or --slice-axis) is for the others.
        self.slice_axis = None

    is_automatic = True

    @property
    def mirror(self) -> bool:
        return self.members[0].mirror

    @mirror.setter
    def mirror(self, value: bool) -> None:
        for member in self.members:
            member.mirror = value

    @property
    def images_encoded(self) -> int:
        return sum(m.images_encoded for m in self.members)

    @property
    def encoder_calls(self) -> int:
        return sum(m.encoder_calls for m in self.members)

    def member_axes(self, slice_axis: int) -> list[int]:
        """The axis each member cuts a volume along: its trained one, else ``slice_axis``."""
        return [slice_axis if m.slice_axis is None else m.slice_axis for m in self.members]

    def segment_volume_auto(self, volume: np.ndarray, *, slice_axis: int = 0,
                            progress: Progress | None = None) -> np.ndarray:
        """uint16 label volume in ``volume``'s axis order from the members' mean class logits."""
        total = None
        for member, axis in zip(self.members, self.member_axes(slice_axis), strict=True):
            logits = auto_volume_logits(member, volume, slice_axis=axis, progress=progress)
            total = np.array(logits) if total is None else np.add(total, logits, out=total)
        total /= len(self.members)
        return self.postprocess_auto(class_labels(total, self.classes))

    def segment_auto(self, image: np.ndarray) -> np.ndarray:
        """A 2D image: the members' mean class logits → labels."""
        logits = sum(m.auto_image_logits(image)[0] for m in self.members) / len(self.members)
        return self.postprocess_auto(class_labels(logits, self.classes))

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
