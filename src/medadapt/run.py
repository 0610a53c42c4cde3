"""The run folder: the one owner of its layout, its guard, and the files every command reads from it.

A fit writes one folder (``--out``) that predict, evaluate, export, merge and report read back::

    RUN/
      fit_config.json      every option of the fit
      split.json           the exact cases (one schema for all tasks: format / train / val / test / info)
      adapter/             the artifact: adapter.safetensors + adapter.json (see medadapt.adapt.artifact)
      checkpoint/last.pt   resume state (best.pt: trainable weights at the best validation)
      config.json          the trainer's settings
      metrics.csv, tb/     training curves
      result.json          the fit's summary (best validation metric, wall time, ...)
      postprocess.json     post-processing chosen after the fit (automatic mode: keep_largest)
      selection.json       ``fit --method best``: every candidate's cross-validated score, time and status

An *ensemble run* (``fit --method best`` when the ensemble wins) holds, instead of ``adapter/``,
``ensemble.json`` naming its member run folders (``members/NAME``, each a normal run); every
command that takes ``--adapter RUN`` then uses the members' ensemble
(:class:`medadapt.infer.ensemble.EnsemblePredictor`).

Nothing outside this module spells these names. :class:`RunFolder` also resolves "a run or its adapter
folder" (both are accepted wherever a run is), refuses to start a fit over a finished one unless it
resumes, and reads ``adapter.json``'s task-specific ``extra`` as a typed model
(:data:`AdapterInfo`, discriminated on ``task``). Older run folders still read: a classify
``split.json`` written before the common schema, and ``keep_largest`` stored inside ``adapter.json``
(before ``postprocess.json`` existed).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from medadapt.adapt.artifact import ADAPTER_JSON, ADAPTER_TENSORS, read_adapter_meta
from medadapt.data.fewshot import Split, load_split, make_fit_split, save_split
from medadapt.errors import MedadaptError
from medadapt.io.atomic import write_json

FIT_CONFIG = "fit_config.json"
RESULT = "result.json"
SPLIT = "split.json"
ADAPTER = "adapter"
CHECKPOINT = "checkpoint"
LAST = "last.pt"
BEST = "best.pt"
METRICS = "metrics.csv"
TENSORBOARD = "tb"
TRAIN_CONFIG = "config.json"
POSTPROCESS = "postprocess.json"
REPORT = "report"
#: Files of a fit, relative to the run folder (what tells a run folder from other folders).
FIT_FILES = (FIT_CONFIG, SPLIT, RESULT, METRICS, f"{ADAPTER}/{ADAPTER_JSON}")
#: Sub-folders a fit writes (never an evaluation folder).
FIT_SUBFOLDERS = (ADAPTER, CHECKPOINT, TENSORBOARD, REPORT)
#: The summary of ``medadapt evaluate --out``.
SUMMARY = "summary.json"
#: The index of a per-modality adapter bank (``medadapt fit-modalities --out``).
BANK = "modalities.json"
#: The members of an ensemble run (``fit --method best``), relative to the run folder.
ENSEMBLE = "ensemble.json"
#: The candidates ``fit --method best`` scored, and the one it chose.
SELECTION = "selection.json"

__all__ = [
    "ADAPTER", "BANK", "ENSEMBLE", "FIT_CONFIG", "FIT_FILES", "FIT_SUBFOLDERS", "METRICS", "POSTPROCESS", "RESULT", "SELECTION", "SPLIT", "SUMMARY",
    "AdapterInfo", "ClassifyAdapterInfo", "RunFolder", "SegmentAdapterInfo", "VolumetricAdapterInfo",
    "adapter_dir", "adapter_info", "automatic_mode", "ensemble_members", "is_bank", "is_ensemble", "trained_slice_axis",
]


# ----------------------------------------------------------------------------- adapter metadata
class SegmentAdapterInfo(BaseModel):
    """``extra`` of a SAM-family (segment) adapter."""

    model_config = ConfigDict(extra="allow")
    task: Literal["segment"] = "segment"
    prompt: str = "box"
    classes: list[int] = Field(default_factory=list)
    slice_axis: int | None = None
    class_prompt_tokens: int = 0
    keep_largest: list[int] | None = None  # written here before postprocess.json existed

    @property
    def automatic(self) -> bool:
        return self.prompt == "auto"


class ClassifyAdapterInfo(BaseModel):
    """``extra`` of a classifier adapter: the classifier's description (classes, backbone, input)."""

    model_config = ConfigDict(extra="allow")
    task: Literal["classify"] = "classify"
    classify: dict[str, Any]


class VolumetricAdapterInfo(BaseModel):
    """``extra`` of a 3D (volumetric) adapter."""

    model_config = ConfigDict(extra="allow")
    task: Literal["volumetric"] = "volumetric"
    roi_size: list[int] | None = None
    sigmoid: bool | None = None
    label_values: list[int] = Field(default_factory=list)
    largest_component: bool = False


AdapterInfo = Annotated[SegmentAdapterInfo | ClassifyAdapterInfo | VolumetricAdapterInfo,
                        Field(discriminator="task")]
_ADAPTER_INFO: TypeAdapter = TypeAdapter(AdapterInfo)


def adapter_info(meta: dict) -> SegmentAdapterInfo | ClassifyAdapterInfo | VolumetricAdapterInfo:
    """The typed ``extra`` of an ``adapter.json`` (older files name no task: it is told by their keys)."""
    extra = dict(meta.get("extra") or {})
    if "task" not in extra:
        extra["task"] = ("classify" if "classify" in extra
                         else "volumetric" if "roi_size" in extra or "label_values" in extra else "segment")
    return _ADAPTER_INFO.validate_python(extra)


def automatic_mode(meta: dict) -> tuple[list[int] | None, list[int]]:
    """(classes, keep_largest stored in the adapter) of an automatic-mode adapter; (None, []) otherwise.

    Use :meth:`RunFolder.automatic_mode` where the run folder is known: it also reads ``postprocess.json``.
    """
    info = adapter_info(meta)
    if not isinstance(info, SegmentAdapterInfo) or not info.automatic:
        return None, []
    return list(info.classes), [int(c) for c in info.keep_largest or []]


def trained_slice_axis(meta: dict) -> int | None:
    """The volume axis an adapter's training slices were cut along (``fit --slice-axis``), None if by spacing."""
    info = adapter_info(meta)
    axis = getattr(info, "slice_axis", None)
    return None if axis is None else int(axis)


def adapter_dir(path: str | Path) -> Path:
    """The adapter folder of a run folder (``RUN/adapter``) or of the adapter folder itself."""
    return RunFolder.resolve(path).adapter_dir


def is_bank(path: str | Path) -> bool:
    """Whether ``path`` is a per-modality adapter bank (``fit-modalities --out``)."""
    return (Path(path) / BANK).is_file()


def is_ensemble(path: str | Path) -> bool:
    """Whether ``path`` is an ensemble run (``ensemble.json``: member run folders)."""
    return (Path(path) / ENSEMBLE).is_file()


def ensemble_members(path: str | Path) -> list[Path]:
    """The member run folders of the ensemble run at ``path`` (each checked to be a run)."""
    data = read_json(Path(path) / ENSEMBLE) or {}
    members = data.get("members")
    if not isinstance(members, list) or len(members) < 2:
        raise MedadaptError("names fewer than two member runs ('members').", path=Path(path) / ENSEMBLE,
                            fix="re-run `medadapt fit --method best` that wrote it.")
    folders = [Path(path) / str(m) for m in members]
    for folder in folders:
        RunFolder.resolve(folder)  # a clear error when a member is missing
    return folders


# ----------------------------------------------------------------------------- the folder
class RunFolder:
    """Paths and files of one run folder (see the module docstring)."""

    def __init__(self, root: str | Path, *, adapter_dir: str | Path | None = None):
        self.root = Path(root)
        self.adapter_dir = Path(adapter_dir) if adapter_dir is not None else self.root / ADAPTER

    def __repr__(self) -> str:
        return f"RunFolder({str(self.root)!r})"

    # -- resolving --------------------------------------------------------------------------
    @classmethod
    def resolve(cls, path: str | Path) -> RunFolder:
        """The run of ``path``: a run folder (holding ``adapter/``) or an adapter folder (holding
        ``adapter.json``; its run is the parent folder)."""
        path = Path(path)
        if (path / ADAPTER).is_dir():
            return cls(path)
        if (path / ADAPTER_JSON).is_file():
            return cls(path.parent, adapter_dir=path)
        raise MedadaptError(
            "is not a medadapt run or adapter folder (no adapter/adapter.json inside).",
            path=path,
            fix="pass the --out folder of `medadapt fit` once it has saved its best model.",
        )

    # -- paths -----------------------------------------------------------------------------
    @property
    def fit_config_path(self) -> Path:
        return self.root / FIT_CONFIG

    @property
    def result_path(self) -> Path:
        return self.root / RESULT

    @property
    def split_path(self) -> Path:
        return self.root / SPLIT

    @property
    def selection_path(self) -> Path:
        return self.root / SELECTION

    @property
    def ensemble_path(self) -> Path:
        return self.root / ENSEMBLE

    @property
    def postprocess_path(self) -> Path:
        return self.root / POSTPROCESS

    @property
    def metrics_path(self) -> Path:
        return self.root / METRICS

    @property
    def train_config_path(self) -> Path:
        """The trainer's own settings (``TrainConfig``), written when training starts."""
        return self.root / TRAIN_CONFIG

    @property
    def tensorboard_dir(self) -> Path:
        return self.root / TENSORBOARD

    @property
    def report_dir(self) -> Path:
        return self.root / REPORT

    @property
    def checkpoint_dir(self) -> Path:
        return self.root / CHECKPOINT

    @property
    def last_checkpoint(self) -> Path:
        return self.checkpoint_dir / LAST

    @property
    def best_checkpoint(self) -> Path:
        return self.checkpoint_dir / BEST

    @property
    def adapter_json(self) -> Path:
        return self.adapter_dir / ADAPTER_JSON

    @property
    def adapter_tensors(self) -> Path:
        return self.adapter_dir / ADAPTER_TENSORS

    def adapter_bytes(self) -> int | None:
        """Size of the saved adapter tensors (None before the first save)."""
        return self.adapter_tensors.stat().st_size if self.adapter_tensors.exists() else None

    # -- state -----------------------------------------------------------------------------
    def has_run(self) -> bool:
        """A fit started here and saved resume state."""
        return self.last_checkpoint.is_file()

    def has_fit_files(self) -> bool:
        """Any file a fit writes (a folder that is not a fresh or a bank folder)."""
        return self.adapter_dir.exists() or self.checkpoint_dir.exists()

    def guard_new(self, resume: bool, *, what: str = "run") -> None:
        """Refuse to start a new training run over one (``resume`` continues it instead)."""
        if not resume and self.last_checkpoint.exists():
            raise MedadaptError(
                f"this {'run ' if what == 'run' else ''}folder already holds a {what}.", path=self.root,
                fix="pass --resume to continue it, or choose another --out.",
            )

    def require_resumable(self) -> None:
        """A clear error when ``--resume`` finds nothing to resume."""
        if not self.has_run():
            raise MedadaptError(f"there is no run to resume here ({CHECKPOINT}/{LAST} is missing)", path=self.root,
                                fix="start it without --resume")

    # -- config and result -----------------------------------------------------------------
    def write_fit_config(self, config: dict) -> None:
        write_json(self.fit_config_path, config)

    def read_fit_config(self, *, required: bool = False) -> dict:
        """``fit_config.json`` ({} when missing, unless ``required``)."""
        return self._read(self.fit_config_path, required=required,
                          fix="pass the --out folder of `medadapt fit`.") or {}

    def write_result(self, result: dict) -> None:
        write_json(self.result_path, result)

    def read_result(self) -> dict | None:
        return self._read(self.result_path)

    def read_adapter_meta(self) -> dict:
        """``adapter.json``, checked (see :func:`medadapt.adapt.artifact.read_adapter_meta`)."""
        return read_adapter_meta(self.adapter_dir)

    def adapter_info(self) -> SegmentAdapterInfo | ClassifyAdapterInfo | VolumetricAdapterInfo:
        return adapter_info(self.read_adapter_meta())

    # -- split -----------------------------------------------------------------------------
    def write_split(self, split: Split) -> None:
        save_split(self.split_path, split)

    def read_split(self, dataset=None) -> Split:
        """``split.json`` in the common schema; a classify split written before it is converted."""
        return read_split_file(self.split_path, dataset)

    def fit_split(self, dataset, *, split: str | Path | None = None, resume: bool = False, shots: int | None = None,
                  fraction: float | None = None, seed: int = 0, n_val: int | None = None,
                  test: float | None = None) -> Split:
        """The split of a fit: a given split file, the run's own when resuming, else a new one
        (``test=0``: every labelled case trains, see :func:`medadapt.data.fewshot.make_fit_split`)."""
        if split:
            return load_split(split, dataset)
        if resume and self.split_path.exists():
            return self.read_split(dataset)
        return make_fit_split(dataset, shots=shots, fraction=fraction, seed=seed, n_val=n_val, test=test)

    # -- post-processing -------------------------------------------------------------------
    def write_postprocess(self, keep_largest: list[int], report: dict) -> None:
        write_json(self.postprocess_path, {"keep_largest": [int(c) for c in keep_largest], "report": report})

    def read_postprocess(self) -> dict | None:
        """``postprocess.json``; for older runs, the choice stored in ``adapter.json`` and ``result.json``."""
        data = self._read(self.postprocess_path)
        if data is not None:
            return data
        if not self.adapter_json.is_file():
            return None
        info = self.adapter_info()
        if isinstance(info, SegmentAdapterInfo) and info.keep_largest is not None:
            result = self.read_result() if self.result_path.is_file() else None
            return {"keep_largest": list(info.keep_largest), "report": (result or {}).get("postprocessing")}
        return None

    def keep_largest(self) -> list[int]:
        post = self.read_postprocess()
        return [int(c) for c in (post or {}).get("keep_largest", [])]

    def automatic_mode(self) -> tuple[list[int] | None, list[int]]:
        """(classes, keep_largest) of an automatic-mode run; (None, []) for a prompted one."""
        classes, _ = automatic_mode(self.read_adapter_meta())
        return (None, []) if classes is None else (classes, self.keep_largest())

    # -- helpers ---------------------------------------------------------------------------
    @staticmethod
    def _read(path: Path, *, required: bool = False, fix: str | None = None) -> dict | None:
        if required and not path.is_file():
            raise MedadaptError(f"{path.name} is missing.", path=path.parent, fix=fix)
        return read_json(path)


def read_json(path: Path) -> dict | None:
    """A run file's JSON object; None when the file is missing, a clear error when it is not one."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise MedadaptError(f"cannot be read as JSON ({err}).", path=path,
                            fix="re-run the command that wrote it, or delete the file.") from None
    if not isinstance(data, dict):
        raise MedadaptError("holds JSON but not an object.", path=path, fix="re-run the command that wrote it.")
    return data


def read_split_file(path: str | Path, dataset=None) -> Split:
    """A ``split.json`` in the common schema, or a classify split written before it (no ``format``)."""
    path = Path(path)
    if path.is_file():
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            data = None
        if isinstance(data, dict) and "format" not in data and "data" in data and "train" in data:
            info = {k: v for k, v in data.items() if k not in ("train", "val")}
            return Split(data["train"], data.get("val") or [], (), info)
    return load_split(path, dataset)

