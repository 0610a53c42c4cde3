"""Apply a finished run to new, unlabelled images: ``fit ... --predict DIR`` and ``predict --adapter RUN``.

The run's task (from its adapter metadata) picks the path: SAM-family runs segment without prompts
(an automatic-mode adapter, ``--prompt auto``) on the engine ``--engine auto`` chooses
(:mod:`medadapt.deploy.auto`); volumetric runs segment with the sliding window; classification runs
write a CSV of class probabilities. Segmentations keep each input's name and geometry (NIfTI header);
everything is written atomically, only after every input succeeded.
"""

from __future__ import annotations

from pathlib import Path

from medadapt.deploy.auto import resolve_engine
from medadapt.errors import MedadaptError
from medadapt.infer.cases import PredictOptions
from medadapt.infer.factory import PredictorSpec
from medadapt.infer.run_predict import predict_classes, predict_volumes, run_task
from medadapt.io.discovery import ALL_SUFFIXES, VOLUME_SUFFIXES, find_files
from medadapt.pipeline.predict import predict_folder
from medadapt.precision import TORCH_PRECISIONS, parse_precision
from medadapt.run import RunFolder, is_ensemble

PREDICTIONS_DIR = "predictions"
PROBABILITIES_CSV = "probabilities.csv"


def check_predict_source(task: str, source: str | Path, prompt: str | None = None) -> None:
    """Refuse, before a fit starts, a ``--predict`` that could not run after it."""
    if task == "segment" and (prompt or "box") != "auto":
        raise MedadaptError(
            f"--predict segments new images without prompts, but this fit trains a --prompt {prompt or 'box'} adapter.",
            fix="fit with --prompt auto, or drop --predict and run `medadapt predict --adapter RUN --prompts FILE` "
                "with a prompt file for the new images.",
        )
    if task == "classify":
        if not Path(source).exists():
            raise MedadaptError("the --predict input does not exist.", path=source, fix="check the path.")
        return
    find_files(source, VOLUME_SUFFIXES if task == "volumetric" else ALL_SUFFIXES, what="--predict input")


def classification_csv(out: Path) -> Path:
    """``out`` itself when it names a .csv file, else ``out/probabilities.csv``."""
    return out if out.suffix.lower() == ".csv" else out / PROBABILITIES_CSV


def apply_run(run: Path, source: Path, out: Path | None = None, *, engine: str = "auto", precision: str | None = None,
              batch_size: int | None = None, threads: int | None = None, progress=None) -> tuple[str, Path, int]:
    """Predict every image of ``source`` with the run ``run``; returns (task, where, how many)."""
    task = run_task(run)
    root = Path(run) if is_ensemble(run) else RunFolder.resolve(run).root
    out = Path(out) if out is not None else root / PREDICTIONS_DIR
    if task != "segment":
        if engine not in ("auto", "torch"):
            raise MedadaptError(f"a {task} run predicts with PyTorch (fp32 or bf16), not --engine {engine}.",
                                fix="leave --engine at its default (or pass --engine torch).")
        if precision is not None:
            precision = parse_precision(precision, allowed=TORCH_PRECISIONS,
                                        fix=f"a {task} run predicts with PyTorch: use --precision fp32 or bf16").value
        if task == "classify":
            path = predict_classes(run, source, classification_csv(out), batch_size=batch_size or 64,
                                   precision=precision or "fp32")
            return task, path, sum(1 for _ in path.open()) - 1
        inputs = find_files(source, VOLUME_SUFFIXES, what="input")
        written = predict_volumes(run, inputs, out, batch_size=batch_size or 4, precision=precision or "fp32",
                                  progress=progress)
        return task, out, len(written)
    return task, out, _segment_auto(run, source, out, engine=engine, precision=precision, batch_size=batch_size,
                                    threads=threads, progress=progress)


def _segment_auto(run: Path, source: Path, out: Path, *, engine, precision, batch_size, threads, progress) -> int:
    engine, precision, _ = resolve_engine(engine, precision)
    spec = PredictorSpec(adapters=(Path(run),), backend=engine, precision=precision, batch_size=batch_size,
                         threads=threads)
    done = predict_folder(spec, source, out, prompts="auto", options=PredictOptions(),
                          progress=(lambda n: progress) if progress else None)
    return done["cases"]
