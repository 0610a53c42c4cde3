"""The CVPR 2025 interactive protocol on one case: an initial prompt, then simulated corrective clicks.

Per case: every class of the ground truth is one object, started from its box (one 3D box per class for
volumes, as the challenge; ``start="box2d"``: a 2D box per class on every slice holding it; ``"auto"``:
an automatic-mode adapter's prediction). Then ``n_clicks`` times: for every class, the click of
:func:`medadapt.metrics.interactive.simulate_click` on the current label map (classes in parallel, as the
official script), applied to the session. DSC / NSD (CVPR24 conventions) are scored after the initial
prediction and after every click; see :mod:`medadapt.metrics.interactive` for the AUC convention.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from medadapt.data.clicks import ClickSequence
from medadapt.data.prompts import boxes3d_from_label, boxes_from_label
from medadapt.infer.interactive import CLICK_REACH, CLICK_WINDOW, InteractiveSession
from medadapt.infer.predictor import SamPredictor
from medadapt.metrics.interactive import OFFICIAL_SEED, interactive_scores, simulate_click
from medadapt.metrics.segmentation import case_metrics

Start = Literal["box3d", "box2d", "auto"]


@dataclass
class SimulationResult:
    rows: list[dict]  # one per class: case, class, dsc, nsd, hd95 (final), dsc_0..N, nsd_0..N, AUCs
    seconds: list[float]  # per interaction (0: initial prediction incl. encoding), all objects together
    decoded_slices: list[int]  # per interaction: decoder calls (slices x objects), all objects together
    clicks: ClickSequence | None  # None for per-slice 2D box starts of volumes


def start_session(session: InteractiveSession, label: np.ndarray, classes: Sequence[int], start: Start) -> dict:
    """Start one object per class present in ``label`` (image axes); returns {class: object id}."""
    if start == "auto":
        ids = session.start_auto()
        return {session.objects[i].value: i for i in ids if session.objects[i].value in classes}
    ids = {}
    if session.slice_axis is None:
        for p in boxes_from_label(label, per="class", classes=classes):
            ids[p.class_id] = session.add_box(p.box, value=p.class_id, object_id=p.class_id)
        return ids
    if start == "box3d":
        boxes, found = boxes3d_from_label(label, slice_axis=session.slice_axis, classes=classes)
        for box, c in zip(boxes, found, strict=True):
            ids[int(c)] = session.add_box(box, value=int(c), object_id=int(c))
        return ids
    lab = np.moveaxis(label, session.slice_axis, 0)
    for c in classes:
        per_slice = {z: p.box for z in range(lab.shape[0]) for p in boxes_from_label(lab[z], classes=[c])}
        if per_slice:
            ids[c] = session.add_slice_boxes(per_slice, value=c, object_id=c)
    return ids


def simulate_case(
    predictor: SamPredictor,
    image: np.ndarray,
    label: np.ndarray,
    spacing: Sequence[float],
    *,
    slice_axis: int | None,
    case: str = "case",
    n_clicks: int = 5,
    start: Start = "box3d",
    classes: Sequence[int] | None = None,
    tolerance_mm: float = 2.0,
    seed: int = OFFICIAL_SEED,
    plane: Literal["volume", "slice"] = "volume",
    mask_feedback: bool = False,
    click_reach: int = CLICK_REACH,
    click_window: float | None = CLICK_WINDOW,
    volume=None,
) -> SimulationResult:
    """Box (or automatic start) + ``n_clicks`` simulated clicks on one case; metrics after each step.

    ``volume``: the volume as loaded, for an ensemble with a 3D member."""
    label = np.asarray(label)
    if classes is None:
        classes = [int(c) for c in np.unique(label) if c != 0]
    t0 = time.perf_counter()
    session = InteractiveSession(predictor, image, slice_axis=slice_axis, name=case, mask_feedback=mask_feedback,
                                 click_reach=click_reach, click_window=click_window, volume=volume)
    ids = start_session(session, label, classes, start)
    return simulate_clicks(session, ids, label, spacing, case=case, n_clicks=n_clicks, classes=classes,
                           tolerance_mm=tolerance_mm, seed=seed, plane=plane,
                           start_seconds=time.perf_counter() - t0, start_decoded=session.slices_decoded)


def simulate_clicks(
    session: InteractiveSession,
    ids: dict[int, int],
    label: np.ndarray,
    spacing: Sequence[float],
    *,
    case: str,
    n_clicks: int,
    classes: Sequence[int],
    tolerance_mm: float = 2.0,
    seed: int = OFFICIAL_SEED,
    plane: Literal["volume", "slice"] = "volume",
    start_seconds: float = 0.0,
    start_decoded: int = 0,
) -> SimulationResult:
    """The clicks of :func:`simulate_case` on a started session (objects ``ids``: {class: object id})."""
    label = np.asarray(label)
    slice_axis = session.slice_axis
    seconds, decoded = [start_seconds], [start_decoded]
    curves = {c: ([], []) for c in classes}

    def score() -> None:
        for row in case_metrics(label, session.labels(), spacing, classes=classes, tolerance_mm=tolerance_mm,
                                cvpr24=True):
            curves[row["class"]][0].append(row["dsc"])
            curves[row["class"]][1].append(row["nsd"])


    score()
    axis = 0 if slice_axis is None else slice_axis
    for _ in range(n_clicks):
        seg = session.labels()
        todo = []
        for c in classes:
            if c not in ids:
                continue
            g, s = label == c, seg == c
            if slice_axis is not None:
                g, s = np.moveaxis(g, axis, 0), np.moveaxis(s, axis, 0)
            hit = simulate_click(g, s, seed=seed, plane=plane, slice_axis=0)
            if hit is not None:
                todo.append((c, hit))
        t, n = time.perf_counter(), session.slices_decoded
        for c, hit in todo:
            idx = hit.index if slice_axis is not None else (0, *hit.index)
            session.click(ids[c], x=idx[2], y=idx[1], z=idx[0], positive=hit.positive)
        seconds.append(time.perf_counter() - t)
        decoded.append(session.slices_decoded - n)
        score()
    final = {r["class"]: r for r in case_metrics(label, session.labels(), spacing, classes=classes,
                                                  tolerance_mm=tolerance_mm, cvpr24=True)}
    rows = []
    for c in classes:
        dsc, nsd = curves[c]
        row = {"case": case, **final[c], **interactive_scores(dsc, nsd)}
        row.update({f"dsc_{k}": v for k, v in enumerate(dsc)})
        row.update({f"nsd_{k}": v for k, v in enumerate(nsd)})
        rows.append(row)
    per_slice_boxes = any(o.start == "box2d" and o.box is None for o in session.objects.values())  # no file yet
    return SimulationResult(rows, seconds, decoded, None if per_slice_boxes else session.record())
