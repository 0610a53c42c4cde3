"""Per-modality adapters (DAFT): one adapter per modality of a dataset, one base model for all.

A *bank* is a folder ``RUN/`` holding one `medadapt fit` run per modality (``RUN/ct/``,
``RUN/mr/``, ...) and ``RUN/modalities.json`` naming them. :func:`medadapt.pipeline.modality_bank.fit_modality_bank`
makes it (the SAM fit once per modality group); :class:`ModalityBankPredictor` uses it: before each
case it selects the adapter of the case's modality.

The modality of a case, in order: what the dataset declares (CSV ``modality`` column, MSD
``dataset.json``), else the CVPR24 file-name prefix (``CT_``, ``MR_``, ``3D_CT_``, ``2DBox_US_``...);
at inference also ``--modality`` and the DICOM ``Modality`` tag.

One base model serves every modality: each adapted model is a shallow copy of the base whose
frozen tensors are *the same tensor objects* as the base's; only the tensors an adapter changes
in place (a tuned bias, a fine-tuned decoder) are cloned, and LoRA / adapter modules are new.
Switching modality swaps which copy is used; nothing is reloaded and the base stays untouched.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from medadapt.adapt.artifact import adapter_state_dict, load_adapter, read_adapter_meta
from medadapt.adapt.class_prompts import attach_auto_prompts
from medadapt.adapt.recipes import RecipeConfig, apply_recipe
from medadapt.engine.embedding_cache import EmbeddingCache, module_fingerprint
from medadapt.errors import MedadaptError
from medadapt.infer.predictor import SamPredictor
from medadapt.models.registry import build_model, get_sam_spec
from medadapt.run import BANK as BANK_FILE
from medadapt.run import RunFolder, trained_slice_axis

FORMAT = "medadapt.modality_bank"
FORMAT_VERSION = 1

# Modality tokens of CVPR24 file names, and common spellings, -> one canonical name.
_CANONICAL = {
    "ct": "ct", "mr": "mr", "mri": "mr", "pet": "pet", "pt": "pet", "spect": "spect",
    "us": "us", "ultrasound": "us", "xray": "xray", "x-ray": "xray", "cxr": "xray", "dx": "xray", "cr": "xray",
    "mammography": "mammography", "mammo": "mammography", "mg": "mammography",
    "endoscopy": "endoscopy", "dermoscopy": "dermoscopy", "fundus": "fundus", "oct": "oct",
    "microscopy": "microscopy", "histopathology": "histopathology",
}
# Normalisation keys that say nothing about the modality.
_UNDECLARED = {"auto", "rgb", "none", ""}
_PREFIX = re.compile(r"^(?:[23]d(?:box)?_)?([a-z-]+)_", re.IGNORECASE)


def canonical_modality(name: str | None) -> str | None:
    """``"MRI"`` -> ``"mr"``, ``"X-ray"`` -> ``"xray"``; other declared names are kept, lower-cased."""
    if name is None:
        return None
    key = name.strip().lower()
    if key in _UNDECLARED:
        return None
    return _CANONICAL.get(key, re.sub(r"[^a-z0-9_-]+", "_", key))


def modality_from_filename(path: str | Path) -> str | None:
    """CVPR24 naming: ``CT_Abd_...``, ``MR_...``, ``3D_CT_...``, ``2DBox_XRay_...`` (known tokens only)."""
    m = _PREFIX.match(Path(path).name)
    if not m:
        return None
    return _CANONICAL.get(m.group(1).lower())


def modality_from_dicom(path: str | Path) -> str | None:
    if Path(path).suffix.lower() not in (".dcm", ".dicom"):
        return None
    try:
        import pydicom

        value = pydicom.dcmread(str(path), stop_before_pixels=True).get("Modality")
    except Exception:  # unreadable header: no modality, the caller decides
        return None
    return canonical_modality(str(value)) if value else None


def case_modality(ref) -> str | None:
    """Modality of a dataset case (:class:`~medadapt.data.datasets.CaseRef`): declared, else file name."""
    return canonical_modality(ref.modality) or modality_from_filename(ref.image)


def file_modality(path: str | Path, declared: str | None = None) -> str | None:
    """Modality of an input file at inference: ``declared`` (e.g. ``--modality ct``), name prefix, DICOM tag."""
    return canonical_modality(declared) or modality_from_filename(path) or modality_from_dicom(path)


def group_by_modality(dataset) -> dict[str, list[str]]:
    """Case keys per modality; every case must have one."""
    groups: dict[str, list[str]] = {}
    unknown = []
    for ref in dataset.cases:
        mod = case_modality(ref)
        if mod is None:
            unknown.append(ref)
        else:
            groups.setdefault(mod, []).append(ref.key)
    if unknown:
        raise MedadaptError(
            f"the modality of {len(unknown)} case(s) is unknown (e.g. {unknown[0].image.name}).",
            path=dataset.root,
            fix="add a 'modality' column to the CSV, declare it in dataset.json, or name files with a CVPR24 "
                "prefix such as CT_ / MR_ / XRay_.",
        )
    return dict(sorted(groups.items()))


# ----------------------------------------------------------------------------- the bank file
def read_bank(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    file = path / BANK_FILE
    try:
        bank = json.loads(file.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise MedadaptError(f"{BANK_FILE} cannot be read ({err}).", path=file) from None
    if not isinstance(bank, dict) or bank.get("format") != FORMAT or not isinstance(bank.get("modalities"), dict):
        raise MedadaptError(f"{BANK_FILE} is not a medadapt modality bank.", path=file)
    if not bank["modalities"]:
        raise MedadaptError(f"{BANK_FILE} lists no modality.", path=file)
    return bank


# ----------------------------------------------------------------------------- one base, many adapters
def _tensors(module: nn.Module):
    yield from module.parameters()
    yield from module.buffers()


def adapted_copy(base: nn.Module, adapter: str | Path) -> nn.Module:
    """``base`` + ``adapter`` as a new module sharing every tensor of ``base`` the adapter leaves unchanged.

    A throw-away copy first shows which base tensors the recipe trains in place (their storage is
    in the adapter's state dict); those are cloned in the real copy, everything else is shared.
    """
    meta = read_adapter_meta(adapter)
    shared_all = {id(t): t for t in _tensors(base)}
    flags = [(p, p.requires_grad) for p in base.parameters()]
    probe = copy.deepcopy(base, dict(shared_all))
    attach_auto_prompts(probe, meta)  # automatic-mode recipes also train the class prompts
    apply_recipe(probe, RecipeConfig.model_validate(meta["recipe"]))  # (un)freezes shared tensors too
    touched = {t.data_ptr() for t in adapter_state_dict(probe).values()}
    del probe
    for p, flag in flags:
        p.requires_grad_(flag)
    memo = {i: t for i, t in shared_all.items() if t.data_ptr() not in touched}
    model = copy.deepcopy(base, memo)
    attach_auto_prompts(model, meta)
    load_adapter(model, adapter)
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


class ModalityBankPredictor(SamPredictor):
    """A :class:`SamPredictor` that switches adapter per modality (:meth:`select`)."""

    def __init__(self, models: Mapping[str, nn.Module], spec, *, classes: Mapping[str, list | None] | None = None,
                 keep_largest: Mapping[str, list[int]] | None = None, default: str | None = None, **kwargs):
        if not models:
            raise ValueError("a modality bank needs at least one model")
        self.models = dict(models)
        self.modality_classes = dict(classes or {})
        self.modality_keep_largest = dict(keep_largest or {})  # auto-mode post-processing chosen per modality
        self.default = default if default is not None else (next(iter(self.models)) if len(self.models) == 1 else None)
        first = self.default or next(iter(self.models))
        super().__init__(self.models[first], spec, classes=self.modality_classes.get(first), **kwargs)
        self._caches = {}
        if self.cache is not None:  # one embedding cache per adapted encoder

            for mod, m in self.models.items():
                key = f"{spec.name}:{self.precision}:{mod}:{module_fingerprint(m.image_encoder)}"
                self._caches[mod] = EmbeddingCache(self._encode_chunked, key, directory=self.cache.directory)
        self.modality = None
        self.select(first)

    def select(self, modality: str | None, *, source: str | Path | None = None) -> str:
        """Use the adapter of ``modality`` (the bank's default when None); returns the modality used."""
        mod = canonical_modality(modality) if modality is not None else self.default
        if mod not in self.models:
            known = ", ".join(self.models)
            what = f"no adapter for modality '{mod}'" if mod else "the modality of this image is unknown"
            raise MedadaptError(
                f"{what}; the bank holds: {known}.", path=source,
                fix="pass --modality with one of them, or name files with a CVPR24 prefix such as CT_ / MR_.",
            )
        self.modality = mod
        self.model = self.models[mod]
        self.classes = self.modality_classes.get(mod)
        self.keep_largest = list(self.modality_keep_largest.get(mod, []))
        if self._caches:
            self.cache = self._caches[mod]
        return mod

    def select_for_file(self, path: str | Path, declared: str | None = None) -> str:
        return self.select(file_modality(path, declared), source=path)


def load_bank_predictor(bank_dir: str | Path, *, model: str | None = None, checkpoint: str | Path | None = None,
                        keep_largest: Sequence[int] | None = None, **kwargs) -> ModalityBankPredictor:
    """Build the base model once and every modality's adapter on it.

    ``keep_largest`` replaces every modality's own post-processing choice (None: each run's own).
    """
    bank_dir = Path(bank_dir)
    bank = read_bank(bank_dir)
    runs = {mod: RunFolder.resolve(bank_dir / entry["run"]) for mod, entry in bank["modalities"].items()}
    folders = {mod: run.adapter_dir for mod, run in runs.items()}
    metas = {mod: run.read_adapter_meta() for mod, run in runs.items()}
    bases = {json.dumps((m.get("base") or {}), sort_keys=True) for m in metas.values()}
    if len(bases) != 1:
        raise MedadaptError("the bank's adapters were trained on different base models.", path=bank_dir / BANK_FILE)
    axes = {mod: trained_slice_axis(m) for mod, m in metas.items()}
    if len(set(axes.values())) != 1:  # one axis for the whole bank: volumes are cut before routing
        told = ", ".join(f"{mod}: {'by spacing' if a is None else a}" for mod, a in axes.items())
        raise MedadaptError(f"the bank's adapters were trained on slices cut along different axes ({told}).",
                            path=bank_dir / BANK_FILE,
                            fix="fit the bank again with one axis: `medadapt fit-modalities ... --set slice_axis=N "
                                "--out NEW_BANK`.")
    base_info = next(iter(metas.values())).get("base") or {}
    name = model or base_info.get("model") or bank.get("model")
    if model is not None and base_info.get("model") not in (None, get_sam_spec(model).name):
        raise MedadaptError(f"this bank was trained on '{base_info.get('model')}', not '{model}'.", path=bank_dir,
                            fix=f"use --model {base_info.get('model')} (or leave --model out).")
    base = build_model(name, checkpoint=checkpoint or base_info.get("checkpoint")).eval()
    for p in base.parameters():
        p.requires_grad_(False)
    models, classes, keep = {}, {}, {}
    for mod, folder in folders.items():
        models[mod] = adapted_copy(base, folder)
        classes[mod], keep[mod] = runs[mod].automatic_mode()
        if keep_largest is not None:
            keep[mod] = [int(c) for c in keep_largest]
    # predict / evaluate cut volumes along the axis the adapters were trained on
    return ModalityBankPredictor(models, get_sam_spec(name), classes=classes, keep_largest=keep,
                                 default=bank.get("default"), slice_axis=next(iter(axes.values())), **kwargs)
