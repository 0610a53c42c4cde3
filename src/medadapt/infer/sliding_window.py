"""3D sliding-window segmentation with a volumetric model, written back on the input's grid.

The volume goes through the model's invertible MONAI preprocessing (RAS orientation, resampling,
intensity scaling, foreground crop: :func:`medadapt.data.transforms3d.preprocess_transforms`), is
predicted with MONAI ``sliding_window_inference`` (overlapping ``roi_size`` windows blended with a
Gaussian weight, so window borders do not show), optionally reduced to the largest connected
component per class (:func:`medadapt.data.transforms3d.keep_largest_component`), and the label map is mapped back
through the inverse transforms with nearest-neighbour interpolation (MONAI ``Invertd``). The result
has the input's shape and axis order, and :func:`segment_file` writes it with the input's header
(:func:`medadapt.io.volumes.write_like`).

Windows are batched (``sw_batch_size=4``): for a batch of one small feature map PyTorch's CPU conv3d
falls back to its native im2col kernel, while a batch of two or more runs oneDNN, about 5x faster on
the small 3D U-Nets used here.

Two output conventions: ``sigmoid=False`` (softmax, channel 0 background; label = argmax) and
``sigmoid=True`` (one independent channel per class, as the universal model; label = 1 + the most
probable channel above ``threshold``, background where none is).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from monai.data import MetaTensor
from monai.inferers import sliding_window_inference
from monai.transforms import Invertd
from torch import nn

from medadapt.data.transforms3d import VolumePreprocessing, keep_largest_component, preprocess_transforms
from medadapt.errors import MedadaptError
from medadapt.io.volumes import Volume, read_volume, write_like

__all__ = ["logits_to_labels", "segment_file", "segment_volume", "sliding_window_logits", "volume_probabilities"]


def sliding_window_logits(
    model: nn.Module | Callable[[torch.Tensor], torch.Tensor],
    image: torch.Tensor,
    roi_size: Sequence[int],
    *,
    overlap: float = 0.5,
    sw_batch_size: int = 4,
    mode: str = "gaussian",
    sigma_scale: float = 0.125,
) -> torch.Tensor:
    """Logits ``[B, C, D, H, W]`` of ``image`` ``[B, C_in, D, H, W]``, windows blended (no grad, eval)."""
    if image.ndim != 5:
        raise MedadaptError(f"expected a [B, C, D, H, W] volume batch, got shape {tuple(image.shape)}")
    if not 0 <= overlap < 1:
        raise MedadaptError(f"overlap must be in [0, 1), got {overlap}")
    was_training = getattr(model, "training", False)
    if isinstance(model, nn.Module):
        model.eval()
    try:
        with torch.no_grad():
            out = sliding_window_inference(
                image,
                tuple(roi_size),
                sw_batch_size,
                model,
                overlap=overlap,
                mode=mode,
                sigma_scale=sigma_scale,
            )
    finally:
        if isinstance(model, nn.Module):
            model.train(was_training)
    return torch.as_tensor(out)


def logits_to_labels(logits: torch.Tensor, *, sigmoid: bool = False, threshold: float = 0.5) -> torch.Tensor:
    """``[B, C, *S]`` logits -> ``[B, 1, *S]`` integer labels (see the module docstring)."""
    if not sigmoid:
        return logits.argmax(1, keepdim=True).to(torch.uint8 if logits.shape[1] < 256 else torch.int32)
    prob = torch.sigmoid(logits)
    best, idx = prob.max(1, keepdim=True)
    labels = torch.where(best > threshold, idx + 1, torch.zeros_like(idx))
    return labels.to(torch.uint8 if logits.shape[1] < 255 else torch.int32)


def _model_space_logits(model, volume: Volume, prep: VolumePreprocessing, roi_size, *, overlap, sw_batch_size,
                        device):
    """(preprocessing, its data dict, logits ``[1, C, D', H', W']``) of ``volume`` in model space."""
    image = MetaTensor(
        torch.as_tensor(np.asarray(volume.array, dtype=np.float32)),
        affine=torch.as_tensor(volume.affine, dtype=torch.float64),
    )
    pre = preprocess_transforms(prep, keys=("image",), load=False)
    data = pre({"image": image})
    x = data["image"].as_tensor()[None].to(device)  # [1, 1, D', H', W'] in model space
    return pre, data, sliding_window_logits(model, x, roi_size, overlap=overlap, sw_batch_size=sw_batch_size)


def _to_input_grid(pre, data: dict, values: torch.Tensor, volume: Volume, *, nearest: bool) -> np.ndarray:
    """``values`` ``[C, D', H', W']`` on the preprocessed grid, mapped back onto the input's grid ``[C, *shape]``."""
    data["pred"] = MetaTensor(values.float(), meta=dict(data["image"].meta))  # same grid as the image
    out = Invertd("pred", transform=pre, orig_keys="image", nearest_interp=nearest)(data)["pred"]
    out = np.asarray(torch.as_tensor(out))
    if out.shape[1:] != volume.array.shape:  # cannot happen with invertible transforms; guard the contract
        raise MedadaptError(
            f"internal error: inverted prediction has shape {out.shape[1:]}, the input {volume.array.shape}"
        )
    return out


def segment_volume(
    model: nn.Module,
    volume: Volume,
    prep: VolumePreprocessing,
    roi_size: Sequence[int],
    *,
    overlap: float = 0.5,
    sw_batch_size: int = 4,
    sigmoid: bool = False,
    threshold: float = 0.5,
    largest_component: bool = False,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """Label map of ``volume`` with the shape and axis order of ``volume.array``."""
    pre, data, logits = _model_space_logits(model, volume, prep, roi_size, overlap=overlap,
                                            sw_batch_size=sw_batch_size, device=device)
    labels = logits_to_labels(logits, sigmoid=sigmoid, threshold=threshold)[0].cpu()  # [1, D', H', W']
    if largest_component:
        labels = torch.from_numpy(keep_largest_component(labels.numpy()))
    out = _to_input_grid(pre, data, labels, volume, nearest=True)
    return np.rint(out[0]).astype(labels.numpy().dtype)


def volume_probabilities(
    model: nn.Module,
    volume: Volume,
    prep: VolumePreprocessing,
    roi_size: Sequence[int],
    *,
    overlap: float = 0.5,
    sw_batch_size: int = 4,
    sigmoid: bool = False,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """float32 ``[C, *volume.array.shape]``: each class's probability (not background) on the input's grid.

    Sigmoid outputs: the channel's sigmoid; softmax outputs: the class's softmax share (background
    dropped). Mapped back with linear interpolation, so members of an ensemble
    (:mod:`medadapt.infer.ensemble`) that see the volume differently line up voxel for voxel.
    """
    pre, data, logits = _model_space_logits(model, volume, prep, roi_size, overlap=overlap,
                                            sw_batch_size=sw_batch_size, device=device)
    prob = torch.sigmoid(logits[0].float()) if sigmoid else torch.softmax(logits[0].float(), 0)[1:]
    return _to_input_grid(pre, data, prob.cpu(), volume, nearest=False).astype(np.float32)


def segment_file(
    model: nn.Module,
    image_path: str | Path,
    out_path: str | Path,
    prep: VolumePreprocessing,
    roi_size: Sequence[int],
    **kwargs,
) -> Path:
    """Read ``image_path``, segment it (:func:`segment_volume` options), write ``out_path`` like the input."""
    volume = read_volume(image_path)
    labels = segment_volume(model, volume, prep, roi_size, **kwargs)
    write_like(out_path, labels, volume)
    return Path(out_path)
