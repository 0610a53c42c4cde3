"""Making a per-modality adapter bank (``medadapt fit-modalities``): one SAM fit per modality group.

The bank's layout and its predictor are :mod:`medadapt.infer.modality_bank`; this is the multi-step
part (split per modality, fit, post-processing, index file), which trains and so sits above inference.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from medadapt.data.datasets import load_segmentation_dataset
from medadapt.data.fewshot import make_split, save_split
from medadapt.engine.sam_fit import FitOptions
from medadapt.errors import MedadaptError
from medadapt.infer.modality_bank import (
    BANK_FILE,
    FORMAT,
    FORMAT_VERSION,
    canonical_modality,
    group_by_modality,
)
from medadapt.io.atomic import write_json
from medadapt.io.discovery import resolve_spec
from medadapt.pipeline.fit import fit_segment
from medadapt.run import RunFolder

__all__ = ["fit_modality_bank"]


def fit_modality_bank(values: dict[str, Any], *, config_file: Path | None = None, resume: bool = False,
                      only: list[str] | None = None, default: str | None = None,
                      min_cases: int = 1) -> dict[str, Any]:
    """Run ``medadapt fit`` once per modality group of ``values["data"]`` into ``values["out"]/<modality>/``.

    ``values`` are :class:`~medadapt.engine.sam_fit.FitOptions` fields (``shots`` / ``fraction`` /
    ``seed`` apply within each modality). Writes ``modalities.json`` and returns its content plus
    ``path`` (where it was written).
    """
    base_opts = FitOptions.build(values, config_file)  # validates everything before any work
    root = Path(base_opts.out)
    if RunFolder(root).has_fit_files():
        raise MedadaptError("this folder holds a single fit run, not a modality bank.", path=root,
                            fix="choose another --out.")
    if base_opts.split:
        raise MedadaptError("--split cannot be used with fit-modalities: each modality gets its own split.")
    dataset = load_segmentation_dataset(base_opts.data, image_suffix=base_opts.image_suffix, label_suffix=base_opts.label_suffix,
                           modality=base_opts.modality, label_dir=base_opts.label_dir, window=base_opts.window,
                           binary=base_opts.binary)
    groups = group_by_modality(dataset)
    if only:
        wanted = [canonical_modality(m) for m in only]
        missing = [m for m in wanted if m not in groups]
        if missing:
            raise MedadaptError(f"modality '{missing[0]}' is not in the dataset (found: {', '.join(groups)}).",
                                path=dataset.root)
        groups = {m: groups[m] for m in wanted}
    groups = {m: keys for m, keys in groups.items() if len(keys) >= min_cases}
    if not groups:
        raise MedadaptError(f"no modality has at least {min_cases} case(s).", path=dataset.root)
    if default is not None and canonical_modality(default) not in groups:
        raise MedadaptError(f"--default '{default}' is not one of the fitted modalities ({', '.join(groups)}).")

    entries: dict[str, Any] = {}
    for mod, keys in groups.items():
        sub = _subset(dataset, keys)
        run = root / mod
        split_file = RunFolder(run).split_path
        resume_mod = resume and RunFolder(run).has_run()
        if not resume_mod:
            split = make_split(sub, shots=None if base_opts.fraction else base_opts.shots, fraction=base_opts.fraction,
                               seed=base_opts.seed, n_val=base_opts.n_val)
            save_split(split_file, split)
        opts = base_opts.model_copy(update={
            "out": str(run), "split": str(split_file), "classes": base_opts.classes or sorted(sub.classes),
        })
        # as `medadapt fit`: the same encoder engine, post-processing chosen on this modality's val cases
        outcome = fit_segment(opts, resume=resume_mod, report=False)
        result, post = outcome.result, outcome.postprocess
        entries[mod] = {
            "run": mod,
            "cases": len(keys),
            "train_cases": result["train_cases"],
            "val_cases": result["val_cases"],
            "test_cases": json.loads(split_file.read_text())["test"],
            "best_val_dsc": result.get("best_metric"),
            "fit_seconds": result.get("fit_seconds"),
            "keep_largest": post["keep_largest"] if post else [],
        }
    bank = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model": base_opts.model,
        "method": base_opts.method,
        "prompt": base_opts.prompt,
        "data": resolve_spec(base_opts.data),
        "default": canonical_modality(default) if default else (next(iter(entries)) if len(entries) == 1 else None),
        "modalities": entries,
    }
    write_json(root / BANK_FILE, bank)
    return {**bank, "path": str(root / BANK_FILE)}


def _subset(dataset, keys: list[str]):
    """The same dataset restricted to ``keys`` (its own given split filtered likewise)."""
    keep = set(keys)
    given = None
    if dataset.given_split:
        given = {part: [k for k in ks if k in keep] for part, ks in dataset.given_split.items()}
        if not given.get("train"):
            given = None
    return dataclasses.replace(dataset, cases=[c for c in dataset.cases if c.key in keep], given_split=given)
