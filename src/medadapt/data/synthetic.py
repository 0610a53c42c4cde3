"""A small synthetic MR-like dataset in the MSD layout, for the offline demo and tests.

Each case is a 48×48×32 volume (1 × 1 × 1.5 mm, so the third axis is the slice axis) showing a head-like
ellipsoid of textured tissue on a dark background, with two labelled structures: a bright one (label 1)
and a dark one (label 2), irregular ellipsoids of varied size, position and contrast. An unlabelled
bright "distractor" blob, partial-volume blur, a smooth multiplicative bias field and Rician noise make
the images look like MR and keep a box-prompted general model from being perfect, so that adaptation
has something to gain. Cases are drawn from ``default_rng([seed, case])``: deterministic and independent.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage

from medadapt.io.atomic import atomic_path, write_json

SHAPE = (48, 48, 32)
SPACING = (1.0, 1.0, 1.5)
CLASSES = {1: "bright_structure", 2: "dark_structure"}


def make_synthetic_dataset(out_dir: str | Path, n_cases: int = 12, seed: int = 0) -> Path:
    """Write ``imagesTr/``, ``labelsTr/`` (NIfTI) and ``dataset.json`` under ``out_dir``; return it.

    ``dataset.json`` is written last, so an interrupted run leaves no dataset the loader would accept.
    """
    import nibabel as nib  # lazy: start-up time (see medadapt.io.volumes)

    if n_cases < 1:
        raise ValueError(f"n_cases must be at least 1, got {n_cases}")
    out = Path(out_dir)
    affine = np.diag([*SPACING, 1.0])
    training = []
    for i in range(n_cases):
        image, label = synthetic_case(np.random.default_rng([seed, i]))
        name = f"synth_{i:03d}.nii.gz"
        for sub, arr in (("imagesTr", image), ("labelsTr", label)):
            img = nib.Nifti1Image(arr, affine)
            img.header.set_xyzt_units("mm")
            with atomic_path(out / sub / name) as tmp:
                nib.save(img, tmp)
        training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
    write_json(
        out / "dataset.json",
        {
            "name": "SyntheticMR",
            "description": f"medadapt synthetic MR-like volumes (seed {seed}) for offline demos",
            "tensorImageSize": "3D",
            "licence": "CC0 (generated)",
            "modality": {"0": "MRI"},
            "labels": {"0": "background", **{str(k): v for k, v in CLASSES.items()}},
            "numTraining": n_cases,
            "numTest": 0,
            "training": training,
            "test": [],
        },
    )
    return out


def synthetic_case(
    rng: np.random.Generator, shape: tuple[int, int, int] = SHAPE
) -> tuple[np.ndarray, np.ndarray]:
    """One ``(image int16, label uint8)`` pair of ``shape`` (voxel axes i, j, k; k has 1.5 mm spacing)."""
    grid = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij"), axis=-1)
    mm = grid * np.asarray(SPACING, dtype=np.float32)  # voxel centres in mm, (I, J, K, 3)
    size_mm = np.asarray(shape, dtype=np.float32) * np.asarray(SPACING, dtype=np.float32)
    centre = size_mm / 2

    # Head: an ellipsoid filling most of the field of view, with a smooth irregular outline.
    head = _blob(mm, centre + rng.uniform(-2, 2, 3), size_mm * rng.uniform(0.40, 0.46, 3), rng, wobble=0.06)
    tissue = 100 + 10 * _smooth_noise(shape, 2.5, rng) + 5 * _smooth_noise(shape, 1.0, rng)
    intensity = np.where(head, tissue, 0.0)

    label = np.zeros(shape, dtype=np.uint8)
    inner = ndimage.binary_erosion(head, iterations=4)
    placed: list[tuple[np.ndarray, np.ndarray]] = []
    for cls, contrast in ((1, rng.uniform(45, 80)), (2, -rng.uniform(40, 60)), (0, rng.uniform(35, 60))):
        radii = np.array([rng.uniform(4, 9), rng.uniform(4, 9), rng.uniform(4, 8)], dtype=np.float32)
        c = _free_centre(mm, inner, radii, placed, rng)
        placed.append((c, radii))
        blob = _blob(mm, c, radii, rng, wobble=0.15) & head
        core = np.clip(1 + 0.25 * _smooth_noise(shape, 2.0, rng), 0.5, 1.5)  # heterogeneous inside, not flat
        intensity = np.where(blob, intensity + contrast * core, intensity)
        if cls:
            label[blob & (label == 0)] = cls  # cls 0 is an unlabelled distractor

    intensity = ndimage.gaussian_filter(intensity, 0.7)  # partial volume at edges
    intensity *= _bias_field(mm, size_mm, rng)
    sigma = rng.uniform(5, 9)
    noisy = np.hypot(
        intensity + sigma * rng.standard_normal(shape), sigma * rng.standard_normal(shape)
    )  # Rician
    image = np.clip(np.rint(noisy * 4), 0, np.iinfo(np.int16).max).astype(np.int16)
    return image, label


def _smooth_noise(shape, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian-filtered white noise scaled to unit standard deviation."""
    n = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma)
    return n / (n.std() + 1e-6)


def _blob(mm: np.ndarray, centre, radii, rng: np.random.Generator, wobble: float) -> np.ndarray:
    """An ellipsoid whose surface is perturbed by smooth noise (relative amplitude ``wobble``)."""
    r = np.sqrt((((mm - np.asarray(centre, np.float32)) / np.asarray(radii, np.float32)) ** 2).sum(-1))
    return r < 1 + wobble * _smooth_noise(mm.shape[:3], 3.0, rng)


def _free_centre(mm, inside: np.ndarray, radii, placed, rng: np.random.Generator) -> np.ndarray:
    """A random centre inside ``inside`` whose ellipsoid does not touch those already placed."""
    candidates = mm[inside]
    best, best_gap = None, -np.inf
    for _ in range(50):
        c = candidates[rng.integers(len(candidates))]
        gap = min((np.linalg.norm(c - pc) - (radii.max() + pr.max()) for pc, pr in placed), default=np.inf)
        if gap > 1.5:
            return c
        if gap > best_gap:
            best, best_gap = c, gap
    return best


def _bias_field(mm: np.ndarray, size_mm: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Smooth multiplicative intensity inhomogeneity: exp of a random quadratic, about ±20%."""
    x = (mm / size_mm - 0.5) * 2  # -1..1
    lin = (x * rng.uniform(-0.15, 0.15, 3)).sum(-1)
    quad = (x**2 * rng.uniform(-0.1, 0.1, 3)).sum(-1)
    return np.exp(lin + quad).astype(np.float32)
