"""One case through prompted inference: read → normalise → prompts → segment → write.

A *case* is a 2D image (PNG/JPG/TIFF/BMP/GIF/DICOM/NIfTI slice), a 3D volume (NIfTI or anything
SimpleITK reads), or a CVPR24 ``.npz`` (2D ``imgs`` H×W×3 or 3D D×H×W, with ``boxes``). The output
keeps the input's name and geometry: NIfTI with the input's affine and header, PNG masks for 2D
images, CVPR24 ``segs`` (uint16) for ``.npz``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medadapt.data.intensity import normalise_for_sam
from medadapt.data.prompts import (
    Prompt,
    boxes3d_from_label,
    boxes_from_label,
    points_from_label,
    reframe_boxes3d,
    validate_prompts,
)
from medadapt.errors import MedadaptError
from medadapt.infer.ensemble import EnsemblePredictor, check_prompt_mode
from medadapt.infer.modality_bank import ModalityBankPredictor
from medadapt.infer.predictor import SamPredictor
from medadapt.infer.volume import segment_volume_auto, segment_volume_boxes3d, segment_volume_from_labels
from medadapt.io.cvpr24 import read_cvpr24, write_cvpr24_segs
from medadapt.io.discovery import Pair, full_suffix, is_volume_file, stem
from medadapt.io.images import read_image_2d, read_label_2d, write_mask_png
from medadapt.io.volumes import Volume, check_pair, default_slice_axis, read_volume, write_like

# "auto": no prompt; an automatic-mode adapter (fit --prompt auto) segments every class it learned.
PROMPT_SOURCES = ("boxes-from-labels", "boxes3d-from-labels", "points-from-labels", "file-boxes", "auto")


@dataclass
class PredictOptions:
    prompts: str = "boxes-from-labels"  # one of PROMPT_SOURCES or a prompt file path
    slice_axis: int | None = None
    modality: str = "auto"  # auto | ct | mr | none
    window: str | None = None  # CT window preset name or "level,width"
    per: str = "class"  # boxes per class or per connected component
    jitter: int = 0
    n_pos: int = 1
    n_neg: int = 0
    seed: int = 0
    prompt_map: dict[str, list[Prompt]] | None = field(default=None, repr=False)


@dataclass
class Case:
    key: str
    kind: str  # "2d" | "3d" | "npz2d" | "npz3d"
    image: np.ndarray  # normalised 0..255 (2D: H×W or H×W×3; 3D: volume in stored axis order)
    label: np.ndarray | None
    spacing: tuple[float, ...]
    source: Path
    volume: Volume | None = None
    slice_axis: int = 0
    npz_boxes: np.ndarray | None = None


def _slice_axis(options: PredictOptions, default: int, ndim: int, path: Path) -> int:
    """``--slice-axis`` (or an adapter's trained axis, put there by ``predict``), else ``default``; checked."""
    axis = options.slice_axis if options.slice_axis is not None else default
    if not 0 <= axis < ndim:
        raise MedadaptError(
            f"--slice-axis {axis} is not an axis of this {ndim}-D volume.",
            path=path,
            fix=f"use 0..{ndim - 1} or leave it out (through-plane axis by spacing, z for .npz).",
        )
    return axis


def load_case(pair: Pair, options: PredictOptions) -> Case:
    path = pair.image
    suffix = full_suffix(path)
    if suffix == ".npz":
        c = read_cvpr24(path)
        label = c.gts if pair.label is None else _read_npz_label(pair.label)
        if c.imgs.ndim == 3 and c.imgs.shape[-1] == 3 and c.boxes.shape[-1] == 4:
            return Case(pair.key, "npz2d", c.imgs, label, (1.0, 1.0), path, npz_boxes=c.boxes)
        spacing = tuple(float(s) for s in c.spacing) if c.spacing is not None else (1.0, 1.0, 1.0)
        axis = _slice_axis(options, 0, c.imgs.ndim, path)
        return Case(pair.key, "npz3d", c.imgs, label, spacing, path, slice_axis=axis, npz_boxes=c.boxes)
    if is_volume_file(path) and not _is_single_slice(path):
        vol = read_volume(path)
        label = None
        if pair.label is not None:
            lab = read_volume(pair.label, label=True)
            check_pair(vol, lab)
            label = lab.array
        axis = _slice_axis(options, default_slice_axis(vol), vol.array.ndim, path)
        image = normalise_for_sam(vol.array, options.modality, window=options.window)
        return Case(pair.key, "3d", image, label, tuple(vol.spacing), path, volume=vol, slice_axis=axis)
    image = read_image_2d(path)
    label = None
    if pair.label is not None:
        label = read_label_2d(pair.label)
        if label.shape != image.shape[:2]:
            raise MedadaptError(
                f"label shape {label.shape} does not match image shape {image.shape[:2]} ({path.name}).",
                path=pair.label,
                fix="pair each image with its own mask at the same resolution.",
            )
    image = normalise_for_sam(image, options.modality, window=options.window)
    return Case(pair.key, "2d", image, label, (1.0, 1.0), path)


def _is_single_slice(path: Path) -> bool:
    """NIfTI files holding one 2D slice are handled as 2D images."""
    try:
        import nibabel as nib

        shape = nib.load(str(path)).shape
    except Exception:
        return False
    return sum(s > 1 for s in shape) == 2


def _read_npz_label(path: Path) -> np.ndarray:
    if full_suffix(path) == ".npz":
        c = read_cvpr24(path)
        if c.gts is None:
            raise MedadaptError("this .npz holds no 'gts' array.", path=path, fix="give ground truth with a 'gts' key.")
        return c.gts
    return read_label_2d(path)


def _need_label(case: Case, source: str) -> np.ndarray:
    if case.label is None:
        raise MedadaptError(
            f"--prompts {source} needs a label for every input, but none was found for this case.",
            path=case.source,
            fix="pass --labels FILE|DIR with masks named like the images, or a prompt file.",
        )
    if not case.label.any():
        raise MedadaptError(
            f"the label is empty, so {source} yields no prompt.",
            path=case.source,
            fix="drop this case or give prompts in a file.",
        )
    return case.label


def _file_prompts(case: Case, options: PredictOptions) -> list[Prompt]:
    assert options.prompt_map is not None
    for key in (case.source.name, stem(case.source), case.key):
        if key in options.prompt_map:
            return options.prompt_map[key]
    raise MedadaptError(
        f"the prompt file has no entry for this image ('{case.source.name}').",
        path=options.prompts,
        fix="add prompts under the image's file name, or remove the image from --input.",
    )


def require_automatic(predictor: SamPredictor, path: Path | None = None) -> None:
    """``--prompts auto`` needs a model with learned class prompts (an automatic-mode adapter)."""
    if not predictor.is_automatic:
        raise MedadaptError(
            "--prompts auto needs an automatic-mode adapter; this model expects box or point prompts.",
            path=path,
            fix="pass --adapter RUN of a `medadapt fit --prompt auto` run, or choose another --prompts source.",
        )


def predict_case(predictor: SamPredictor, case: Case, options: PredictOptions, progress=None) -> np.ndarray:
    """The label map for one case, in the case's own array layout."""
    if isinstance(predictor, ModalityBankPredictor):  # per-modality adapters: pick this case's
        predictor.select_for_file(case.source, options.modality)
    source = options.prompts
    rng = np.random.default_rng(options.seed)
    check_prompt_mode(predictor, source, case.source)
    if source == "auto":
        require_automatic(predictor, case.source)
        if case.kind in ("3d", "npz3d"):
            if isinstance(predictor, EnsemblePredictor):  # each member along its own axis
                return predictor.segment_volume_auto(case.image, slice_axis=case.slice_axis, volume=case.volume,
                                                     progress=progress)
            return segment_volume_auto(predictor, case.image, slice_axis=case.slice_axis, progress=progress)
        return predictor.segment_auto(case.image)
    if case.kind in ("npz2d", "npz3d") and source in ("file-boxes", "auto-npz"):
        if case.npz_boxes is None or len(case.npz_boxes) == 0:
            raise MedadaptError("the .npz holds no boxes.", path=case.source, fix="add a 'boxes' array.")
        if case.kind == "npz2d":
            prompts = [Prompt(class_id=i, box=b) for i, b in enumerate(case.npz_boxes, start=1)]
            validate_prompts(prompts, case.image.shape[:2], case.source)
            seg, _ = predictor.segment(case.image, prompts)
            return seg
        boxes = reframe_boxes3d(case.npz_boxes, case.slice_axis)  # stored with z = axis 0
        return segment_volume_boxes3d(predictor, case.image, boxes, slice_axis=case.slice_axis, progress=progress)

    if case.kind in ("3d", "npz3d"):
        if source == "boxes-from-labels":
            label = _need_label(case, source)
            return segment_volume_from_labels(
                predictor, case.image, label, slice_axis=case.slice_axis, jitter=options.jitter, rng=rng,
                progress=progress,
            )
        if source == "boxes3d-from-labels":
            label = _need_label(case, source)
            boxes, classes = boxes3d_from_label(label, slice_axis=case.slice_axis)
            return segment_volume_boxes3d(
                predictor, case.image, boxes, slice_axis=case.slice_axis, values=classes, progress=progress
            )
        if source == "points-from-labels":
            raise MedadaptError(
                "points-from-labels is a 2D protocol; for volumes use boxes-from-labels or boxes3d-from-labels.",
                path=case.source,
            )
        prompts = _file_prompts(case, options)
        boxes = [p.box for p in prompts if p.box is not None and len(p.box) == 6]
        if len(boxes) != len(prompts):
            raise MedadaptError(
                "prompts for a volume must be 3D boxes [x0,y0,z0,x1,y1,z1].",
                path=options.prompts,
                fix="give 6-number boxes for volume inputs.",
            )
        values = [p.class_id if p.class_id is not None else i for i, p in enumerate(prompts, start=1)]
        return segment_volume_boxes3d(
            predictor, case.image, np.asarray(boxes), slice_axis=case.slice_axis, values=values, progress=progress
        )

    # 2D image
    if source == "boxes-from-labels":
        prompts = boxes_from_label(_need_label(case, source), per=options.per, jitter=options.jitter, rng=rng)
    elif source == "points-from-labels":
        label = _need_label(case, source)
        prompts = [
            points_from_label(label, int(c), n_pos=options.n_pos, n_neg=options.n_neg, rng=rng)
            for c in np.unique(label)
            if c != 0
        ]
    elif source == "boxes3d-from-labels":
        raise MedadaptError(
            "boxes3d-from-labels needs volumes; this input is a 2D image.",
            path=case.source,
            fix="use --prompts boxes-from-labels for 2D images.",
        )
    else:
        prompts = _file_prompts(case, options)
    validate_prompts(prompts, case.image.shape[:2], case.source)
    seg, _ = predictor.segment(case.image, prompts)
    return seg


def output_path(out_dir: Path, case: Case) -> Path:
    name = case.source.name
    if case.kind == "2d" and full_suffix(case.source) not in (".png",):
        name = stem(case.source) + ".png"
    return Path(out_dir) / name


def write_prediction(out_dir: Path, case: Case, seg: np.ndarray) -> Path:
    dest = output_path(out_dir, case)
    if case.kind == "3d":
        write_like(dest, seg, case.volume)
    elif case.kind in ("npz2d", "npz3d"):
        write_cvpr24_segs(dest, seg)
    else:
        write_mask_png(dest, seg)
    return dest
