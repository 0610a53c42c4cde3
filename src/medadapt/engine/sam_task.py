"""Few-shot fine-tuning of SAM-family models on 2D slices: the :class:`TrainTask` behind ``medadapt fit``.

Samples are the labelled slices of the training volumes (or the training images of a 2D dataset).
Every class present in a slice is a training object, so multi-class data trains all classes at
once rather than one random mask. Prompt modes:

- ``box``: the object's box in the model frame, each side pushed out by 0..``box_jitter`` px;
- ``point``: ``n_pos`` random points inside the object, ``n_neg`` outside;
- ``hybrid``: each object drawn at random as box, points, or box + points;
- ``click``: the box, then 0..``max_clicks`` corrective clicks, each simulated from the errors of the
  prediction so far with the click rule of the CVPR 2025 interactive challenge (the deepest point of the
  largest error region, positive where the object was missed, negative where it overflowed;
  :func:`medadapt.metrics.interactive.simulate_click` on the 2D slice), as an interactive session
  (:mod:`medadapt.infer.interactive`) gives them. The clicks of a step come from no-gradient decodes;
  the loss is on the final decode with the box and all its clicks. A box-trained decoder has never seen
  points with a box, which is why zero-shot and box-trained models barely respond to clicks;
- ``auto``: no prompt at all: learned class tokens (:mod:`medadapt.adapt.class_prompts`) decode
  every class of the dataset from the image alone.

When the recipe leaves the image encoder frozen, embeddings are computed once per slice and kept
in an :class:`~medadapt.engine.embedding_cache.EmbeddingCache` (memory, optionally disk), so each
step costs only the mask decoder: decoder-side recipes train in minutes on a CPU. Image
augmentation would change the embedding, so in that case augmentation acts on the prompts only
(box jitter, random points); with a trainable encoder, slices are augmented with MONAI transforms.

Encoder-side recipes with ``frozen_stages = N`` (LoRA / adapters / biases only after the first N
stages of a staged encoder such as TinyViT) cache the frozen stem's output instead, the tokens after
stage N, and run only the trunk forward and backward each step; the first stages at full resolution
are about half of LiteMedSAM's encoder time. Image augmentation is then off too (prompts only) unless
``augment_stem`` is set: training slices are then augmented and the frozen stem runs on each of them
(no gradient, no cache; validation still reads the cache). A few-shot draw of 5 volumes shows the
structure at only a few positions, and in automatic mode the position is all the model has to go on.

Losses follow MedSAM: Dice + BCE on the 256×256 low-resolution logits against the mask in the
model frame, plus optionally the IoU-head loss.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medadapt.adapt.artifact import save_adapter
from medadapt.adapt.class_prompts import labels_from_class_logits
from medadapt.adapt.recipes import RecipeConfig
from medadapt.data.augment import train_augment
from medadapt.data.prompts import mask_box
from medadapt.data.slices import SliceSample
from medadapt.engine.embedding_cache import EmbeddingCache, module_fingerprint
from medadapt.engine.losses import SegmentationLoss
from medadapt.engine.optim import weight_decay_groups
from medadapt.metrics.interactive import simulate_click
from medadapt.models.preprocess import preprocess_image
from medadapt.models.registry import ModelSpec
from medadapt.run import RunFolder

PROMPT_MODES = ("box", "point", "hybrid", "click", "auto")
LOW_RES = 256


@dataclass
class SamTaskSettings:
    prompt: str = "box"
    classes: Sequence[int] = (1,)
    batch_size: int = 4  # slices per step
    box_jitter: int = 5
    n_pos: int = 1
    n_neg: int = 0
    max_clicks: int = 3  # ``click`` mode: corrective clicks per object, drawn uniformly in 0..max_clicks
    iou_weight: float = 0.0
    augment: bool = True
    augment_stem: bool = False  # frozen-stage recipes: augment images too, running the stem per slice
    augment_flips: bool = True
    augment_translate: float = 0.0
    cache_dir: Path | None = None
    seed: int = 0
    base: dict = field(default_factory=dict)  # identifies the base model in the artifact
    class_token_lr_scale: float = 10.0  # auto mode: prompt tuning wants a larger lr than the decoder
    slice_axis: int | None = None  # volumes: the axis the training slices were cut along (None: by spacing)
    # Another engine for the frozen encoder: (tag, [B,3,S,S] -> [B,256,64,64]); see ``run_fit``.
    frozen_encoder: tuple[str, Callable[[torch.Tensor], torch.Tensor]] | None = None


@dataclass
class _Item:
    """One slice in the model frame: input tensor, low-res class map, and the original sample."""

    tensor: torch.Tensor  # [3, S, S]
    target: torch.Tensor  # [256, 256] int64 class map in the low-res model frame
    sample: SliceSample


def model_frame_target(label: np.ndarray, transform) -> torch.Tensor:
    """Class map → padded model frame (nearest) → 256×256 low-res frame."""
    framed = transform.mask_to_model(label.astype(np.int32), interpolation="nearest")
    t = torch.from_numpy(np.ascontiguousarray(framed)).long()
    if t.shape[-1] != LOW_RES:
        t = F.interpolate(t[None, None].float(), (LOW_RES, LOW_RES), mode="nearest")[0, 0].long()
    return t


def _in_chunks(fn: Callable[[torch.Tensor], torch.Tensor], batch: torch.Tensor, chunk: int = 4) -> torch.Tensor:
    """``fn`` over ``batch`` in chunks: TinyViT's first stage at 256×256 needs ~70 MB of activations
    per slice, so a whole validation batch at once would need gigabytes."""
    return torch.cat([fn(batch[i : i + chunk]) for i in range(0, len(batch), chunk)])


class SamSegmentationTask:
    """TrainTask for SAM-family segmentation (see the module docstring)."""

    def __init__(
        self,
        model: nn.Module,
        spec: ModelSpec,
        recipe: RecipeConfig,
        encoder_trainable: bool,
        train_samples: Sequence[SliceSample],
        val_samples: Sequence[SliceSample],
        settings: SamTaskSettings,
    ):
        if settings.prompt not in PROMPT_MODES:
            raise ValueError(f"prompt mode must be one of {PROMPT_MODES}")
        self.model = model
        self.spec = spec
        self.recipe = recipe
        self.settings = settings
        self.encoder_trainable = encoder_trainable
        self.classes = [int(c) for c in settings.classes]
        # auto mode decodes every class on every slice, empty ones included: one Dice per class over
        # the batch (MONAI ``batch``) so that a slice without the class does not give a 0/0 Dice.
        self.loss = SegmentationLoss(iou_weight=settings.iou_weight, batch=settings.prompt == "auto")
        self.frozen_stages = recipe.frozen_stages if encoder_trainable else 0
        self.augmenter = None
        if encoder_trainable and settings.augment and (not self.frozen_stages or settings.augment_stem):
            self.augmenter = train_augment(settings.seed, translate=settings.augment_translate,
                                           **({} if settings.augment_flips else {"flip_prob": 0.0}))
        self.train_items = [self._item(s) for s in train_samples]
        self.val_items = [self._item(s) for s in val_samples]
        self.cache = None
        if not encoder_trainable:
            key = module_fingerprint(model.image_encoder, checkpoint_sha=settings.base.get("checkpoint_sha256"))
            encode, tag = self._encode_frozen, ""
            if settings.frozen_encoder is not None:  # e.g. OpenVINO fp32: same embeddings, ~2x faster
                tag, encode = settings.frozen_encoder
                tag = f":{tag}"
            self.cache = EmbeddingCache(encode, f"{spec.name}:{key}{tag}", directory=settings.cache_dir)
        self.stem_cache = None
        if self.frozen_stages:
            n = self.frozen_stages
            key = module_fingerprint(model.image_encoder.stem(n), checkpoint_sha=settings.base.get("checkpoint_sha256"))
            self.stem_cache = EmbeddingCache(self._encode_stem, f"{spec.name}:stem{n}:{key}",
                                             directory=settings.cache_dir)

    # -- data -------------------------------------------------------------------------------
    def _item(self, sample: SliceSample) -> _Item:
        tensor, tf = preprocess_image(sample.image, self.spec)
        return _Item(tensor, model_frame_target(sample.label, tf), sample)

    @property
    def sam(self) -> nn.Module:
        return getattr(self.model, "module", self.model)

    @torch.no_grad()
    def _encode_frozen(self, batch: torch.Tensor) -> torch.Tensor:
        return _in_chunks(self.sam.encode, batch)

    @torch.no_grad()
    def _encode_stem(self, batch: torch.Tensor) -> torch.Tensor:
        """[B, 3, S, S] → tokens after the frozen stages ([B, L, C])."""
        return _in_chunks(lambda x: self.sam.image_encoder.forward_stem(x, self.frozen_stages), batch)

    def parameters_to_train(self):
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        prompts = getattr(self.sam, "class_prompts", None)
        if prompts is None or not prompts.tokens.requires_grad:
            return trainable
        rest = weight_decay_groups(p for p in trainable if p is not prompts.tokens)
        return [*rest, {"params": [prompts.tokens], "weight_decay": 0.0,
                        "lr_scale": self.settings.class_token_lr_scale}]

    def train_batches(self, epoch: int) -> Iterator[tuple[int, int, list[int]]]:
        """(epoch, batch index, slice indices): the randomness of a step is derived from the first two,
        so a resumed run draws exactly the jitter/points/augmentations the killed one would have."""
        if not self.train_items:
            return iter(())
        rng = np.random.default_rng(self.settings.seed * 1000 + epoch)
        order = rng.permutation(len(self.train_items))
        bs = self.settings.batch_size
        return iter([(epoch, j, order[i : i + bs].tolist()) for j, i in enumerate(range(0, len(order), bs))])

    # -- one step ----------------------------------------------------------------------------
    def _embeddings(self, items: list[_Item], train: bool) -> torch.Tensor:
        tensors = torch.stack([it.tensor for it in items])
        if self.cache is not None:
            return self.cache.get_many(tensors)
        if self.stem_cache is not None:
            enc, n = self.sam.image_encoder, self.frozen_stages
            augmented = train and self.augmenter is not None  # new images each step: no use caching them
            tokens = self.stem_cache.encode_uncached(tensors) if augmented else self.stem_cache.get_many(tensors)
            if train:
                return enc.forward_trunk(tokens, n)
            with torch.no_grad():
                return _in_chunks(lambda t: enc.forward_trunk(t, n), tokens)
        return self.sam.encode(tensors) if train else self._encode_frozen(tensors)

    def _augmented(self, item: _Item) -> _Item:
        if self.augmenter is None:
            return item
        image, label = self.augmenter.apply(item.sample.image, item.sample.label)
        tensor, tf = preprocess_image(image, self.spec)
        return _Item(tensor, model_frame_target(label, tf), item.sample)

    def training_step(self, batch: tuple[int, int, list[int]]):
        epoch, index, indices = batch
        rng = np.random.default_rng([self.settings.seed, epoch, index])
        if self.augmenter is not None:
            self.augmenter.reseed(int(rng.integers(2**31)))
        items = [self._augmented(self.train_items[i]) for i in indices]
        emb = self._embeddings(items, train=True)
        logits, targets, iou, _ = self._decode_objects(emb, items, rng)
        if logits is None:
            zero = sum(p.sum() * 0 for p in self.parameters_to_train())
            return zero, {"objects": 0.0}
        loss = self.loss(logits, targets, iou if self.settings.iou_weight > 0 else None)
        return loss, {"objects": float(targets.shape[0])}

    def _decode_objects(self, emb: torch.Tensor, items: list[_Item], rng: np.random.Generator,
                        *, validation: bool = False):
        """Logits [N, 1, 256, 256] (or [B, C, ...] in auto mode), targets alike, IoU predictions, and
        the (slice, class) of each object. Objects with the same prompt kind share one decoder call."""
        if self.settings.prompt == "auto":
            logits, iou = self.sam.class_prompts.decode(self.sam, emb)
            targets = torch.stack([
                torch.stack([(it.target == c).float() for c in self.classes]) for it in items
            ])
            return logits, targets, iou.reshape(-1, 1), None
        if self.settings.prompt == "click" and not validation:
            return self._decode_with_clicks(emb, items, rng)
        kinds: dict[str, list[tuple[int, int, np.ndarray]]] = {}
        for b, it in enumerate(items):
            target = it.target.numpy()
            for c in self.classes:
                mask = target == c
                if mask.any():
                    kinds.setdefault(self._kind(rng, validation), []).append((b, c, mask))
        if not kinds:
            return None, None, None, None
        out_logits, out_targets, out_iou, owners = [], [], [], []
        scale = self.spec.image_size / LOW_RES
        jitter = 0 if validation else self.settings.box_jitter
        for kind, objs in sorted(kinds.items()):
            idx = torch.tensor([b for b, _, _ in objs])
            boxes = points = None
            if "box" in kind:
                boxes = torch.from_numpy(np.stack([self._jittered_box(m, rng, jitter) for _, _, m in objs]) * scale)
            if "point" in kind:
                coords, labels = zip(*(self._points(m, rng) for _, _, m in objs), strict=True)
                points = (torch.from_numpy(np.stack(coords) * scale), torch.from_numpy(np.stack(labels)))
            low_res, iou = self.sam.decode(emb[idx], points=points, boxes=boxes, multimask_output=False)
            out_logits.append(low_res)
            out_iou.append(iou)
            out_targets.append(torch.stack([torch.from_numpy(m).float()[None] for _, _, m in objs]))
            owners += [(b, c) for b, c, _ in objs]
        return torch.cat(out_logits), torch.cat(out_targets), torch.cat(out_iou), owners

    def _decode_with_clicks(self, emb: torch.Tensor, items: list[_Item], rng: np.random.Generator):
        """``click`` mode: box + 0..max_clicks corrective clicks per object (see the module docstring)."""
        objs = [(b, c, it.target.numpy() == c) for b, it in enumerate(items) for c in self.classes]
        objs = [o for o in objs if o[2].any()]
        if not objs:
            return None, None, None, None
        scale = self.spec.image_size / LOW_RES
        boxes = torch.from_numpy(np.stack([self._jittered_box(m, rng, self.settings.box_jitter) for _, _, m in objs])
                                 * scale)
        wanted = rng.integers(0, self.settings.max_clicks + 1, size=len(objs))
        clicks: list[list[tuple[float, float, int]]] = [[] for _ in objs]  # (x, y, label) in the model frame
        with torch.no_grad():
            for r in range(int(wanted.max(initial=0))):
                todo = [i for i in range(len(objs)) if wanted[i] > r and len(clicks[i]) == r]
                if not todo:
                    break
                low_res, _ = self._decode_group(emb, objs, boxes, clicks, todo)
                for j, i in enumerate(todo):
                    click = simulate_click(objs[i][2], low_res[j, 0].numpy() > 0, seed=int(rng.integers(2**31)))
                    if click is not None:  # None: already perfect, no click to give
                        y, x = click.index
                        clicks[i].append((x * scale, y * scale, int(click.positive)))
        out_logits, out_targets, out_iou, owners = [], [], [], []
        for n in sorted({len(c) for c in clicks}):  # one decoder call per click count (same point tensor size)
            group = [i for i in range(len(objs)) if len(clicks[i]) == n]
            low_res, iou = self._decode_group(emb, objs, boxes, clicks, group)
            out_logits.append(low_res)
            out_iou.append(iou)
            out_targets.append(torch.stack([torch.from_numpy(objs[i][2]).float()[None] for i in group]))
            owners += [(objs[i][0], objs[i][1]) for i in group]
        return torch.cat(out_logits), torch.cat(out_targets), torch.cat(out_iou), owners

    def _decode_group(self, emb, objs, boxes, clicks, group: list[int]):
        """Decode objects ``group`` (all with the same number of clicks) with their boxes and clicks."""
        n = len(clicks[group[0]])
        points = None
        if n:
            pts = torch.tensor([[c[:2] for c in clicks[i]] for i in group], dtype=torch.float32)  # [G, n, 2]
            labels = torch.tensor([[c[2] for c in clicks[i]] for i in group], dtype=torch.int64)  # [G, n]
            points = (pts, labels)
        idx = torch.tensor([objs[i][0] for i in group])
        return self.sam.decode(emb[idx], points=points, boxes=boxes[group], multimask_output=False)

    def _kind(self, rng: np.random.Generator, validation: bool = False) -> str:
        mode = self.settings.prompt
        if mode == "click":  # validation: the box alone, as the session's first prediction
            return "box"
        if mode == "hybrid":
            return "box+point" if validation else ("box", "point", "box+point")[int(rng.integers(3))]
        return mode

    def _jittered_box(self, mask: np.ndarray, rng: np.random.Generator, jitter: int) -> np.ndarray:
        box = mask_box(mask, np.float32)
        if jitter > 0:
            # MedSAM's training jitter: each side moves outwards by 0..jitter px.
            box = box + rng.integers(0, jitter + 1, size=4) * np.array([-1, -1, 1, 1])
        box = np.clip(box, 0, LOW_RES - 1)
        return box.astype(np.float32)

    def _points(self, mask: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        n_pos, n_neg = max(1, self.settings.n_pos), self.settings.n_neg
        ys, xs = np.nonzero(mask)
        pick = rng.integers(len(xs), size=n_pos)
        pts = [np.stack([xs[pick], ys[pick]], axis=1)]
        labels = [np.ones(n_pos, dtype=np.int64)]
        if n_neg:
            nys, nxs = np.nonzero(~mask)
            pick = rng.integers(len(nxs), size=n_neg)
            pts.append(np.stack([nxs[pick], nys[pick]], axis=1))
            labels.append(np.zeros(n_neg, dtype=np.int64))
        return np.concatenate(pts).astype(np.float32), np.concatenate(labels)

    # -- validation --------------------------------------------------------------------------
    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Dice per class over all validation slices (sums of overlaps), in the low-res model frame.

        Prompts are tight boxes (or fixed-seed points), the same at every validation.
        """
        if not self.val_items:
            return {}
        rng = np.random.default_rng(12345)
        inter = dict.fromkeys(self.classes, 0.0)
        total = dict.fromkeys(self.classes, 0.0)
        bs = max(self.settings.batch_size, 16)
        for i in range(0, len(self.val_items), bs):
            items = self.val_items[i : i + bs]
            emb = self._embeddings(items, train=False)
            logits, targets, _, owners = self._decode_objects(emb, items, rng, validation=True)
            if logits is None:
                continue
            if owners is None:  # automatic mode: one multi-class label map per slice
                pred = labels_from_class_logits(logits)
                for b, it in enumerate(items):
                    for k, c in enumerate(self.classes):
                        p, g = pred[b] == k + 1, it.target == c
                        inter[c] += float((p & g).sum())
                        total[c] += float(p.sum() + g.sum())
                continue
            pred = logits[:, 0] > 0
            gt = targets[:, 0] > 0
            for j, (_, c) in enumerate(owners):
                inter[c] += float((pred[j] & gt[j]).sum())
                total[c] += float(pred[j].sum() + gt[j].sum())
        dsc = {f"val_dsc_{c}": (2 * inter[c] / total[c] if total[c] else float("nan")) for c in self.classes}
        values = [v for v in dsc.values() if not np.isnan(v)]
        return {"val_dsc": float(np.mean(values)) if values else 0.0, **dsc}

    # -- artifacts ---------------------------------------------------------------------------
    def save_best(self, out_dir: str | Path) -> None:
        save_adapter(
            self.sam,
            RunFolder(out_dir).adapter_dir,
            recipe=self.recipe,
            base=self.settings.base,
            extra={
                "task": "segment",
                "prompt": self.settings.prompt,
                "classes": self.classes,
                "slice_axis": self.settings.slice_axis,
                "class_prompt_tokens": (
                    int(self.sam.class_prompts.tokens.shape[1]) if hasattr(self.sam, "class_prompts") else 0
                ),
            },
        )

