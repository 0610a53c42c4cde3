"""Prompted 2D segmentation with SAM-family models.

One image is encoded once, however many objects it holds: all prompts of an image share one
image embedding and go through the (cheap) mask decoder as one batch. Encoder calls for many
images (the slices of a volume) are batched, optionally under bf16 autocast, and may go through
an :class:`~medadapt.engine.embedding_cache.EmbeddingCache` so repeated images are never
re-encoded. The arithmetic is the official CVPR24 LiteMedSAM pipeline (see ``models/preprocess``).

Two input variants (``models/preprocess``): ``resize`` (how images smaller than the model input are
enlarged; ``official`` by default) and ROI inference (``roi_margin``; None, the default, is off): each
box prompt is segmented in its own crop of the image, grown by the margin around the box, and its mask
is pasted back into the full image. Crops are encoded like any image: the embedding cache keys on the
exact input tensor, so a crop's embedding can never be mistaken for its full slice's (or another crop's).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from medadapt.adapt.class_prompts import labels_from_class_logits
from medadapt.data.prompts import Prompt
from medadapt.data.transforms3d import keep_largest_component
from medadapt.engine.embedding_cache import EmbeddingCache, module_fingerprint
from medadapt.models.preprocess import (
    Transform,
    check_resize,
    postprocess_logits,
    preprocess_image,
    roi_window,
)
from medadapt.models.registry import ModelSpec
from medadapt.precision import autocast


@dataclass
class PreparedImage:
    tensor: torch.Tensor  # [3, S, S] model input
    transform: Transform


@dataclass
class ObjectResult:
    prompt: Prompt
    mask: np.ndarray  # [H, W] bool
    iou: float


def default_batch_size() -> int:
    """Slices per encoder call when the user does not say: 8 on a GPU, 1 on a CPU.

    On a 2-core CPU batch 8 is slower per slice than batch 1 for eager torch and gains little or loses for
    the runtime engines (larger activations leave the caches; bench/results/deploy.json, rendered in
    docs/benchmarks.md), so the CPU default is 1.
    """
    return 8 if torch.cuda.is_available() else 1


class SamPredictor:
    """Encode images, decode prompts, return masks in the original image frame."""

    def __init__(
        self,
        model: torch.nn.Module,
        spec: ModelSpec,
        *,
        batch_size: int | None = None,
        precision: str = "fp32",
        cache_dir=None,
        use_cache: bool = False,
        encoder=None,
        classes: Sequence[int] | None = None,
        frozen_stages: int = 0,
        keep_largest: Sequence[int] = (),
        slice_axis: int | None = None,
        mirror: bool = False,
        resize: str = "official",
        roi_margin: float | None = None,
    ):
        self.model = model.eval()
        self.spec = spec
        self.batch_size = default_batch_size() if batch_size is None else max(1, int(batch_size))
        self.precision = precision
        # Class ids of an automatic-mode model's class prompts, in order.
        self.classes = list(classes) if classes is not None else None
        # Classes whose automatic-mode masks keep only their largest connected component
        # (chosen on validation data after the fit: medadapt.pipeline.postprocess).
        self.keep_largest: list[int] = [int(c) for c in keep_largest]
        # Automatic mode only: also decode the left-right mirrored image and average the class logits
        # (test-time mirroring, as nnU-Net does by default; costs a second encoder pass per image).
        self.mirror = mirror
        # Volumes: the axis an adapter was trained on (``fit --slice-axis``); None: the through-plane axis.
        self.slice_axis: int | None = None if slice_axis is None else int(slice_axis)
        # How images smaller than the model input are enlarged (models.preprocess.RESIZE_METHODS).
        self.resize = check_resize(resize)
        # ROI inference: box prompts are segmented in a crop grown by this fraction of the box (None: off).
        if roi_margin is not None and roi_margin < 0:
            raise ValueError(f"roi_margin must be >= 0, got {roi_margin}")
        self.roi_margin = None if roi_margin is None else float(roi_margin)
        self.cache = None
        if use_cache or cache_dir is not None:
            fingerprint = getattr(model, "fingerprint", None) or module_fingerprint(model.image_encoder)
            key = f"{spec.name}:{precision}:{fingerprint}"
            self.cache = EmbeddingCache(self._encode_chunked, key, directory=cache_dir)
        # An adapter trained with frozen_stages=N left the encoder's stem as in the base model: its
        # output is cached too, so scoring many such adapters on the same images encodes each stem once.
        self.stem_cache = None
        self.frozen_stages = frozen_stages if self.cache is not None and encoder is None else 0
        if self.frozen_stages:
            stem = model.image_encoder.stem(self.frozen_stages)
            key = f"{spec.name}:{precision}:stem{self.frozen_stages}:{module_fingerprint(stem)}"
            self.stem_cache = EmbeddingCache(self._encode_stem, key, directory=cache_dir)
        # A drop-in replacement for model.encode (e.g. an ONNX Runtime / OpenVINO engine).
        self.encoder = encoder
        self.encoder_calls = 0
        self.images_encoded = 0

    # -- encoder -----------------------------------------------------------------------------
    def prepare(self, image: np.ndarray, *, around: np.ndarray | None = None) -> PreparedImage:
        """Model input of ``image``; with ROI on and a box ``around`` (x0, y0, x1, y1), of the crop around it."""
        crop = None
        if around is not None and self.roi_margin is not None:
            crop = roi_window(around, np.shape(image)[:2], self.roi_margin)
        tensor, transform = preprocess_image(image, self.spec, resize=self.resize, crop=crop)
        return PreparedImage(tensor, transform)

    @property
    def uses_roi(self) -> bool:
        return self.roi_margin is not None

    @torch.no_grad()
    def _encode_batch(self, batch: torch.Tensor) -> torch.Tensor:
        self.encoder_calls += 1
        self.images_encoded += batch.shape[0]
        if self.encoder is not None:
            return self.encoder(batch)
        with autocast(self.precision, batch):
            if self.stem_cache is not None:
                tokens = self.stem_cache.get_many(batch)  # runs with autocast off; stored in float16
                out = self.model.image_encoder.forward_trunk(tokens, self.frozen_stages)
            else:
                out = self.model.encode(batch)
        return out.float()

    @torch.no_grad()
    def _encode_stem(self, batch: torch.Tensor) -> torch.Tensor:
        with autocast(self.precision, batch):
            return self.model.image_encoder.forward_stem(batch, self.frozen_stages).float()

    @torch.no_grad()
    def encode(self, tensors: Sequence[torch.Tensor]) -> torch.Tensor:
        """[N,3,S,S] inputs → [N,256,64,64] embeddings, in batches of ``batch_size``."""
        if not tensors:
            return torch.empty(0)
        stacked = torch.stack(list(tensors))
        if self.cache is not None:
            return self.cache.get_many(stacked)
        return self._encode_chunked(stacked)

    def _encode_chunked(self, stacked: torch.Tensor) -> torch.Tensor:
        outs = [self._encode_batch(stacked[i : i + self.batch_size]) for i in range(0, len(stacked), self.batch_size)]
        return torch.cat(outs)

    # -- decoder -----------------------------------------------------------------------------
    @torch.no_grad()
    def decode(
        self,
        embedding: torch.Tensor,
        transform: Transform,
        prompts: Sequence[Prompt],
        *,
        model_frame_boxes: np.ndarray | None = None,
    ) -> list[ObjectResult]:
        """Decode every prompt of one image against its embedding ([1,256,64,64] or [256,64,64]).

        ``model_frame_boxes`` ([N,4], already in the model's input frame) overrides the prompts'
        boxes; slice-wise 3D propagation uses it for boxes derived from the previous slice's mask.
        """
        if embedding.dim() == 3:
            embedding = embedding[None]
        results: list[ObjectResult] = []
        # Group prompts by kind so each group is one batched decoder call.
        groups: dict[tuple[bool, int], list[int]] = {}
        for i, p in enumerate(prompts):
            has_box = p.box is not None or model_frame_boxes is not None
            n_pts = 0 if p.points is None else len(p.points)
            groups.setdefault((has_box, n_pts), []).append(i)
        out: dict[int, ObjectResult] = {}
        for (has_box, n_pts), idx in groups.items():
            boxes = None
            if has_box:
                if model_frame_boxes is not None:
                    boxes = np.asarray(model_frame_boxes, dtype=np.float32)[idx]
                else:
                    boxes = transform.apply_boxes(np.stack([np.asarray(prompts[i].box, dtype=np.float32) for i in idx]))
                boxes = torch.as_tensor(boxes, dtype=torch.float32)
            points = None
            if n_pts:
                coords = np.stack([transform.apply_points(np.asarray(prompts[i].points, np.float32)) for i in idx])
                labels = np.stack([np.asarray(prompts[i].point_labels, dtype=np.int64) for i in idx])
                points = (torch.as_tensor(coords, dtype=torch.float32), torch.as_tensor(labels))
            low_res, iou = self.model.decode(embedding, points=points, boxes=boxes, multimask_output=False)
            logits = postprocess_logits(low_res.float(), transform)  # [n,1,H,W]
            masks = (logits[:, 0] > 0).cpu().numpy()
            for j, i in enumerate(idx):
                out[i] = ObjectResult(prompts[i], masks[j], float(iou[j, 0]))
        results = [out[i] for i in range(len(prompts))]
        return results

    @property
    def is_automatic(self) -> bool:
        return getattr(self.model, "class_prompts", None) is not None and self.classes is not None

    @torch.no_grad()
    def auto_logits(self, embedding: torch.Tensor, transform: Transform) -> torch.Tensor:
        """Automatic mode: ``[1, C, H, W]`` class logits in the original image frame."""
        if embedding.dim() == 3:
            embedding = embedding[None]
        low_res, _ = self.model.class_prompts.decode(self.model, embedding)
        return postprocess_logits(low_res.float(), transform)

    @torch.no_grad()
    def auto_class_logits(self, embedding: torch.Tensor, transform: Transform,
                          mirrored: tuple[torch.Tensor, Transform] | None = None) -> torch.Tensor:
        """Automatic mode: ``[1, C, H, W]`` class logits, averaged with the mirrored image's when given.

        ``mirrored``: (embedding, transform) of the left-right mirrored image; its logits are mirrored
        back before the average.
        """
        logits = self.auto_logits(embedding, transform)
        if mirrored is not None:
            logits = (logits + self.auto_logits(*mirrored).flip(-1)) / 2
        return logits

    def decode_auto(self, embedding: torch.Tensor, transform: Transform,
                    mirrored: tuple[torch.Tensor, Transform] | None = None) -> np.ndarray:
        """Automatic mode: every class from the image alone → uint16 label map in the original frame."""
        return class_labels(self.auto_class_logits(embedding, transform, mirrored)[0], self.classes)

    def auto_image_logits(self, image: np.ndarray) -> torch.Tensor:
        """``[1, C, H, W]`` class logits of one 2D image (with its mirror image when ``mirror`` is on)."""
        images = [image, np.ascontiguousarray(image[:, ::-1])] if self.mirror else [image]
        prepared = [self.prepare(im) for im in images]
        emb = self.encode([p.tensor for p in prepared])
        mirrored = (emb[1], prepared[1].transform) if self.mirror else None
        return self.auto_class_logits(emb[0], prepared[0].transform, mirrored)

    def segment_auto(self, image: np.ndarray) -> np.ndarray:
        return self.postprocess_auto(class_labels(self.auto_image_logits(image)[0], self.classes))

    def postprocess_auto(self, labels: np.ndarray) -> np.ndarray:
        """A whole automatic-mode result (image or volume) after ``keep_largest``."""
        return keep_largest_of(labels, self.keep_largest)

    def segment(self, image: np.ndarray, prompts: Sequence[Prompt]) -> tuple[np.ndarray, list[ObjectResult]]:
        """Label map (uint16, H×W) for one image; later prompts overwrite earlier ones, as the official code."""
        results = self.segment_objects(image, prompts)
        return paint(results, image.shape[:2]), results

    def segment_objects(self, image: np.ndarray, prompts: Sequence[Prompt]) -> list[ObjectResult]:
        """One result per prompt, masks in the full image frame.

        Without ROI the image is encoded once for all prompts. With ROI every box prompt gets its own
        crop (encoded in batches of ``batch_size``); prompts without a box use the whole image.
        """
        if not self.uses_roi or not any(p.box is not None for p in prompts):
            prepared = self.prepare(image)
            return self.decode(self.encode([prepared.tensor])[0], prepared.transform, prompts)
        boxed = [i for i, p in enumerate(prompts) if p.box is not None]
        rest = [i for i, p in enumerate(prompts) if p.box is None]
        prepared = [self.prepare(image, around=prompts[i].box) for i in boxed]
        embeddings = self.encode([p.tensor for p in prepared])
        out = {i: self.decode(e, p.transform, [prompts[i]])[0]
               for i, p, e in zip(boxed, prepared, embeddings, strict=True)}
        if rest:
            whole = self.prepare(image)
            others = self.decode(self.encode([whole.tensor])[0], whole.transform, [prompts[i] for i in rest])
            out.update(zip(rest, others, strict=True))
        return [out[i] for i in range(len(prompts))]


def paint(results: Sequence[ObjectResult], shape: tuple[int, int]) -> np.ndarray:
    """Write each object's mask with its class id (or object id) into one label map."""
    label = np.zeros(shape, dtype=np.uint16)
    for r in results:
        value = r.prompt.class_id if r.prompt.class_id is not None else r.prompt.object_id
        label[r.mask] = value
    return label


def class_labels(logits: torch.Tensor | np.ndarray, classes: Sequence[int]) -> np.ndarray:
    """``[C, ...]`` automatic-mode class logits → uint16 label map of class ids (0: no logit positive)."""
    logits = torch.as_tensor(logits)
    labels = labels_from_class_logits(logits[None])[0].numpy()
    lut = np.array([0, *classes], dtype=np.uint16)
    return lut[labels]


def keep_largest_of(labels: np.ndarray, classes: Sequence[int]) -> np.ndarray:
    """``labels`` with only the largest connected component of each of ``classes`` kept (none: unchanged)."""
    if not classes:
        return labels

    return keep_largest_component(labels, list(classes))
