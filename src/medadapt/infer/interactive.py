"""Interactive segmentation: a box (or an automatic-mode prediction), then corrective clicks.

An :class:`InteractiveSession` holds one image or volume. Its slices are encoded once (lazily, through
the predictor and its embedding cache); every later interaction only runs the mask decoder. Per object
it keeps the prompts (a box, clicks in order) and, per slice, the model-frame box the slice was last
decoded with and its low-resolution mask logits.

Decoding rules:

- **Start.** A 2D box is decoded on its image. A 3D box (CVPR24 ``x0, y0, z0, x1, y1, z1``) runs the
  CVPR24 box propagation of :func:`medadapt.infer.volume.segment_volume_boxes3d` (middle slice with the
  box, then outwards, each slice prompted with the box of its inner neighbour's mask), with the same
  masks. ``start_auto`` takes an automatic-mode adapter's prediction (per class) as the starting masks.
- **Ensembles** (several ``fit --prompt auto`` / 3D runs, :class:`~medadapt.infer.ensemble.EnsemblePredictor`)
  start from their averaged automatic prediction (``start_auto``; boxes are refused, as ``predict``
  refuses prompts for an ensemble), and the clicks are decoded by the first SAM-family member, the
  only kind of member that takes points. A 3D member reads the volume as loaded (``volume=``).
- **A click** on slice z re-decodes slice z with its box (if any), all clicks on slice z, and, as the
  dense mask prompt, the slice's previous low-res logits when ``mask_feedback=True`` (SAM's interactive
  training feeds the last prediction back the same way). It is off by default: LiteMedSAM was trained
  with box prompts only and never saw a mask prompt, and with it the clicks on prostate slices lowered
  DSC more than without it; turn it on for models trained with mask prompts.
- **Click reach (volumes).** A slice-wise model corrects only the slice it is clicked on, while an
  error region is 3D: a click on one slice of a ~30-slice object barely moves the 3D DSC. So a click
  at (x, y, z) is carried to the neighbouring slices z±1, z±2, ... up to ``click_reach`` slices each way
  (within the object's slice range), as long as the current mask at (x, y, z') is in the state the
  click corrects (background for a positive click, object for a negative one); each side stops at the
  first slice where it is not. Those slices are re-decoded with the carried click as if it had been
  made there. Only the click the user made is recorded (a replay carries it again, with the recorded
  ``click_reach``). ``click_reach=0`` corrects the clicked slice only. The default is the reach
  bench/bench_click_reach.py selects on the validation volumes of the fixed hippocampus split (0 without
  that selection; docs/interactive.md).
- **Click window.** With ``click_window=f`` a click changes its slice only within a square around it
  whose side is f times the longer side of the object's box on that slice (at least 8 pixels; an
  automatic start uses the box of the slice's current mask, or the whole image): the decoder's new
  mask is pasted there and the rest of the slice keeps its mask, as FocalClick's local refinement
  does. A model trained with boxes only may answer a point by redrawing the whole object, so a click
  meant to fix one boundary can undo the rest; the window bounds that. The default is the window
  bench/bench_click_reach.py selects on the validation cases of hippocampus, cardiac MRI and DRIVE
  (pooled); ``None`` lets a click change the whole slice.
  Neighbouring slices re-decoded by re-propagation are decoded whole.
- **Zoom-in.** With a ROI predictor (``roi_margin``, as ``predict --roi-margin``), every slice of an
  object started from a box is encoded in one crop around that box (a 3D box's footprint; per-slice
  boxes each crop their slice) grown by the margin, so a small object fills more of the model input.
  The crop is fixed per object and slice, so clicks re-decode on the same cached embedding (``predict``'s
  ROI propagation re-crops each slice around its neighbour's mask instead); the mask outside the crop is
  background. Automatic starts decode whole slices.
- **Re-propagation (3D box only). The masks of a 3D box form a chain from the middle slice outwards.
  After a click, the chain is walked outwards from z: a slice is re-decoded only when the box derived
  from its (changed) inner neighbour differs from the box it was last decoded with; the walk stops at
  the first slice whose box is unchanged (every slice beyond it would get its old inputs again) or at
  the end of the box's slice range; slices further out that a click was carried to are re-decoded
  too. Slices with clicks of their own keep them and their mask prompt.
  Objects started from 2D boxes per slice, or from an automatic prediction, have independent slices:
  a click changes its slice only. On an automatic start, a slice's first click adds the box of the
  slice's automatic mask (+3 px, as the CVPR24 propagation boxes) to the clicks, so that a box-trained
  decoder keeps the object; an empty slice gets the clicks alone.

Bad input raises :class:`~medadapt.errors.MedadaptError`: NaN coordinates, clicks outside the image,
on a slice outside the object's box range, or a click file recorded on another image. Positive clicks
outside a 3D box's slice range are refused rather than growing the object: the CVPR 2025 protocol's
boxes are the tight boxes of the label, so no missed voxel lies outside them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from medadapt.data.clicks import ClickRecord, ClickSequence, ObjectRecord, array_sha256
from medadapt.errors import MedadaptError
from medadapt.infer.ensemble import EnsemblePredictor
from medadapt.infer.predictor import SamPredictor, class_labels
from medadapt.infer.volume import SliceEmbeddings, box_from_previous
from medadapt.io.volumes import Volume
from medadapt.models.preprocess import postprocess_logits

CLICK_REACH = 0  # slices a click is carried to on each side: bench/bench_click_reach.py's selection (0 without one)
CLICK_WINDOW: float | None = 0.25  # a click's local window (x the box side): bench_click_reach.py's pooled choice
MIN_WINDOW_PX = 8


@dataclass(frozen=True)
class Click:
    """A click at pixel (``x`` column, ``y`` row) of slice ``z`` (0 for a 2D image)."""

    x: float
    y: float
    z: int = 0
    positive: bool = True


@dataclass
class ObjectState:
    """One object's prompts and its current masks (slices first)."""

    object_id: int
    value: int  # label value painted for it
    start: str  # "box3d" | "box2d" | "auto"
    box: np.ndarray | None  # (4,) or (6,) original pixels; None for per-slice boxes and automatic starts
    z_range: tuple[int, int]  # slices that may be clicked, inclusive
    mask: np.ndarray  # [D, H, W] bool
    clicks: list[Click] = field(default_factory=list)
    carried: list[Click] = field(default_factory=list)  # clicks carried to neighbouring slices (click_reach)
    frame_boxes: dict[int, np.ndarray | None] = field(default_factory=dict)  # per slice: last model-frame box
    low_res: dict[int, torch.Tensor] = field(default_factory=dict)  # per slice: [1, 1, s, s] logits
    slice_boxes: dict[int, np.ndarray] = field(default_factory=dict)  # box2d start: original-pixel box per slice
    embeddings: SliceEmbeddings | None = None  # zoom-in: the object's own crops (None: the session's slices)

    @property
    def z_mid(self) -> int:  # CVPR24: int((z1 - z0) / 2 + z0)
        return int((self.box[5] - self.box[2]) / 2 + self.box[2])


def check_click_window(value: float | str | None) -> float | None:
    """``click_window`` as a positive number (a fraction of the box side), or None (off; also the text "none",
    as the command line writes it)."""
    if value is None or (isinstance(value, str) and value.strip().lower() == "none"):
        return None
    try:
        f = float(value)
    except (TypeError, ValueError):
        f = math.nan
    if not (math.isfinite(f) and f > 0):
        raise MedadaptError(f"click_window must be a positive number (times the box side), got {value!r}.",
                            fix="e.g. 0.25, or none (None in Python) to let a click change the whole slice.")
    return f


class InteractiveSession:
    """One image (``slice_axis=None``) or volume (slices along ``slice_axis``) being segmented by clicks."""

    def __init__(self, predictor: SamPredictor, image: np.ndarray, *, slice_axis: int | None = None,
                 name: str = "image", mask_feedback: bool = False, click_reach: int = CLICK_REACH,
                 click_window: float | None = CLICK_WINDOW, volume: Volume | None = None):
        self.ensemble: EnsemblePredictor | None = None
        if isinstance(predictor, EnsemblePredictor):
            sam = [m for m in predictor.members if isinstance(m, SamPredictor)]
            if not sam:
                raise MedadaptError("this ensemble has no SAM-family member, so nothing can decode clicks.",
                                    fix="add a `fit --prompt auto` run to the ensemble, or pass one --adapter.")
            self.ensemble, predictor = predictor, sam[0]
        elif not hasattr(predictor, "model"):
            raise MedadaptError("interactive segmentation needs a SAM-family model.",
                                fix="pass --adapter RUN of a SAM-family fit (or none for the zero-shot model).")
        self.predictor = predictor
        self.source = volume  # the volume as loaded, for an ensemble's 3D members
        self.image = np.asarray(image)
        self.name = name
        self.slice_axis = slice_axis
        self.mask_feedback = mask_feedback
        if int(click_reach) != click_reach or click_reach < 0:
            raise MedadaptError(f"click_reach must be a whole number of slices >= 0, got {click_reach}.",
                                fix="use 0 to correct the clicked slice only.")
        self.click_reach = int(click_reach)
        self.click_window = check_click_window(click_window)
        if slice_axis is None:
            if self.image.ndim not in (2, 3) or (self.image.ndim == 3 and self.image.shape[2] not in (1, 3, 4)):
                raise MedadaptError(f"'{name}' is not a 2D image (shape {self.image.shape}).",
                                    fix="give slice_axis for a volume.")
            self.volume = self.image[None]
        else:
            if self.image.ndim != 3:
                raise MedadaptError(f"'{name}' is not a volume (shape {self.image.shape}).",
                                    fix="leave slice_axis out for a 2D image.")
            self.volume = np.moveaxis(self.image, slice_axis, 0)
        self.depth = self.volume.shape[0]
        self.hw = tuple(self.volume.shape[1:3])
        self.embeddings = SliceEmbeddings(predictor, self.volume)
        self.objects: dict[int, ObjectState] = {}
        self.sha256 = array_sha256(self.image)
        self.decoded_slices: list[int] = []  # slices the last interaction re-decoded (in order)
        self.slices_decoded = 0  # decoder calls (one per slice and object) since the session began

    # -- starting masks --------------------------------------------------------------------------
    def add_box(self, box: Sequence[float], *, value: int | None = None, object_id: int | None = None) -> int:
        """Start an object from a box (2D ``x0, y0, x1, y1``; volumes: the 3D box); returns its id."""
        self._refuse_boxes_for_ensemble()
        box = self._check_box(box)
        oid = self._new_id(object_id)
        self.decoded_slices = []
        if len(box) == 4:
            z0 = z1 = 0
            if self.slice_axis is not None:
                raise MedadaptError(f"a 2D box [x0, y0, x1, y1] was given for the volume '{self.name}'.",
                                    fix="give the 3D box [x0, y0, z0, x1, y1, z1], or use add_slice_boxes.")
            obj = ObjectState(oid, value or oid, "box2d", box, (0, 0), self._empty())
            obj.slice_boxes[0] = box
        else:
            z0, z1 = int(box[2]), min(int(box[5]), self.depth - 1)
            obj = ObjectState(oid, value or oid, "box3d", box, (z0, z1), self._empty())
        footprint = box if len(box) == 4 else box[[0, 1, 3, 4]]
        obj.embeddings = self._crops(lambda z: footprint)
        self.objects[oid] = obj
        self._embeddings(obj).prepare(range(z0, z1 + 1))
        if obj.start == "box2d":
            self._redecode(obj, 0, self._frame_box(obj, 0))
        else:
            self._propagate(obj, obj.z_mid, up=True, down=True, force=True)
        return oid

    def add_slice_boxes(self, boxes: dict[int, Sequence[float]], *, value: int | None = None,
                        object_id: int | None = None) -> int:
        """Start an object from a 2D box on each of some slices (``{z: [x0, y0, x1, y1]}``)."""
        self._refuse_boxes_for_ensemble()
        if not boxes:
            raise MedadaptError(f"no slice boxes were given for an object of '{self.name}'.")
        checked = {int(z): self._check_box(b, dims=4) for z, b in boxes.items()}
        for z in checked:
            self._check_slice(z)
        oid = self._new_id(object_id)
        obj = ObjectState(oid, value or oid, "box2d", None, (min(checked), max(checked)), self._empty(),
                          slice_boxes=checked)
        obj.embeddings = self._crops(checked.__getitem__)
        self.objects[oid] = obj
        self.decoded_slices = []
        self._embeddings(obj).prepare(sorted(checked))
        for z in sorted(checked):
            self._redecode(obj, z, self._frame_box(obj, z))
        return oid

    def start_auto(self) -> list[int]:
        """Automatic mode: every class of the adapter becomes an object, its prediction the starting mask."""
        p = self.ensemble or self.predictor
        if not p.is_automatic:
            raise MedadaptError("start_auto needs an adapter trained with --prompt auto.",
                                fix="pass --adapter RUN of a `medadapt fit --prompt auto` run, or start from boxes.")
        if self.ensemble is not None:
            labels, low_res = self._ensemble_labels(), None  # no single low-res mask to feed back
        else:
            self.embeddings.prepare(range(self.depth))
            low_res, labels = [], np.zeros((self.depth, *self.hw), dtype=np.uint16)
            for z in range(self.depth):
                emb, tf = self.embeddings.get(z)
                with torch.no_grad():
                    lr, _ = p.model.class_prompts.decode(p.model, emb[None])
                low_res.append(lr.float())
                labels[z] = class_labels(postprocess_logits(lr.float(), tf)[0], p.classes)
            labels = p.postprocess_auto(labels)
        ids = []
        for i, c in enumerate(p.classes):
            oid = self._new_id(None)
            obj = ObjectState(oid, int(c), "auto", None, (0, self.depth - 1), labels == c)
            if low_res is not None:
                obj.low_res = {z: low_res[z][:, i : i + 1] for z in range(self.depth)}
            self.objects[oid] = obj
            ids.append(oid)
        self.decoded_slices = list(range(self.depth))
        self.slices_decoded += self.depth
        return ids

    # -- clicks ------------------------------------------------------------------------------------
    def click(self, object_id: int, x: float, y: float, z: int = 0, positive: bool = True) -> list[int]:
        """Add a click to an object and update its masks; returns the slices re-decoded."""
        obj = self._object(object_id)
        c = self._check_click(obj, x, y, z, positive)
        carried = self._carry(obj, c)
        obj.clicks.append(c)
        obj.carried += carried
        self.decoded_slices = []
        self._update(obj, {c.z} | {k.z for k in carried})
        return list(self.decoded_slices)

    # -- results -----------------------------------------------------------------------------------
    def mask(self, object_id: int) -> np.ndarray:
        """One object's mask in the image's own axis order."""
        return self._to_image_axes(self._object(object_id).mask)

    def labels(self) -> np.ndarray:
        """uint16 label map of every object (later objects overwrite earlier ones, as the official code)."""
        out = np.zeros((self.depth, *self.hw), dtype=np.uint16)
        for obj in self.objects.values():
            out[obj.mask] = obj.value
        return self._to_image_axes(out)

    def record(self) -> ClickSequence:
        """The session's prompts as a click file (see :mod:`medadapt.data.clicks`)."""
        objects = []
        for obj in self.objects.values():
            if obj.start == "box2d" and obj.box is None:
                raise MedadaptError("objects started from per-slice boxes cannot be saved as a click file yet.",
                                    fix="start volumes from a 3D box to record the session.")
            objects.append(ObjectRecord(
                object=obj.object_id, value=obj.value, start="auto" if obj.start == "auto" else "box",
                box=None if obj.box is None else [float(v) for v in obj.box],
                clicks=[ClickRecord(x=c.x, y=c.y, z=c.z, positive=c.positive) for c in obj.clicks]))
        return ClickSequence(image=self.name, sha256=self.sha256, shape=list(self.image.shape),
                             slice_axis=self.slice_axis, mask_feedback=self.mask_feedback,
                             click_reach=self.click_reach, click_window=self.click_window,
                             roi_margin=self.predictor.roi_margin, objects=objects)

    def replay(self, sequence: ClickSequence, *, path=None) -> None:
        """Apply a recorded click file to this (fresh) session: boxes first, then each object's clicks."""
        sequence.check_image(self.image, path=path)
        if sequence.slice_axis != self.slice_axis:
            raise MedadaptError(f"the clicks were recorded with slice axis {sequence.slice_axis}, "
                                f"this session cuts along {self.slice_axis}.", path=path,
                                fix="replay with the slice axis the clicks were recorded with.")
        if sequence.roi_margin != self.predictor.roi_margin:
            def name(m):
                return "whole slices" if m is None else f"ROI margin {m:g}"
            raise MedadaptError(f"the clicks were recorded with {name(sequence.roi_margin)}, this model segments "
                                f"with {name(self.predictor.roi_margin)}.", path=path,
                                fix="replay with the zoom-in setting the clicks were made with (--roi-margin).")
        self.mask_feedback = sequence.mask_feedback  # the same decoder inputs as when recorded
        self.click_reach = sequence.click_reach
        self.click_window = sequence.click_window
        if any(o.start == "auto" for o in sequence.objects):
            auto_ids = self.start_auto()
            by_value = {self.objects[i].value: i for i in auto_ids}
        for rec in sequence.objects:
            if rec.start == "auto":
                if rec.value not in by_value:
                    raise MedadaptError(f"the automatic-mode model has no class {rec.value}.", path=path)
                oid = by_value[rec.value]
            else:
                if rec.box is None:
                    raise MedadaptError(f"object {rec.object} has neither a box nor start 'auto'.", path=path)
                oid = self.add_box(rec.box, value=rec.value, object_id=rec.object)
            for c in rec.clicks:
                self.click(oid, c.x, c.y, c.z, c.positive)

    # -- internals ---------------------------------------------------------------------------------
    def _ensemble_labels(self) -> np.ndarray:
        """The ensemble's automatic label map, slices first."""
        if self.slice_axis is None:
            return self.ensemble.segment_auto(self.image)[None]
        labels = self.ensemble.segment_volume_auto(self.image, slice_axis=self.slice_axis, volume=self.source)
        return np.moveaxis(labels, self.slice_axis, 0)

    def _refuse_boxes_for_ensemble(self) -> None:
        if self.ensemble is not None:
            raise MedadaptError("an ensemble segments without prompts: its session starts from its automatic "
                                "prediction, then takes clicks.", fix="use start_auto (simulate --start auto).")

    def _empty(self) -> np.ndarray:
        return np.zeros((self.depth, *self.hw), dtype=bool)

    def _crops(self, around) -> SliceEmbeddings | None:
        """An object's own slice embeddings in crops around ``around(z)`` (None without zoom-in)."""
        return SliceEmbeddings(self.predictor, self.volume, around=around) if self.predictor.uses_roi else None

    def _embeddings(self, obj: ObjectState) -> SliceEmbeddings:
        return self.embeddings if obj.embeddings is None else obj.embeddings

    def _to_image_axes(self, arr: np.ndarray) -> np.ndarray:
        return arr[0] if self.slice_axis is None else np.moveaxis(arr, 0, self.slice_axis)

    def _new_id(self, object_id: int | None) -> int:
        oid = int(object_id) if object_id is not None else max(self.objects, default=0) + 1
        if oid in self.objects:
            raise MedadaptError(f"object {oid} already exists in '{self.name}'.")
        return oid

    def _object(self, object_id: int) -> ObjectState:
        if object_id not in self.objects:
            raise MedadaptError(f"'{self.name}' has no object {object_id} (objects: {sorted(self.objects)}).",
                                fix="start the object with a box (or start_auto) before clicking on it.")
        return self.objects[object_id]

    def _check_box(self, box, dims: int | None = None) -> np.ndarray:
        b = np.asarray(box, dtype=np.float64).reshape(-1)
        if b.size not in ((dims,) if dims else (4, 6)) or not np.isfinite(b).all():
            raise MedadaptError(f"bad box {list(np.asarray(box).reshape(-1))} for '{self.name}': "
                                "it needs 4 (2D) or 6 (3D) finite numbers.",
                                fix="give x0, y0, x1, y1 (volumes: x0, y0, z0, x1, y1, z1) in pixels.")
        h, w = self.hw
        x0, y0, x1, y1 = (b[0], b[1], b[2], b[3]) if b.size == 4 else (b[0], b[1], b[3], b[4])
        bad = not (0 <= x0 <= x1 <= w - 1 and 0 <= y0 <= y1 <= h - 1)
        if b.size == 6:
            bad = bad or not (0 <= b[2] <= b[5] <= self.depth - 1)
        if bad:
            raise MedadaptError(f"box {b.tolist()} lies outside '{self.name}' "
                                f"({w} x {h} pixels{'' if b.size == 4 else f', {self.depth} slices'}).",
                                fix="give box corners inside the image, x0 <= x1 and y0 <= y1.")
        return b

    def _check_slice(self, z) -> None:
        if not 0 <= z < self.depth:
            raise MedadaptError(f"slice {z} is outside '{self.name}' ({self.depth} slice(s)).",
                                fix=f"give a slice index from 0 to {self.depth - 1}.")

    def _check_click(self, obj: ObjectState, x, y, z, positive) -> Click:
        try:
            x, y = float(x), float(y)
        except (TypeError, ValueError):
            raise MedadaptError(f"click coordinates must be numbers, got x={x!r}, y={y!r}.") from None
        if not (math.isfinite(x) and math.isfinite(y)):
            raise MedadaptError(f"click coordinates must be finite numbers, got x={x}, y={y}.",
                                fix="give pixel coordinates, not NaN or infinity.")
        if z != int(z):
            raise MedadaptError(f"the slice index of a click must be an integer, got {z}.")
        z = int(z)
        self._check_slice(z)
        h, w = self.hw
        if not (0 <= x <= w - 1 and 0 <= y <= h - 1):
            raise MedadaptError(f"click ({x:g}, {y:g}) lies outside '{self.name}' ({w} x {h} pixels).",
                                fix=f"give x in 0..{w - 1} and y in 0..{h - 1}.")
        z0, z1 = obj.z_range
        if obj.start == "box2d" and obj.box is None and z not in obj.slice_boxes or not z0 <= z <= z1:
            raise MedadaptError(f"click on slice {z} is outside object {obj.object_id}'s box range "
                                f"(slices {z0}..{z1}).", fix="click on a slice the object's box covers, or enlarge the box.")
        return Click(x, y, z, bool(positive))

    def _frame_box(self, obj: ObjectState, z: int) -> np.ndarray | None:
        """The model-frame box slice ``z`` is decoded with (None: no box)."""
        _, tf = self._embeddings(obj).get(z)
        if obj.start == "auto":  # the box of the automatic mask on this slice (None when it is empty)
            return box_from_previous(obj.mask[z], obj.value, tf)
        if obj.start == "box2d":
            return tf.apply_boxes(obj.slice_boxes[z][None])[0]
        mid_box = np.array([obj.box[0], obj.box[1], obj.box[3], obj.box[4]], dtype=np.float64)
        if z == obj.z_mid:
            return tf.apply_boxes(mid_box[None])[0]  # official resize_box_to_256 (truncating)
        inner = z - 1 if z > obj.z_mid else z + 1
        box = box_from_previous(obj.mask[inner], obj.object_id, tf)
        if box is not None:
            return box
        if z > obj.z_mid:
            return tf.apply_boxes(mid_box[None])[0]
        return tf.scale_boxes(mid_box[None])[0]  # the official code's side: not truncated

    @torch.no_grad()
    def _redecode(self, obj: ObjectState, z: int, frame_box: np.ndarray | None, feedback: bool = False) -> None:
        emb, tf = self._embeddings(obj).get(z)
        clicks = [c for c in obj.clicks + obj.carried if c.z == z]
        points = None
        if clicks:
            coords = tf.apply_points(np.array([[c.x, c.y] for c in clicks], dtype=np.float32))[None]
            labels = torch.tensor([[int(c.positive) for c in clicks]])
            points = (torch.as_tensor(coords), labels)
        boxes = None if frame_box is None else torch.as_tensor(np.asarray(frame_box, np.float32)[None])
        masks = obj.low_res.get(z) if (feedback or clicks) and self.mask_feedback else None
        if points is None and boxes is None and masks is None:
            return
        image = None if masks is not None else self._embeddings(obj).decoder_image(z)
        extra = {} if image is None else {"decoder_image": image}  # the same masks, sooner on the next click
        low_res, _ = self.predictor.model.decode(emb[None], points=points, boxes=boxes, masks=masks,
                                                 multimask_output=False, **extra)
        low_res = low_res.float()
        obj.low_res[z] = low_res
        obj.frame_boxes[z] = frame_box
        new = (postprocess_logits(low_res, tf)[0, 0] > 0).numpy()
        if clicks and self.click_window is not None:
            new = self._within_windows(obj, z, clicks, new)
        obj.mask[z] = new
        self.decoded_slices.append(z)
        self.slices_decoded += 1

    def _within_windows(self, obj: ObjectState, z: int, clicks: list[Click], new: np.ndarray) -> np.ndarray:
        """Slice ``z``'s mask with ``new`` pasted only inside each click's window (the click window rule)."""
        x0, y0, x1, y1 = self._slice_box(obj, z)
        half = max(MIN_WINDOW_PX, self.click_window * max(x1 - x0, y1 - y0)) / 2
        h, w = self.hw
        out = obj.mask[z].copy()
        for c in clicks:
            r0, r1 = max(0, int(math.floor(c.y - half))), min(h, int(math.ceil(c.y + half)) + 1)
            c0, c1 = max(0, int(math.floor(c.x - half))), min(w, int(math.ceil(c.x + half)) + 1)
            out[r0:r1, c0:c1] = new[r0:r1, c0:c1]
        return out

    def _slice_box(self, obj: ObjectState, z: int) -> tuple[float, float, float, float]:
        """The object's box on slice ``z`` in original pixels (x0, y0, x1, y1)."""
        if obj.start == "box2d":
            b = obj.slice_boxes[z] if z in obj.slice_boxes else obj.box
            return float(b[0]), float(b[1]), float(b[2]), float(b[3])
        if obj.start == "box3d":
            return float(obj.box[0]), float(obj.box[1]), float(obj.box[3]), float(obj.box[4])
        rows, cols = np.nonzero(obj.mask[z])  # automatic start: the slice's current mask, else the image
        if rows.size == 0:
            return 0.0, 0.0, float(self.hw[1] - 1), float(self.hw[0] - 1)
        return float(cols.min()), float(rows.min()), float(cols.max()), float(rows.max())

    def _carry(self, obj: ObjectState, c: Click) -> list[Click]:
        """The click carried to slices z±1..±click_reach while the mask there is in the state it corrects."""
        if self.click_reach == 0 or self.slice_axis is None:
            return []
        z0, z1 = obj.z_range
        col, row = min(int(round(c.x)), self.hw[1] - 1), min(int(round(c.y)), self.hw[0] - 1)
        out = []
        for step in (1, -1):
            for k in range(1, self.click_reach + 1):
                zz = c.z + step * k
                allowed = z0 <= zz <= z1 and (obj.start != "box2d" or obj.box is not None or zz in obj.slice_boxes)
                if not allowed or obj.mask[zz, row, col] == c.positive:  # already right there
                    break
                out.append(Click(c.x, c.y, zz, c.positive))
        return out

    def _update(self, obj: ObjectState, dirty: set[int]) -> None:
        """Re-decode the slices in ``dirty`` (they have new clicks), then what their change affects.

        Independent slices (2D boxes per slice, automatic starts) are each decoded with the box they were
        last decoded with. A 3D box's chain is walked outwards from the middle slice on each side that
        holds a dirty slice: a slice is re-decoded when it is dirty or the box its inner neighbour gives
        has changed; past the last dirty slice the walk stops at the first unchanged box.
        """
        if obj.start != "box3d":
            for z in sorted(dirty):
                box = obj.frame_boxes.get(z) if z in obj.frame_boxes else self._frame_box(obj, z)
                self._redecode(obj, z, box, feedback=True)
            return
        mid, (z0, z1) = obj.z_mid, obj.z_range
        if mid in dirty:
            self._redecode(obj, mid, self._frame_box(obj, mid), feedback=True)
        for step in (1, -1):
            side = [z for z in dirty if (z - mid) * step > 0]
            if not side and mid not in dirty:
                continue
            last = max(side, key=lambda z: (z - mid) * step) if side else mid
            zz = min(side, key=lambda z: (z - mid) * step) if mid not in dirty else mid + step
            while z0 <= zz <= z1:
                box = self._frame_box(obj, zz)
                old = obj.frame_boxes.get(zz)
                if zz in dirty or old is None or not np.array_equal(old, box):
                    self._redecode(obj, zz, box, feedback=zz in dirty)
                elif (zz - last) * step > 0:
                    break  # unchanged, and no dirty slice further out: every later slice keeps its inputs
                zz += step

    def _propagate(self, obj: ObjectState, z: int, *, up: bool, down: bool, force: bool = False) -> None:
        """Walk the 3D box's chain outwards from slice ``z`` (decoded already unless ``force``)."""
        z0, z1 = obj.z_range
        if force:
            self._redecode(obj, z, self._frame_box(obj, z))
        for step, go in ((1, up), (-1, down)):
            zz = z + step
            while go and z0 <= zz <= z1:
                box = self._frame_box(obj, zz)
                old = obj.frame_boxes.get(zz)
                if not force and old is not None and np.array_equal(old, box):
                    break
                self._redecode(obj, zz, box)
                zz += step
