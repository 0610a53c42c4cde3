"""``medadapt fit`` as one library call: train (any task), then tune post-processing, then write the report.

The SAM fit can fill its embedding cache with an exported encoder (``encoder_engine=openvino``);
that encoder comes from :mod:`medadapt.deploy`, which the training layer may not import, so it is
wired here, once, for every caller (``fit`` and ``fit-modalities``). The same encoder then serves
the post-processing step.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medadapt.deploy.auto import fit_encoder_engine
from medadapt.deploy.backend import frozen_encoder
from medadapt.engine.classify_fit import run_classify_fit
from medadapt.engine.sam_fit import FitOptions, run_fit
from medadapt.engine.volumetric_fit import run_volumetric_fit
from medadapt.errors import MedadaptError
from medadapt.pipeline.postprocess import tune_auto_postprocessing
from medadapt.report import write_report

__all__ = ["TASKS", "FitOutcome", "fit_run", "fit_segment"]

TASKS = ("segment", "classify", "volumetric")


@dataclass
class FitOutcome:
    """What a fit left in its run folder: the result, the post-processing report, the report page."""

    result: dict[str, Any]
    out: Path | None = None
    postprocess: dict | None = None
    report: Path | None = None


def fit_segment(opts: FitOptions, *, resume: bool = False, report: bool = True,
                notify: Callable[[str], None] | None = None) -> FitOutcome:
    """SAM-family fit → (automatic mode) keep-largest-component chosen on validation → run report.

    ``encoder_engine=auto`` (the default) fills the embedding cache with OpenVINO fp32 when it is
    installed (:func:`medadapt.deploy.auto.fit_encoder_engine`); ``notify`` gets the line saying when not.
    """
    engines: list = []  # the fit's frozen-encoder engine, if it made one, for the post-processing step too

    def engine_once(o: FitOptions):
        if not engines:
            engine, notice = fit_encoder_engine(o.encoder_engine)
            if notice and notify:
                notify(notice)
            engines.append(None if engine == "torch" else frozen_encoder(o.model_copy(update={"encoder_engine": engine})))
        return engines[0]

    result = run_fit(opts, resume=resume, frozen_encoder=engine_once)
    post = None
    if opts.prompt == "auto" and result["val_cases"]:
        post = tune_auto_postprocessing(opts.out, engines[0][1] if engines and engines[0] else None)
    page = write_report(Path(opts.out)) if report else None
    return FitOutcome(result, Path(opts.out), post, page)


def fit_run(task: str, values: dict[str, Any], config_file: Path | None = None, *, resume: bool = False,
            notify: Callable[[str], None] | None = None) -> FitOutcome:
    """Fit one run of ``task`` from option ``values`` (flat names, ``--set`` pairs merged in) over a YAML file."""
    if task not in TASKS:
        raise MedadaptError(f"--task '{task}' is not one of {', '.join(TASKS)}.", fix="use --task segment")
    if task == "segment":
        return fit_segment(FitOptions.build(values, config_file), resume=resume, notify=notify)
    runner = run_classify_fit if task == "classify" else run_volumetric_fit
    result = runner(values, config_file, resume)
    return FitOutcome(result, Path(values["out"]) if values.get("out") else None)
