"""The "next case" suggestion: the unlabelled case the model in use is least certain about.

Uncertainty sampling, as active learning does it. A case's score is the mean binary entropy (bits, 0..1)
of the model's foreground probability ``sigmoid(logit)`` over the predicted object and its uncertain
margin (the pixels where the probability is at least :data:`REGION_P`; none: the whole slice), on a few
evenly spaced slices (:data:`SLICES`; a 2D image: its one slice). With several classes a pixel counts
with its least certain class. What the model predicts without the user's prompts:

- an automatic-mode adapter: its automatic prediction (every class, from the image alone);
- a box-prompt adapter (the studio's own in-loop adapters): its answer to the box where the saved labels
  lie (their union bounding box, as fractions of each case's grid, put on the case's grid); the slices
  scored lie in that box's slice range. Without saved labels, a box over the whole slice.

With the zero-shot model (no adapter yet) nothing has been learnt from this folder, so there is nothing
to rank: the suggestion is the first unlabelled case in list order.

Scores are computed lazily in a background thread (started by the first request for a suggestion under
an adapter), one case at a time and one model call at a time under the studio's model lock, so an
interaction waits for at most one slice's encoding. They are kept per adapter, in memory and in
``DATA_DIR/.medadapt-studio/suggestions.json`` (written atomically after each scored case), so a restarted
studio does not score again: a stored score is used while its case's image file is unchanged (same size
and modification time) and was scored on the same number of slices; anything else is scored afresh. An
unreadable store is ignored (it is a cache). Until every case has a score the best scored case is
suggested (``complete`` false); before any, list order.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import torch

from medadapt.data.intensity import normalise_for_sam
from medadapt.infer.volume import SliceEmbeddings
from medadapt.io.atomic import write_json
from medadapt.models.preprocess import postprocess_logits
from medadapt.studio.cases import slice_axis_of

SLICES = 5
REGION_P = 0.05
STORE = "suggestions.json"  # in the studio's own folder


def binary_entropy(p: np.ndarray) -> np.ndarray:
    """Entropy in bits of Bernoulli(p), elementwise."""
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-7, 1 - 1e-7)
    return -(p * np.log2(p) + (1 - p) * np.log2(1 - p))


def uncertainty(probs: np.ndarray) -> float:
    """Mean entropy over the predicted region of ``[C, ...]`` foreground probabilities (see the module)."""
    top = probs.max(0)
    h = binary_entropy(probs).max(0)
    region = top >= REGION_P
    return float(h[region].mean() if region.any() else h.mean())


class Suggester:
    """Scores of the unlabelled cases under the adapter in use, computed in the background."""

    def __init__(self, studio, *, slices: int = SLICES):
        self.studio = studio
        self.slices = slices
        self.scores: dict[str, dict[str, float]] = {}  # adapter name -> case key -> score
        self.errors: dict[str, str] = {}  # case key -> why it could not be scored (never retried)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stored: dict | None = None  # the store's content, read at the first use

    # -- the store on disk ----------------------------------------------------------------------
    @property
    def store_path(self) -> Path:
        return self.studio.folder.state_dir / STORE

    def _image_stamp(self, key: str) -> list[int] | None:
        try:
            st = self.studio.folder.case(key).image.stat()
        except (OSError, KeyError):
            return None
        return [st.st_mtime_ns, st.st_size]

    def _read_store(self) -> dict:
        if self._stored is None:
            try:
                stored = json.loads(self.store_path.read_text())
                ok = isinstance(stored, dict) and isinstance(stored.get("adapters"), dict)
            except (OSError, ValueError):
                ok = False
            self._stored = stored if ok else {"adapters": {}}
        return self._stored

    def _load(self, adapter: str) -> dict[str, float]:
        """The stored scores of ``adapter`` that still hold (see the module docstring). Call with the lock."""
        entries = self._read_store()["adapters"].get(adapter) or {}
        out = {}
        for key, entry in entries.items():
            try:
                if entry["slices"] == self.slices and entry["image"] == self._image_stamp(key):
                    out[key] = float(entry["score"])
            except (KeyError, TypeError, ValueError):
                continue
        return out

    def _remember(self, adapter: str, key: str, score: float) -> None:
        """Keep ``score`` in the store (atomic write). Call with the lock."""
        stored = self._read_store()
        stored["adapters"].setdefault(adapter, {})[key] = {"score": score, "slices": self.slices,
                                                          "image": self._image_stamp(key)}
        try:
            write_json(self.store_path, stored)
        except OSError:
            pass  # a read-only folder: the scores stay in memory

    def _known(self, adapter: str) -> dict[str, float]:
        """The scores of ``adapter``, from memory or else from the store. Call with the lock."""
        if adapter not in self.scores:
            self.scores[adapter] = self._load(adapter)
        return self.scores[adapter]

    def unlabelled(self) -> list[str]:
        folder = self.studio.folder
        return [k for k, c in folder.cases.items() if not folder.has_label(c)]

    def suggest(self) -> dict:
        """The suggested case and how it was chosen; starts the scoring when scores are missing."""
        adapter = self.studio.adapter
        todo = self.unlabelled()
        out = {"adapter": adapter, "total": len(todo)}
        if adapter is None:
            return {**out, "case": todo[0] if todo else None, "method": "list order", "score": None,
                    "scored": 0, "complete": True}
        with self._lock:
            known = dict(self._known(adapter))
            missing = [k for k in todo if k not in known and k not in self.errors]
            if missing and (self._thread is None or not self._thread.is_alive()):
                self._thread = threading.Thread(target=self._work, name="medadapt-studio-suggest", daemon=True)
                self._thread.start()
        scored = {k: known[k] for k in todo if k in known}
        if not scored:
            return {**out, "case": todo[0] if todo else None, "method": "list order", "score": None,
                    "scored": 0, "complete": not todo}
        best = max(scored, key=lambda k: (scored[k], -todo.index(k)))
        return {**out, "case": best, "method": "entropy", "score": round(scored[best], 4), "scored": len(scored),
                "complete": not missing}

    # -- scoring ----------------------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            adapter, predictor = self.studio.adapter, self.studio.predictor
            if adapter is None:
                return
            with self._lock:
                known = self._known(adapter)
                missing = [k for k in self.unlabelled() if k not in known and k not in self.errors]
            if not missing:
                return
            prior = None if predictor.is_automatic else self._label_box()
            for key in missing:
                if self.studio.adapter != adapter:
                    break  # switched: score again under the new adapter
                try:
                    score = self.score_case(key, predictor, prior)
                except Exception as err:  # an unreadable image: left out of the ranking, the rest is scored
                    self.errors[key] = f"{type(err).__name__}: {err}"
                    continue
                with self._lock:
                    known[key] = score
                    self._remember(adapter, key, score)

    def _label_box(self) -> np.ndarray | None:
        """The union bounding box of the saved labels as fractions ``[z0, y0, x0, z1, y1, x1]`` of each case's
        grid (slices first, as the sessions see it); None without a saved label."""
        folder, lo, hi = self.studio.folder, None, None
        for case in folder.cases.values():
            label = folder.read_label(case) if folder.has_label(case) else None
            if label is None or not label.any():
                continue
            axis = slice_axis_of(folder.read_image(case)) if not case.is_2d else 2
            zyx = np.moveaxis(label, axis, 0)
            idx = np.argwhere(zyx)
            shape = np.asarray(zyx.shape, np.float64)
            a, b = idx.min(0) / shape, (idx.max(0) + 1) / shape
            lo = a if lo is None else np.minimum(lo, a)
            hi = b if hi is None else np.maximum(hi, b)
        return None if lo is None else np.concatenate([lo, hi])

    def score_case(self, key: str, predictor, prior: np.ndarray | None) -> float:
        """The case's uncertainty under ``predictor`` (see the module docstring)."""
        studio = self.studio
        case = studio.folder.case(key)
        volume = studio.folder.read_image(case)
        axis = slice_axis_of(volume)
        image = normalise_for_sam(volume.array, studio.folder.modality, is_volume=not case.is_2d)
        zyx = np.moveaxis(image, axis, 0)
        depth, h, w = zyx.shape
        if prior is not None:
            box = prior * np.array([depth, h, w, depth, h, w], np.float64)
            z0, z1 = int(np.floor(box[0])), int(np.ceil(box[3])) - 1
            xyxy = np.array([box[2], box[1], box[5] - 1, box[4] - 1])
        else:
            z0, z1 = 0, depth - 1
            xyxy = np.array([0, 0, w - 1, h - 1], np.float64)
        z0, z1 = max(0, min(z0, depth - 1)), max(0, min(z1, depth - 1))
        if predictor.is_automatic or depth <= self.slices:
            zs = np.unique(np.linspace(z0, z1, min(self.slices, z1 - z0 + 1)).round().astype(int))
        else:  # evenly spaced inside the range, its ends left out (they often hold little)
            zs = np.unique(np.linspace(z0, z1, self.slices + 2)[1:-1].round().astype(int))
        embeddings = SliceEmbeddings(predictor, zyx)
        probs = []
        for z in zs:
            with studio.model_lock, torch.no_grad():
                emb, tf = embeddings.get(int(z))
                if predictor.is_automatic:
                    logits = predictor.auto_logits(emb, tf)[0]
                else:
                    boxes = torch.as_tensor(tf.apply_boxes(xyxy[None]))
                    low_res, _ = predictor.model.decode(emb[None], boxes=boxes, multimask_output=False)
                    logits = postprocess_logits(low_res.float(), tf)[0]
            probs.append(torch.sigmoid(logits.float()).numpy())
            time.sleep(0.005)  # let a waiting interaction take the model lock first
        return uncertainty(np.stack(probs, 1))  # [C, slices, H, W]
