"""Click-sequence files: the prompts of an interactive session, in order, so it can be replayed.

JSON (``format: "medadapt.clicks/1"``)::

    {"format": "medadapt.clicks/1",
     "image": "hippocampus_001", "sha256": "<sha256 of the image array>", "shape": [35, 51, 35],
     "slice_axis": 2, "mask_feedback": false, "click_reach": 0, "click_window": null, "roi_margin": null,
     "objects": [{"object": 1, "value": 1, "box": [x0, y0, z0, x1, y1, z1],
                  "clicks": [{"x": 20, "y": 31, "z": 17, "positive": true}, ...]}]}

- ``shape`` and ``sha256`` identify the image: ``sha256`` is the digest of the image array as the
  session sees it (C-order bytes after the dataset loader's normalisation, see :func:`array_sha256`),
  so a file recorded on one image is refused on another. ``slice_axis`` is null for a 2D image.
- ``mask_feedback``, ``click_reach`` and ``click_window`` are the session settings the clicks were made
  with (see :mod:`medadapt.infer.interactive`); a replay uses them again. Files without ``click_reach``
  replay with 0 (the clicked slice only), without ``click_window`` with none (a click may change its
  whole slice).
- ``roi_margin``: the zoom-in margin of the predictor the clicks were made with (null: whole slices); its
  decoder saw other inputs, so a replay with another margin is refused.
- ``box``: 2D ``[x0, y0, x1, y1]`` or the CVPR24 3D box ``[x0, y0, z0, x1, y1, z1]`` (z along
  ``slice_axis``); null when the object started from an automatic-mode prediction (``"start": "auto"``).
- ``clicks``: in the order they were made; ``x``/``y`` are pixel coordinates on the slice (column, row),
  ``z`` the slice index along ``slice_axis`` (0 for 2D images); ``positive`` true adds the clicked
  region, false removes it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, FiniteFloat, ValidationError, field_validator

from medadapt.errors import MedadaptError
from medadapt.io.atomic import write_text

CLICKS_FORMAT = "medadapt.clicks/1"


class ClickRecord(BaseModel):
    """One click: pixel ``x`` (column), ``y`` (row) on slice ``z``; ``positive`` adds, negative removes."""

    model_config = ConfigDict(extra="forbid")
    x: FiniteFloat
    y: FiniteFloat
    z: int = Field(0, ge=0)
    positive: bool = True


class ObjectRecord(BaseModel):
    """One object's prompts: its starting box (or an automatic start) and its clicks, in order."""

    model_config = ConfigDict(extra="forbid")
    object: int = Field(ge=1)
    value: int = Field(ge=1, le=65535)
    start: Literal["box", "auto"] = "box"
    box: list[FiniteFloat] | None = None
    clicks: list[ClickRecord] = Field(default_factory=list)

    @field_validator("box")
    @classmethod
    def _box_size(cls, box: list[float] | None) -> list[float] | None:
        if box is not None and len(box) not in (4, 6):
            raise ValueError(f"a box has 4 numbers (2D) or 6 (3D: x0, y0, z0, x1, y1, z1), got {len(box)}")
        return box


class ClickSequence(BaseModel):
    """Every object's prompts on one image or volume."""

    model_config = ConfigDict(extra="forbid")
    format: Literal["medadapt.clicks/1"] = CLICKS_FORMAT
    image: str
    sha256: str
    shape: list[int]
    slice_axis: int | None = None
    mask_feedback: bool = False  # whether the previous low-res mask was fed back (replay does the same)
    click_reach: int = Field(0, ge=0)  # slices each click was carried to on each side (replay does the same)
    click_window: float | None = Field(None, gt=0)  # a click's local window, x the box side (None: whole slice)
    roi_margin: float | None = Field(None, ge=0)  # zoom-in crops around each object's box (None: whole slices)
    objects: list[ObjectRecord] = Field(default_factory=list)

    def check_image(self, image: np.ndarray, *, path: str | Path | None = None) -> None:
        """Refuse to replay these clicks on another image (shape or content differ)."""
        shape = list(np.asarray(image).shape)
        if shape != list(self.shape):
            raise MedadaptError(
                f"the clicks were recorded on an image of shape {tuple(self.shape)} ('{self.image}'), "
                f"not on this one of shape {tuple(shape)}.",
                path=path, fix="replay a click file on the image it was recorded on.",
            )
        digest = array_sha256(image)
        if digest != self.sha256:
            raise MedadaptError(
                f"the clicks were recorded on another image ('{self.image}', sha256 {self.sha256[:12]}…, "
                f"this image: {digest[:12]}…).",
                path=path, fix="replay a click file on the image it was recorded on.",
            )


def array_sha256(image: np.ndarray) -> str:
    """sha256 of an array's shape, dtype and C-order bytes."""
    arr = np.ascontiguousarray(image)
    h = hashlib.sha256(f"{arr.dtype.str}{arr.shape}".encode())
    h.update(arr.tobytes())
    return h.hexdigest()


def save_clicks(path: str | Path, sequence: ClickSequence) -> None:
    """Write a click file atomically."""
    write_text(path, sequence.model_dump_json(indent=1) + "\n")


def load_clicks(path: str | Path) -> ClickSequence:
    """Read and check a click file; a clear :class:`MedadaptError` for anything malformed."""
    path = Path(path)
    if not path.is_file():
        raise MedadaptError("the click file does not exist.", path=path, fix="give the JSON written by --clicks-out.")
    try:
        raw = json.loads(path.read_text())  # Python's json reads NaN: the model refuses it below
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise MedadaptError(f"is not valid JSON ({err}).", path=path, fix="give a medadapt.clicks/1 JSON file.") from None
    try:
        return ClickSequence.model_validate(raw)
    except ValidationError as err:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(file)'}: {e['msg'].removeprefix('Value error, ')}"
            for e in err.errors()
        )
        raise MedadaptError(
            f"is not a valid click file: {problems}.", path=path,
            fix=f"follow the {CLICKS_FORMAT} format (see medadapt.data.clicks); coordinates must be finite numbers.",
        ) from None
