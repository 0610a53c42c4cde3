"""The cases of a studio folder and where their labels go.

:func:`medadapt.data.datasets.load_segmentation_dataset` lists *labelled* cases only; the studio also
needs the images nobody has labelled yet, so it lists images and looks for their labels itself:

- an MSD / nnU-Net folder: ``imagesTr/`` → ``labelsTr/`` (and ``imagesTs/`` → ``labelsTs/``), classes and
  modality from ``dataset.json``; nnU-Net's ``_0000`` channel suffix is dropped from label names;
- ``images/`` → ``labels/`` (or ``masks/`` where that folder exists);
- a folder of NIfTI volumes or 2D images → ``labelsTr/`` inside it.

Volumes are NIfTI; labels are written as NIfTI with the image's header. 2D images (PNG, TIFF, BMP, JPEG,
and single-frame DICOM ``.dcm`` files, read with pydicom with their modality rescale, e.g. HU) get PNG
labels of class indices; the viewer shows them as a one-slice volume (columns along ``i``, rows
upwards along ``j``, the identity affine), which :func:`to_display` / :func:`from_display` convert.

Only files inside the folder are listed (a link that leads out of it is skipped), labels are written only
into the label folder of their image's folder, and an image file is never a label destination.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medadapt.data.datasets import classes_from_dataset_json, modality_key
from medadapt.errors import MedadaptError
from medadapt.io.discovery import case_key, full_suffix
from medadapt.io.images import read_image_2d, read_label_2d, write_mask_png
from medadapt.io.volumes import Volume, VolumeMeta, default_slice_axis, read_volume, write_like

STUDIO_DIR = ".medadapt-studio"  # the studio's own files inside DATA_DIR (embedding cache, adapters)
_FOLDERS = (("imagesTr", ("labelsTr",)), ("imagesTs", ("labelsTs",)), ("images", ("labels", "masks")))
_NIFTI = (".nii.gz", ".nii")
_IMAGES_2D = (".png", ".tif", ".tiff", ".bmp", ".jpg", ".jpeg", ".dcm", ".dicom")


@dataclass(frozen=True)
class StudioCase:
    """One image of the folder and the path its label has (or will have)."""

    key: str
    image: Path
    label: Path
    folder: str  # the image's folder below the root ("." for a flat folder)
    is_2d: bool = False


def inside(path: Path, root: Path) -> bool:
    """Whether ``path`` (links followed) lies inside ``root`` (resolved)."""
    try:
        path.resolve().relative_to(root)
    except (ValueError, OSError):
        return False
    return True


class CaseFolder:
    """The cases of ``root`` (see the module docstring), its classes and its modality."""

    def __init__(self, root: str | Path):
        root = Path(root)
        if not root.is_dir():
            raise MedadaptError("the studio needs a folder of cases.", path=root,
                                fix="give an MSD / nnU-Net folder (imagesTr/) or a folder of NIfTI volumes.")
        self.root = root.resolve()
        meta = self._dataset_json()
        self.name = str(meta.get("name") or self.root.name)
        self.classes: dict[int, str] = (classes_from_dataset_json(meta.get("labels") or {}, self.root / "dataset.json")
                                        or {1: "foreground"})
        channels = meta.get("channel_names") or meta.get("modality") or {}
        self.modality = modality_key(next(iter(channels.values()), None))
        self.cases: dict[str, StudioCase] = {}
        for image_dir, label_dir in self._folders():
            existing = _labels_by_key(label_dir)
            for img in sorted(image_dir.iterdir()):
                suffix = full_suffix(img)
                if img.name.startswith(".") or suffix not in _NIFTI + _IMAGES_2D or not img.is_file():
                    continue
                if not inside(img, self.root):
                    continue  # a link out of the folder: never served
                key = case_key(img)
                is_2d = suffix in _IMAGES_2D
                label = existing.get(key, label_dir / (key + (".png" if is_2d else suffix)))
                if key in self.cases:
                    key = f"{image_dir.name}-{key}"
                self.cases[key] = StudioCase(key, img, label, image_dir.relative_to(self.root).as_posix(), is_2d)
        if not self.cases:
            raise MedadaptError("no NIfTI volumes or 2D images found in this folder.", path=self.root,
                                fix="give an MSD / nnU-Net folder (imagesTr/), or a folder of NIfTI volumes "
                                "(.nii.gz, .nii) or 2D images (PNG, TIFF, BMP, JPEG, DICOM .dcm).")
        self._images = {c.image.resolve() for c in self.cases.values()}

    @property
    def state_dir(self) -> Path:
        return self.root / STUDIO_DIR

    def _dataset_json(self) -> dict:
        path = self.root / "dataset.json"
        if not path.is_file():
            return {}
        try:
            return json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise MedadaptError(f"cannot be read as JSON ({err}).", path=path, fix="repair dataset.json.") from err

    def _folders(self) -> list[tuple[Path, Path]]:
        found = []
        for images, labels in _FOLDERS:
            if (self.root / images).is_dir():
                label_dir = next((self.root / lab for lab in labels if (self.root / lab).is_dir()), self.root / labels[0])
                found.append((self.root / images, label_dir))
        return found or [(self.root, self.root / "labelsTr")]

    # -- lookup -------------------------------------------------------------------------------
    def case(self, key: str) -> StudioCase:
        if key not in self.cases:
            raise KeyError(key)
        return self.cases[key]

    def has_label(self, case: StudioCase) -> bool:
        return case.label.is_file() and inside(case.label, self.root)

    # -- reading ------------------------------------------------------------------------------
    def read_image(self, case: StudioCase) -> Volume:
        """The image as a volume (a 2D image: its one-slice display layout, grey)."""
        if not case.is_2d:
            return read_volume(case.image)
        import nibabel as nib  # lazy: start-up time (see medadapt.io.volumes)

        pixels = read_image_2d(case.image)
        if pixels.ndim == 3:  # colour: the luminance (the viewer and the model both get grey)
            pixels = np.rint(pixels[..., :3].astype(np.float64) @ [0.299, 0.587, 0.114]).astype(pixels.dtype)
        arr = to_display(pixels)
        header = nib.Nifti1Image(arr, np.eye(4)).header
        return Volume(arr, (1.0, 1.0, 1.0), VolumeMeta("nibabel", affine=np.eye(4), header=header), case.image)

    def read_label(self, case: StudioCase) -> np.ndarray | None:
        """The saved label (its array in the image's axis order; 2D: the display layout), or None."""
        if not self.has_label(case):
            return None
        if case.is_2d:
            return to_display(read_label_2d(case.label))
        return read_volume(case.label, label=True).array

    # -- writing ------------------------------------------------------------------------------
    def label_destination(self, case: StudioCase) -> Path:
        """Where a label of ``case`` may be written; refuses a destination outside the folder or on an image."""
        dest = case.label
        if dest.is_symlink() or not inside(dest.parent if dest.parent.exists() else self.root, self.root):
            raise MedadaptError("the label destination leads out of the studio folder.", path=dest,
                                fix="remove the link; labels are written inside the data folder only.")
        if dest.resolve() in self._images:
            raise MedadaptError("the label destination is an image of the folder.", path=dest)
        return dest

    def write_label(self, case: StudioCase, labels: np.ndarray, ref: Volume) -> Path:
        """Write ``labels`` (the image's axis order) with the image's geometry, atomically."""
        dest = self.label_destination(case)
        if not case.is_2d:
            write_like(dest, labels, ref)
        elif full_suffix(dest) != ".png":
            raise MedadaptError(f"the label of this 2D case is a {full_suffix(dest)} file; the studio writes PNG labels.",
                                path=dest, fix="convert the label to PNG (class indices), or move it aside.")
        else:
            write_mask_png(dest, from_display(labels))
        return dest


def to_display(pixels: np.ndarray) -> np.ndarray:
    """A 2D image ``H×W`` (row 0 at the top) as the viewer's one-slice volume ``W×H×1`` (``j`` upwards)."""
    return np.ascontiguousarray(pixels.T[:, ::-1])[..., None]


def from_display(volume: np.ndarray) -> np.ndarray:
    """The inverse of :func:`to_display`."""
    return np.ascontiguousarray(volume[:, ::-1, 0].T)


def _labels_by_key(folder: Path) -> dict[str, Path]:
    """Label files already in ``folder`` by case key (a 2D label may have another format than its image)."""
    if not folder.is_dir():
        return {}
    return {case_key(p): p for p in sorted(folder.iterdir())
            if p.is_file() and not p.name.startswith(".") and full_suffix(p) in _NIFTI + _IMAGES_2D + (".gif",)}


def slice_axis_of(volume: Volume) -> int:
    """The axis a volume is cut along: a single-slice axis if it has one, else the through-plane axis."""
    flat = [i for i, n in enumerate(volume.array.shape) if n == 1]
    return flat[0] if flat else default_slice_axis(volume)


def plane_of(volume: Volume, axis: int) -> str:
    """The viewer plane (axial / coronal / sagittal) whose slices run along ``axis``."""
    import nibabel as nib  # lazy: start-up time (see medadapt.io.volumes)

    code = nib.aff2axcodes(volume.affine)[axis]
    return {"S": "axial", "I": "axial", "A": "coronal", "P": "coronal"}.get(code, "sagittal")
