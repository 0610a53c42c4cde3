"""The studio's working state: the model, the open cases and their interactive sessions.

Each open case keeps its image (read once, normalised once), an
:class:`~medadapt.infer.interactive.InteractiveSession` whose slice embeddings stay cached, and the list
of interactions (boxes and clicks) that made its masks. Undo and redo rebuild the session from that list
on the same cached embeddings: only the mask decoder runs again. The few most recently used cases stay
open; the embeddings of closed ones stay in the on-disk embedding cache under ``DATA_DIR/.medadapt-studio``.

Brush and eraser strokes are interactions too (undone like the others); they paint over the model's
masks, so a later click never undoes a hand correction.

Points arrive in world millimetres (RAS, as the viewer reports them) or voxel indices of the image file
and are mapped to the session's slices here. One lock serialises every model call (the model is shared
and the CPU has few cores); each case has its own save lock, so two tabs saving the same case write one
complete file after the other (atomic writes, the last one wins).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from medadapt.data.intensity import normalise_for_sam
from medadapt.errors import MedadaptError
from medadapt.infer.interactive import InteractiveSession
from medadapt.io.volumes import Volume
from medadapt.studio.cases import CaseFolder, StudioCase, plane_of, slice_axis_of


@dataclass
class OpenCase:
    """A case in the studio: its image, its session and the interactions that made its masks."""

    case: StudioCase
    volume: Volume
    image: np.ndarray  # uint8, normalised for the model, the file's axis order
    slice_axis: int
    plane: str
    session: InteractiveSession
    saved: np.ndarray | None  # the label file's array when the case was opened or last saved
    ops: list[dict] = field(default_factory=list)
    undone: list[dict] = field(default_factory=list)
    version: int = 0  # bumped by every change of the masks
    label_stamp: tuple | None = None  # the label file's (mtime_ns, size) when read or written here

    def labels(self) -> np.ndarray:
        """What the page shows and a save writes: the saved label, with each class the session has objects
        for replaced by the session's masks (classes without objects keep their saved voxels)."""
        out = np.zeros(self.image.shape, np.uint16) if self.saved is None else self.saved.astype(np.uint16)
        objects = list(self.session.objects.values())
        for value in {o.value for o in objects}:
            out[out == value] = 0
        for obj in objects:
            out[self.session.mask(obj.object_id)] = obj.value
        flat = out.reshape(-1)
        for op in self.ops:  # brush and eraser strokes, over the model's masks, in order
            if op["op"] == "paint":
                flat[op["voxels"]] = op["value"]
        return out


class Studio:
    """Cases of a :class:`CaseFolder` and the model that segments them (built on first use)."""

    def __init__(self, folder: CaseFolder, predictor_factory: Callable[[], object], *, max_open: int = 4,
                 adapter: str | None = None):
        self.folder = folder
        self._factory = predictor_factory
        self._predictor = None
        self.adapter = adapter  # the name of the adapter in use (None: the zero-shot model)
        self.encoder_engine = "torch"  # what encodes the slices (set by whoever builds the predictors)
        self.max_open = max_open
        self._open: OrderedDict[str, OpenCase] = OrderedDict()
        self._model_lock = threading.RLock()
        self._locks_lock = threading.Lock()
        self._save_locks: dict[str, threading.Lock] = {}

    # -- model and cases ----------------------------------------------------------------------
    @property
    def model_lock(self) -> threading.RLock:
        """Held for every model call (interactions, and background work such as the case suggestion)."""
        return self._model_lock

    @property
    def predictor(self):
        with self._model_lock:
            if self._predictor is None:
                self._predictor = self._factory()
            return self._predictor

    def switch(self, predictor, adapter: str | None) -> None:
        """Use ``predictor`` from the next interaction on (never during one). Open cases keep their session
        (and its model) until they are saved; cases opened later start with the new model."""
        with self._model_lock:
            self._predictor = predictor
            self.adapter = adapter

    def _fresh_session(self, oc: OpenCase) -> InteractiveSession:
        """A new session for an open case, on the old session's embeddings when the model is the same."""
        session = self._session(oc.image, oc.slice_axis, oc.case.key)
        if oc.session.predictor is session.predictor:
            session.embeddings = oc.session.embeddings
        return session

    def case_list(self) -> list[dict]:
        """Every case with its status: labelled (a label file), predicted (unsaved masks), untouched."""
        out = []
        for key, case in self.folder.cases.items():
            oc = self._open.get(key)
            status = ("labelled" if self.folder.has_label(case)
                      else "predicted" if oc is not None and (oc.session.objects or oc.ops) else "untouched")
            out.append({"key": key, "folder": case.folder, "image": case.image.name, "status": status,
                        "unsaved": bool(oc is not None and oc.ops)})
        return out

    def open(self, key: str) -> OpenCase:
        """The open case ``key`` (opened now if needed); ``KeyError`` for a key the folder lacks."""
        case = self.folder.case(key)
        with self._model_lock:
            if key in self._open:
                self._open.move_to_end(key)
                return self._open[key]
            volume = self.folder.read_image(case)
            axis = slice_axis_of(volume)
            image = normalise_for_sam(volume.array, self.folder.modality, is_volume=not case.is_2d)
            session = self._session(image, axis, key)
            oc = OpenCase(case, volume, image, axis, plane_of(volume, axis), session, self.folder.read_label(case),
                          label_stamp=self._stamp(case))
            if getattr(self.predictor, "is_automatic", False) and oc.saved is None:
                session.start_auto()  # an automatic-mode adapter: the case opens with its prediction
            self._open[key] = oc
            # close the least recently used cases without unsaved work (never one with unsaved work)
            clean = [k for k, o in self._open.items() if not o.ops and k != key]
            for old in clean[: max(0, len(self._open) - self.max_open)]:
                del self._open[old]
            return oc

    def info(self, key: str) -> dict:
        oc = self.open(key)
        image = f"{key}.nii.gz" if oc.case.is_2d else oc.case.image.name  # 2D: served as a one-slice NIfTI
        return {"key": key, "image": image, "is_2d": oc.case.is_2d, "shape": list(oc.image.shape),
                "slice_axis": oc.slice_axis, "plane": oc.plane,
                "spacing": [float(s) for s in oc.volume.spacing], "labelled": oc.saved is not None,
                "classes": {str(k): v for k, v in self.folder.classes.items()}, **self._state(oc)}

    def _session(self, image: np.ndarray, axis: int, key: str) -> InteractiveSession:
        return InteractiveSession(self.predictor, image, slice_axis=axis, name=key)

    def _state(self, oc: OpenCase) -> dict:
        objects = [{"object": o.object_id, "value": o.value, "clicks": len(o.clicks)}
                   for o in oc.session.objects.values()]
        return {"version": oc.version, "objects": objects, "can_undo": bool(oc.ops), "can_redo": bool(oc.undone)}

    # -- coordinates ------------------------------------------------------------------------------
    def voxel(self, oc: OpenCase, point: Sequence[float], space: str) -> np.ndarray:
        """A point (world mm, RAS, or voxel indices) as integer voxel indices of the image, checked."""
        p = np.asarray(point, dtype=np.float64).reshape(-1)
        if p.size != 3 or not np.isfinite(p).all():
            raise MedadaptError(f"a point needs 3 finite coordinates, got {list(point)}.")
        if space == "mm":
            p = (np.linalg.inv(oc.volume.affine) @ np.append(p, 1.0))[:3]
        elif space != "voxel":
            raise MedadaptError(f"unknown coordinate space '{space}'.", fix="use 'mm' or 'voxel'.")
        v = np.rint(p).astype(np.int64)
        shape = np.asarray(oc.image.shape)
        if (v < 0).any() or (v >= shape).any():
            raise MedadaptError(f"point {p.round(2).tolist()} (voxel {v.tolist()}) lies outside the image "
                                f"(shape {shape.tolist()}).", fix="click inside the image.")
        return v

    def _in_plane(self, oc: OpenCase, v: np.ndarray) -> tuple[float, float, int]:
        """Voxel indices → the session's (x column, y row, z slice)."""
        a, b = (i for i in range(3) if i != oc.slice_axis)
        return float(v[b]), float(v[a]), int(v[oc.slice_axis])

    # -- interactions ------------------------------------------------------------------------------
    def box(self, key: str, corner0, corner1, *, value: int, space: str = "mm", depth: int = 0) -> dict:
        """A box from two opposite corners drawn on one slice (``depth`` more slices on each side): a new
        object of class ``value``."""
        value = self._class(value)
        with self._model_lock:
            oc = self.open(key)
            (x0, y0, z0), (x1, y1, z1) = (self._in_plane(oc, self.voxel(oc, c, space)) for c in (corner0, corner1))
            if x0 == x1 or y0 == y1:
                raise MedadaptError(f"the box is flat on the {oc.plane} slices of this case.",
                                    fix=f"draw the box on the {oc.plane} view.")
            depth = max(0, int(depth))
            top = oc.image.shape[oc.slice_axis] - 1
            za, zb = max(0, min(z0, z1) - depth), min(top, max(z0, z1) + depth)
            op = {"op": "box", "box": [min(x0, x1), min(y0, y1), za, max(x0, x1), max(y0, y1), zb], "value": value}
            self._apply(oc, op)
            return self._done(oc, op)

    def click(self, key: str, point, *, positive: bool, value: int, space: str = "mm",
              object_id: int | None = None) -> dict:
        """A positive / negative click for object ``object_id`` (default: the newest object of class ``value``)."""
        value = self._class(value)
        with self._model_lock:
            oc = self.open(key)
            x, y, z = self._in_plane(oc, self.voxel(oc, point, space))
            if object_id is None:
                ids = [o.object_id for o in oc.session.objects.values() if o.value == value]
                if not ids:
                    raise MedadaptError(f"class {value} has no object on this case yet.",
                                        fix="draw a box around the structure first, then click to correct it.")
                object_id = ids[-1]
            op = {"op": "click", "object": int(object_id), "x": x, "y": y, "z": z, "positive": bool(positive)}
            self._apply(oc, op)
            return self._done(oc, op)

    def paint(self, key: str, points, *, value: int, radius: float = 2.0, space: str = "mm") -> dict:
        """A brush stroke (``value`` a class) or an eraser stroke (``value`` 0): a disk of ``radius`` voxels
        around each point, on its slice."""
        value = 0 if value == 0 else self._class(value)
        if not 0 <= radius <= 64:
            raise MedadaptError(f"a brush radius of {radius} voxels is outside 0..64.")
        with self._model_lock:
            oc = self.open(key)
            a, b = (i for i in range(3) if i != oc.slice_axis)
            r = int(np.ceil(radius))
            da, db = np.mgrid[-r : r + 1, -r : r + 1]
            disk = np.stack([da[da**2 + db**2 <= radius**2 + 1e-9], db[da**2 + db**2 <= radius**2 + 1e-9]], 1)
            hit = []
            for p in points:
                v = self.voxel(oc, p, space)
                idx = np.repeat(v[None], len(disk), 0)
                idx[:, a] += disk[:, 0]
                idx[:, b] += disk[:, 1]
                keep = ((idx >= 0) & (idx < oc.image.shape)).all(1)
                hit.append(np.ravel_multi_index(tuple(idx[keep].T), oc.image.shape))
            voxels = np.unique(np.concatenate(hit)) if hit else np.zeros(0, np.int64)
            op = {"op": "paint", "voxels": voxels, "value": value}
            self._apply(oc, op)
            return {**self._done(oc, None), "painted": int(voxels.size)}

    def undo(self, key: str) -> dict:
        with self._model_lock:
            oc = self.open(key)
            if not oc.ops:
                raise MedadaptError("there is nothing to undo.")
            oc.undone.append(oc.ops.pop())
            self._rebuild(oc)
            return self._done(oc, None)

    def redo(self, key: str) -> dict:
        with self._model_lock:
            oc = self.open(key)
            if not oc.undone:
                raise MedadaptError("there is nothing to redo.")
            op = oc.undone.pop()
            self._apply(oc, op, keep_redo=True)
            return self._done(oc, None)

    def _apply(self, oc: OpenCase, op: dict, keep_redo: bool = False) -> None:
        self._run(oc.session, op)
        oc.ops.append(op)
        if not keep_redo:
            oc.undone.clear()

    @staticmethod
    def _run(session: InteractiveSession, op: dict) -> None:
        if op["op"] == "box":
            session.add_box(op["box"], value=op["value"])
        elif op["op"] == "click":
            session.click(op["object"], op["x"], op["y"], op["z"], positive=op["positive"])
        # "paint": no model call; OpenCase.labels applies it

    def _rebuild(self, oc: OpenCase) -> None:
        """A fresh session from the remaining interactions, on the old session's cached embeddings."""
        session = InteractiveSession(oc.session.predictor, oc.image, slice_axis=oc.slice_axis, name=oc.case.key)
        session.embeddings = oc.session.embeddings  # the same model: an undo never switches models
        if getattr(session.predictor, "is_automatic", False) and oc.saved is None:
            session.start_auto()
        for op in oc.ops:
            self._run(session, op)
        oc.session = session

    def _done(self, oc: OpenCase, op: dict | None) -> dict:
        oc.version += 1
        out = self._state(oc)
        if op is not None:
            out["decoded_slices"] = list(oc.session.decoded_slices)
        return out

    def _class(self, value) -> int:
        try:
            value = int(value)
        except (TypeError, ValueError):
            value = -1
        if value not in self.folder.classes:
            raise MedadaptError(f"class {value} is not one of this folder's classes {sorted(self.folder.classes)}.",
                                fix="pick a class from the list (dataset.json 'labels').")
        return value

    # -- results ------------------------------------------------------------------------------------
    def labels(self, key: str) -> tuple[np.ndarray, OpenCase]:
        with self._model_lock:
            oc = self.open(key)
            return oc.labels(), oc

    def compare(self, key: str, predictor) -> tuple[np.ndarray, OpenCase]:
        """What the page would show for the case under another model (``predictor``): the case's interactions
        replayed on a session of that model (an automatic-mode model starts from its prediction), with the
        same saved label and brush strokes around them. The case's own session is left as it is."""
        with self._model_lock:
            oc = self.open(key)
            session = InteractiveSession(predictor, oc.image, slice_axis=oc.slice_axis, name=key)
            if predictor is oc.session.predictor:
                session.embeddings = oc.session.embeddings
            if getattr(predictor, "is_automatic", False) and oc.saved is None:
                session.start_auto()
            self._replay(session, oc)
            return replace(oc, session=session).labels(), oc

    @staticmethod
    def _replay(session: InteractiveSession, oc: OpenCase) -> None:
        """``oc``'s boxes and clicks on a session of another model. Objects are matched by their start: the
        n-th box's object, or the automatic object of the same class (a click on an automatic object the
        other model lacks is left out)."""
        objects = list(oc.session.objects.values())
        boxed = iter([o.object_id for o in objects if o.start != "auto"])
        auto_class = {o.object_id: o.value for o in objects if o.start == "auto"}
        auto_ids = {o.value: o.object_id for o in session.objects.values() if o.start == "auto"}
        ids: dict[int, int] = {}
        for op in oc.ops:
            if op["op"] == "box":
                ids[next(boxed)] = session.add_box(op["box"], value=op["value"])
            elif op["op"] == "click":
                oid = ids.get(op["object"], auto_ids.get(auto_class.get(op["object"], -1)))
                if oid is not None:
                    session.click(oid, op["x"], op["y"], op["z"], positive=op["positive"])

    def save(self, key: str, labels: np.ndarray | None = None) -> dict:
        """Write the case's label (``labels``, else what the session shows) beside its image, atomically."""
        oc = self.open(key)
        if labels is None:
            labels, oc = self.labels(key)
        elif labels.shape != oc.image.shape:
            raise MedadaptError(f"the label has shape {list(labels.shape)}, the image {list(oc.image.shape)}.",
                                fix="send a label volume on the image's grid.")
        with self._save_lock(key):
            changed = self._stamp(oc.case) != oc.label_stamp  # written by someone else since we read it
            dest = self.folder.write_label(oc.case, labels, oc.volume)
            oc.saved = np.asarray(labels)
            oc.label_stamp = self._stamp(oc.case)
        with self._model_lock:  # the saved label now holds the masks: a fresh session starts from it
            oc.ops.clear()
            oc.undone.clear()
            if oc.session.objects or oc.session.predictor is not self.predictor:
                oc.session = self._fresh_session(oc)
            oc.version += 1
        out = {"saved": dest.relative_to(self.folder.root).as_posix(), "voxels": int(np.count_nonzero(labels)),
               **self._state(oc)}
        if changed:
            out["warning"] = ("the label file had been changed by another program since this case was opened; "
                              "it was replaced by this save (the last save wins).")
        return out

    def _stamp(self, case: StudioCase) -> tuple | None:
        try:
            st = case.label.stat()
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size

    def _save_lock(self, key: str) -> threading.Lock:
        with self._locks_lock:
            return self._save_locks.setdefault(key, threading.Lock())
