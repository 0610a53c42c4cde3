"""Prompt files: prompts per image name, read from JSON or CSV.

Prompt files (one per data set, keyed by image file name):

JSON::

    {"case_01.png": [{"box": [x0, y0, x1, y1], "class": 1},
                     {"points": [[x, y], [x, y]], "labels": [1, 0], "class": 2}]}

    keys per prompt: "box" and/or "points" (+ "labels", default all 1 = foreground),
    "class" (default 1), "object" (default: position in the list, from 1).
    For volumes "box" holds 6 numbers [x0, y0, z0, x1, y1, z1] (CVPR24 order).

CSV: a header with ``image`` and, per row, either a box (``x0,y0,x1,y1``, plus ``z0,z1`` columns for
3D boxes) or a point (``x,y`` and optional ``label``, default 1), plus optional ``class`` (default 1)
and ``object`` columns. Each box row is one prompt; point rows of the same image and class form one
prompt. Rows sharing an ``object`` value form one prompt (at most one box), which is how a box is
combined with points.

The JSON form is a pydantic model (:class:`PromptFile`); the CSV form groups rows into prompts by
hand, as its grouping rules (objects, point rows per class) are not a schema. Both end in
:class:`~medadapt.data.prompts.Prompt`, which checks the geometry.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, RootModel, ValidationError, field_validator

from medadapt.data.prompts import Prompt
from medadapt.errors import MedadaptError
from medadapt.io.images import file_suffix, require_file


def read_prompt_file(path: str | Path) -> dict[str, list[Prompt]]:
    """Prompts per image name from a JSON or CSV prompt file (schema in the module docstring)."""
    path = require_file(path, "prompt file")
    suffix = file_suffix(path)
    if suffix == ".json":
        prompts = _read_json(path)
    elif suffix == ".csv":
        prompts = _read_csv(path)
    else:
        raise MedadaptError(
            f"unsupported prompt file type '{suffix or '(no extension)'}'.",
            path=path,
            fix="write prompts as .json or .csv (see medadapt.data.prompt_files for the layout).",
        )
    if not prompts:
        raise MedadaptError(
            "the prompt file lists no images.", path=path, fix="add at least one image with a box or points."
        )
    for name, plist in prompts.items():
        if not plist:
            raise MedadaptError(
                f"image '{name}' has an empty prompt list.",
                path=path,
                fix="give it a box or points, or remove it.",
            )
    return prompts


def _whole_number(value, what: str, *, non_negative: bool = False) -> int:
    """``value`` (int, whole float or numeric text, never a bool) as an int; ValueError otherwise."""
    kind = "a non-negative whole number" if non_negative else "a whole number"
    try:
        number = float(value)
        whole = int(number)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"{what} must be {kind}, got {value!r}") from None
    if isinstance(value, bool) or number != whole or (non_negative and whole < 0):
        raise ValueError(f"{what} must be {kind}, got {value!r}")
    return whole


# --------------------------------------------------------------------------- JSON


class PromptEntry(BaseModel):
    """One prompt of the JSON form; geometry is checked by :class:`Prompt`."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    box: list[float] | None = None
    points: list[list[float]] | None = None
    labels: list[float] | None = None
    class_id: int = Field(1, alias="class")
    object_id: int | None = Field(None, alias="object")

    @field_validator("class_id", mode="before")
    @classmethod
    def _class(cls, value):
        return _whole_number(value, "class", non_negative=True)

    @field_validator("object_id", mode="before")
    @classmethod
    def _object(cls, value):
        return None if value is None else _whole_number(value, "object")


class PromptFile(RootModel[dict[str, list[PromptEntry]]]):
    """The JSON form: image name -> list of prompts."""


_JSON_KEYS = ("box", "class", "labels", "object", "points")


def _read_json(path: Path) -> dict[str, list[Prompt]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as err:
        raise MedadaptError(
            f"is not valid JSON ({err.msg} at line {err.lineno}, column {err.colno}).", path=path
        ) from err
    except UnicodeDecodeError as err:
        raise MedadaptError("is not a UTF-8 text file.", path=path, fix="save it as UTF-8 JSON.") from err
    try:
        parsed = PromptFile.model_validate(data)
    except ValidationError as err:
        raise _json_error(path, err) from None
    out: dict[str, list[Prompt]] = {}
    for name, entries in parsed.root.items():
        out[str(name)] = [
            _make_prompt(path, f"image '{name}', prompt {i}", e.class_id, e.box, e.points, e.labels,
                         i + 1 if e.object_id is None else e.object_id)
            for i, e in enumerate(entries)
        ]
    return out


def _json_error(path: Path, err: ValidationError) -> MedadaptError:
    """The first problem pydantic found, said with the image and prompt it concerns."""
    errors = err.errors()
    first = errors[0]
    loc = first["loc"]
    if not loc:
        return MedadaptError(
            f"must hold an object keyed by image name, found a {type(first['input']).__name__}.",
            path=path,
            fix='e.g. {"case_01.png": [{"box": [10, 20, 50, 60], "class": 1}]}',
        )
    if len(loc) == 1:
        return MedadaptError(
            f"image '{loc[0]}': expected a list of prompts, found a {type(first['input']).__name__}.", path=path
        )
    where = f"image '{loc[0]}', prompt {loc[1]}"
    if len(loc) == 2:
        return MedadaptError(f'{where}: expected an object such as {{"box": [...], "class": 1}}.', path=path)
    unknown = sorted(str(e["loc"][2]) for e in errors if e["type"] == "extra_forbidden" and e["loc"][:2] == loc[:2])
    if unknown:
        return MedadaptError(
            f"{where}: unknown key(s) {', '.join(unknown)}.", path=path, fix=f"use only: {', '.join(_JSON_KEYS)}."
        )
    field = {"class_id": "class", "object_id": "object"}.get(str(loc[2]), str(loc[2]))
    message = first["msg"].removeprefix("Value error, ")
    return MedadaptError(f"{where}: {field}: {message}.", path=path)


def _make_prompt(path: Path, where: str, cls, box, points, labels, obj) -> Prompt:
    try:
        return Prompt(
            class_id=_whole_number(cls, "class", non_negative=True),
            box=box,
            points=points,
            point_labels=labels,
            object_id=None if obj is None else _whole_number(obj, "object"),
        )
    except (TypeError, ValueError, OverflowError) as err:
        raise MedadaptError(f"{where}: {err}.", path=path) from err


# --------------------------------------------------------------------------- CSV


def _read_csv(path: Path) -> dict[str, list[Prompt]]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = [h.strip().lower() for h in (reader.fieldnames or [])]
            rows = [
                {k.strip().lower(): (v or "").strip() for k, v in r.items() if k is not None} for r in reader
            ]
    except (UnicodeDecodeError, csv.Error) as err:
        raise MedadaptError(
            f"cannot be read as CSV ({err}).", path=path, fix="save it as a UTF-8, comma-separated file."
        ) from err
    has_box = {"x0", "y0", "x1", "y1"} <= set(header)
    has_z = {"z0", "z1"} <= set(header)
    has_pt = {"x", "y"} <= set(header)
    if "image" not in header or not (has_box or has_pt):
        raise MedadaptError(
            f"CSV columns are {', '.join(header) or '(none)'}; expected image,class,x0,y0,x1,y1 and/or image,class,x,y,label.",
            path=path,
        )
    groups: dict[tuple, dict] = {}  # insertion-ordered: prompts keep file order
    for line, row in enumerate(rows, start=2):
        where = f"row {line}"
        image = row.get("image", "")
        if not image:
            raise MedadaptError(f"{where}: the image name is empty.", path=path)
        box = _csv_numbers(path, where, row, ("x0", "y0", "x1", "y1")) if has_box else None
        z = _csv_numbers(path, where, row, ("z0", "z1")) if has_z else None
        if z is not None:
            if box is None:
                raise MedadaptError(f"{where}: z0,z1 are filled in without x0,y0,x1,y1.", path=path)
            box = [box[0], box[1], z[0], box[2], box[3], z[1]]
        point = _csv_numbers(path, where, row, ("x", "y")) if has_pt else None
        if box is None and point is None:
            raise MedadaptError(
                f"{where}: neither a box (x0,y0,x1,y1) nor a point (x,y) is filled in.", path=path
            )
        cls = row.get("class") or "1"
        obj = row.get("object") or None
        key = (
            (image, "object", obj)
            if obj
            else (image, "box", line)
            if box is not None
            else (image, "points", cls)
        )
        g = groups.setdefault(
            key, {"image": image, "class": cls, "object": obj, "box": None, "points": [], "labels": []}
        )
        if g["class"] != cls:
            raise MedadaptError(
                f"{where}: object {obj} was given class {g['class']} before and {cls} here.", path=path
            )
        if box is not None:
            if g["box"] is not None:
                raise MedadaptError(
                    f"{where}: object {obj} of image '{image}' has a second box.",
                    path=path,
                    fix="one box per object.",
                )
            g["box"] = box
        if point is not None:
            g["points"].append(point)
            g["labels"].append(row.get("label") or "1")
    out: dict[str, list[Prompt]] = {}
    for g in groups.values():
        plist = out.setdefault(g["image"], [])
        where = f"image '{g['image']}'" + (f", object {g['object']}" if g["object"] else "")
        try:
            labels = [float(v) for v in g["labels"]]
        except ValueError as err:
            raise MedadaptError(f"{where}: point labels must be 0 or 1 ({err}).", path=path) from err
        plist.append(
            _make_prompt(
                path,
                where,
                g["class"],
                g["box"],
                g["points"] or None,
                labels or None,
                g["object"] if g["object"] else len(plist) + 1,
            )
        )
    return out


def _csv_numbers(path: Path, where: str, row: dict, cols: Sequence[str]) -> list[float] | None:
    cells = [row.get(c, "") for c in cols]
    if not any(cells):
        return None
    if not all(cells):
        raise MedadaptError(f"{where}: {', '.join(cols)} must all be filled in together.", path=path)
    try:
        return [float(v) for v in cells]
    except ValueError as err:
        raise MedadaptError(f"{where}: {', '.join(cols)} must be numbers ({err}).", path=path) from err


__all__ = ["PromptEntry", "PromptFile", "read_prompt_file"]
