"""Slice-wise 3D inference with 2D SAM-family models.

Two procedures, both exactly as the reference code does them, but with every slice encoded once
(however many objects cover it) and encoder calls batched:

- :func:`segment_volume_boxes3d` — CVPR24 "MedSAM on Laptop": for each 3D box, start at the middle
  slice with the box's 2D footprint, then walk to both ends of the box; on each further slice the
  prompt is the box of the previous slice's prediction (+3 px margin in the model frame), or the
  middle box again when the previous slice came out empty.
- :func:`segment_volume_from_labels` — the seeds' evaluation protocol: a 2D box per class on every
  slice where the ground truth holds that class.

Volumes are numpy arrays; ``slice_axis`` says which axis to walk. Intensities must already be
normalised to 0..255 (see ``medadapt.data.intensity``), as the challenge data are.

With ROI inference on (``predictor.roi_margin``) every object is segmented on each slice in a crop
around its box: the label's box, or for propagation the box of the previous slice's mask in full-slice
pixels (the middle box when that mask is empty). Crops depend on the object and on the previous
slice's result, so they bypass the per-volume :class:`SliceEmbeddings` and are encoded as they come
(the predictor's embedding cache, keyed on the exact input tensor, still serves repeats).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence

import numpy as np
import torch

from medadapt.data.prompts import Prompt, boxes_from_label, mask_box
from medadapt.infer.predictor import SamPredictor
from medadapt.models.preprocess import Transform

PROPAGATION_MARGIN = 3  # px in the model frame, CVPR24 get_bbox256(bbox_shift=3)

Progress = Callable[[int], None]


def _slice_image(volume_zyx: np.ndarray, z: int) -> np.ndarray:
    img = volume_zyx[z]
    return np.repeat(img[:, :, None], 3, axis=-1) if img.ndim == 2 else img


class SliceEmbeddings:
    """Encodes the requested slices of one volume once, in batches, and hands out their embeddings.

    With ``around`` (slice index -> box x0, y0, x1, y1 in full-slice pixels) and ROI inference on
    (``predictor.roi_margin``), each slice is encoded in the ROI crop around its box instead.

    ``decoder_image(z)`` also keeps the prompt-free decoder work of the last ``DECODER_IMAGES`` slices it
    was asked for (about 10 MB each for LiteMedSAM), for callers that decode a slice again and again.
    """

    DECODER_IMAGES = 16

    def __init__(self, predictor: SamPredictor, volume_zyx: np.ndarray, progress: Progress | None = None,
                 around: Callable[[int], np.ndarray] | None = None):
        self.predictor = predictor
        self.volume = volume_zyx
        self.progress = progress
        self.around = around
        self._prepared: dict[int, object] = {}
        self._emb: dict[int, torch.Tensor] = {}
        self._decoder_images: OrderedDict[int, object] = OrderedDict()

    def prepare(self, zs: Sequence[int]) -> None:
        todo = [z for z in sorted(set(zs)) if z not in self._emb]
        step = self.predictor.batch_size
        for i in range(0, len(todo), step):
            chunk = todo[i : i + step]
            prepared = [self.predictor.prepare(_slice_image(self.volume, z),
                                               around=None if self.around is None else self.around(z))
                        for z in chunk]
            emb = self.predictor.encode([p.tensor for p in prepared])
            for z, p, e in zip(chunk, prepared, emb, strict=True):
                self._prepared[z] = p
                self._emb[z] = e
            if self.progress:
                self.progress(len(chunk))

    def get(self, z: int):
        if z not in self._emb:
            self.prepare([z])
        return self._emb[z], self._prepared[z].transform

    @torch.no_grad()
    def decoder_image(self, z: int):
        """Slice ``z``'s :meth:`~medadapt.models.sam.sam.Sam.decoder_image` (or an export's) for
        ``decode(self.get(z)[0][None], ..., decoder_image=...)``; None for a model without one."""
        model = self.predictor.model
        if not hasattr(model, "decoder_image"):
            return None
        emb = self.get(z)[0][None]
        if z in self._decoder_images and model.is_current(self._decoder_images[z], emb):
            self._decoder_images.move_to_end(z)
        else:  # new, or the weights changed since (a model adapted in place)
            self._decoder_images.pop(z, None)
            image = model.decoder_image(emb)
            if image is None:  # an export written before its decoder was split
                return None
            self._decoder_images[z] = image
            if len(self._decoder_images) > self.DECODER_IMAGES:
                self._decoder_images.popitem(last=False)
        return self._decoder_images[z]


def _roi_slice(predictor: SamPredictor, vol: np.ndarray, z: int, box: np.ndarray,
               progress: Progress | None) -> tuple[torch.Tensor, Transform]:
    """Embedding and transform of the ROI crop of slice ``z`` around ``box`` (full-slice pixels)."""
    prepared = predictor.prepare(_slice_image(vol, z), around=box)
    emb = predictor.encode([prepared.tensor])[0]
    if progress:
        progress(1)
    return emb, prepared.transform


def box_from_previous(prev_mask: np.ndarray, value: int, tf: Transform) -> np.ndarray | None:
    """CVPR24 ``get_bbox256``: box of the previous slice's mask in the padded model frame, +3 px.

    The official code resizes the mask holding the object's value (INTER_AREA, then > 0), so the
    value changes which edge pixels survive; it is kept for equality.
    """
    if not prev_mask.any():
        return None
    size = tf.image_size
    small = tf.mask_to_model(prev_mask.astype(np.uint8) * np.uint8(min(value, 255)), interpolation="area")
    ys, xs = np.nonzero(small)
    if len(xs) == 0:
        return None
    x0 = max(0, xs.min() - PROPAGATION_MARGIN)
    x1 = min(size, xs.max() + PROPAGATION_MARGIN)
    y0 = max(0, ys.min() - PROPAGATION_MARGIN)
    y1 = min(size, ys.max() + PROPAGATION_MARGIN)
    return np.array([x0, y0, x1, y1], dtype=np.float32)


def segment_volume_boxes3d(
    predictor: SamPredictor,
    volume: np.ndarray,
    boxes3d: np.ndarray,
    *,
    slice_axis: int = 0,
    values: Sequence[int] | None = None,
    progress: Progress | None = None,
) -> np.ndarray:
    """CVPR24 box propagation. ``boxes3d`` [N,6] = x0,y0,z0,x1,y1,z1 with z along ``slice_axis``.

    Returns a uint16 label volume in the input's axis order; object i (1-based) gets value i (or
    ``values[i-1]``, e.g. the class of each box), later objects overwriting earlier ones as in the
    official code.
    """
    vol = np.moveaxis(volume, slice_axis, 0)
    depth = vol.shape[0]
    boxes3d = np.asarray(boxes3d, dtype=np.float64).reshape(-1, 6)
    cache = SliceEmbeddings(predictor, vol, progress)
    ranges = []
    for b in boxes3d:
        z0, z1 = int(b[2]), int(b[5])
        ranges.append((z0, min(z1 + 1, depth)))
    if not predictor.uses_roi:
        cache.prepare([z for z0, z1 in ranges for z in range(max(z0, 0), z1)])

    def step(z: int, prev: np.ndarray | None, idx: int, mid_box: np.ndarray, fallback):
        """(embedding, transform, model-frame box) of slice ``z``; ``prev``: the neighbour slice's mask."""
        if not predictor.uses_roi:
            emb, tf = cache.get(z)
            frame_box = None if prev is None else box_from_previous(prev, idx, tf)
            return emb, tf, fallback(tf) if frame_box is None else frame_box
        if prev is not None and prev.any():
            emb, tf = _roi_slice(predictor, vol, z, mask_box(prev), progress)
            frame_box = box_from_previous(prev, idx, tf)
            if frame_box is not None:
                return emb, tf, frame_box
        emb, tf = _roi_slice(predictor, vol, z, mid_box, progress)
        return emb, tf, fallback(tf)

    segs = np.zeros(vol.shape[:3], dtype=np.uint16)
    for idx, (b, (z0, z_end)) in enumerate(zip(boxes3d, ranges, strict=True), start=1):
        temp = np.zeros(vol.shape[:3], dtype=bool)
        mid_box = np.array([b[0], b[1], b[3], b[4]], dtype=np.float64)
        z_mid = int((b[5] - b[2]) / 2 + b[2])
        prompt = Prompt(class_id=idx, box=mid_box)

        def truncated(tf, mid_box=mid_box):
            return tf.apply_boxes(mid_box[None])[0]  # official resize_box_to_256 (truncating)

        def scaled(tf, mid_box=mid_box):
            return tf.scale_boxes(mid_box[None])[0]  # the official code does not truncate on this side

        # middle → top
        for z in range(z_mid, z_end):
            emb, tf, frame_box = step(z, None if z == z_mid else temp[z - 1], idx, mid_box, truncated)
            temp[z] = predictor.decode(emb, tf, [prompt], model_frame_boxes=frame_box[None])[0].mask
        # middle → bottom
        for z in range(z_mid - 1, max(-1, z0 - 1), -1):
            emb, tf, frame_box = step(z, temp[z + 1], idx, mid_box, scaled)
            temp[z] = predictor.decode(emb, tf, [prompt], model_frame_boxes=frame_box[None])[0].mask
        segs[temp] = idx if values is None else values[idx - 1]
    return np.moveaxis(segs, 0, slice_axis)


def segment_volume_from_labels(
    predictor: SamPredictor,
    volume: np.ndarray,
    label: np.ndarray,
    *,
    slice_axis: int = 0,
    classes: Sequence[int] | None = None,
    jitter: int = 0,
    rng: np.random.Generator | None = None,
    progress: Progress | None = None,
) -> np.ndarray:
    """A 2D box per class on every slice where the label holds the class; classes painted in order."""
    vol = np.moveaxis(volume, slice_axis, 0)
    lab = np.moveaxis(label, slice_axis, 0)
    if classes is None:
        classes = [int(c) for c in np.unique(lab) if c != 0]
    prompts_per_slice: dict[int, list[Prompt]] = {}
    for z in range(vol.shape[0]):
        if not lab[z].any():
            continue
        prompts = boxes_from_label(lab[z], per="class", classes=classes, jitter=jitter, rng=rng)
        if prompts:
            prompts_per_slice[z] = prompts
    segs = np.zeros(vol.shape[:3], dtype=np.uint16)
    if predictor.uses_roi:  # one crop per object and slice
        for z, prompts in prompts_per_slice.items():
            for r in predictor.segment_objects(_slice_image(vol, z), prompts):
                segs[z][r.mask] = r.prompt.class_id
            if progress:
                progress(len(prompts))
        return np.moveaxis(segs, 0, slice_axis)
    cache = SliceEmbeddings(predictor, vol, progress)
    cache.prepare(list(prompts_per_slice))
    for z, prompts in prompts_per_slice.items():
        emb, tf = cache.get(z)
        for r in predictor.decode(emb, tf, prompts):
            segs[z][r.mask] = r.prompt.class_id
    return np.moveaxis(segs, 0, slice_axis)


def _auto_embeddings(predictor: SamPredictor, vol: np.ndarray, progress: Progress | None):
    """Every slice of ``vol`` (slices first) encoded; with ``predictor.mirror``, its mirror images too."""
    cache = SliceEmbeddings(predictor, vol, progress)
    cache.prepare(range(vol.shape[0]))
    mirrored = None
    if predictor.mirror:
        mirrored = SliceEmbeddings(predictor, np.ascontiguousarray(vol[:, :, ::-1]))
        mirrored.prepare(range(vol.shape[0]))
    return cache, mirrored


def segment_volume_auto(
    predictor: SamPredictor, volume: np.ndarray, *, slice_axis: int = 0, progress: Progress | None = None
) -> np.ndarray:
    """Automatic mode: every slice encoded (batched) and decoded into all classes, no prompt.

    With ``predictor.mirror`` each slice is also segmented left-right mirrored (logits averaged).
    """
    vol = np.moveaxis(volume, slice_axis, 0)
    cache, mirrored = _auto_embeddings(predictor, vol, progress)
    segs = np.zeros(vol.shape[:3], dtype=np.uint16)
    for z in range(vol.shape[0]):
        emb, tf = cache.get(z)
        segs[z] = predictor.decode_auto(emb, tf, mirrored.get(z) if mirrored is not None else None)
    return np.moveaxis(predictor.postprocess_auto(segs), 0, slice_axis)


def auto_volume_logits(
    predictor: SamPredictor, volume: np.ndarray, *, slice_axis: int = 0, progress: Progress | None = None
) -> np.ndarray:
    """Automatic mode, before the labels: ``[C, *volume.shape[:3]]`` float32 class logits, slice by slice
    along ``slice_axis``, returned in the volume's own axis order (so logits of models that cut the
    volume along different axes line up voxel for voxel). ``class_labels`` of them, then
    ``postprocess_auto``, is :func:`segment_volume_auto`'s result.

    Holds C float32 copies of the volume: 4 bytes × classes per voxel.
    """
    vol = np.moveaxis(volume, slice_axis, 0)
    cache, mirrored = _auto_embeddings(predictor, vol, progress)
    logits = np.zeros((len(predictor.classes), *vol.shape[:3]), dtype=np.float32)
    for z in range(vol.shape[0]):
        emb, tf = cache.get(z)
        mirror = mirrored.get(z) if mirrored is not None else None
        logits[:, z] = predictor.auto_class_logits(emb, tf, mirror)[0].numpy()
    return np.moveaxis(logits, 1, slice_axis + 1)
