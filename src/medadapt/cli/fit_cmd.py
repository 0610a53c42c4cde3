"""``medadapt fit``: few-shot, parameter-efficient adaptation of a foundation model."""

from __future__ import annotations

from pathlib import Path

import typer

from medadapt.cli.common import console, set_threads, user_errors


def _recipes_help() -> str:
    from medadapt.adapt.recipes import RECIPES

    return ("Recipe: " + ", ".join(RECIPES) + " (see `medadapt recipes`); or best: choose among prompt-free 3D U-Net "
            "and SAM-family recipes (and their ensemble) by cross-validation on the training cases within --budget; "
            "SAM-family recipes only for 2D images (docs/best.md).")


@user_errors
def fit(
    task: str = typer.Option("segment", "--task", help="segment (SAM-family 2D/slice-wise) | classify | volumetric (3D)."),
    data: str | None = typer.Option(None, "--data", "-d", help="Dataset spec: MSD folder, CSV, npz folder, IMG:MASK folders."),
    out: str | None = typer.Option(None, "--out", "-o", help="Run folder."),
    model: str | None = typer.Option(None, "--model", "-m", help="Base model (default litemedsam)."),
    checkpoint: str | None = typer.Option(None, "--checkpoint", help="Official checkpoint file of the base model."),
    method: str | None = typer.Option(None, "--method", help=_recipes_help()),
    prompt: str | None = typer.Option(None, "--prompt", help="box | point | hybrid | click (box + simulated corrective clicks: for interactive use) | auto (no prompt, learned class tokens)."),
    shots: int | None = typer.Option(None, "--shots", "-k", help="Training volumes/patients/images (default 5)."),
    fraction: float | None = typer.Option(None, "--fraction", help="Share of the training pool instead of --shots."),
    seed: int | None = typer.Option(None, "--seed", help="Seed of the split, initialisation and sampling."),
    split: str | None = typer.Option(None, "--split", help="Reuse a split.json from another run."),
    test: float | None = typer.Option(
        None, "--test", min=0,
        help="Held-out test cases, a count or a share (default: a fixed third, the benchmark protocol). 0: train on "
             "every labelled case, with no test set and no validation (a fixed step budget) unless --folds.",
    ),
    folds: int | None = typer.Option(
        None, "--folds",
        help="K-fold cross-validation over the training cases: K fits, the cross-validated DSC (AUROC) reported, "
             "then the adapter trained on all of them for the step count chosen by CV (fold runs in RUN/folds). "
             "With --method best: the folds that score the candidates (default min(k, 5)).",
    ),
    budget: str | None = typer.Option(
        None, "--budget",
        help="--method best: wall-time budget of the selection and the final fit, e.g. 90s, 30m, 2h (default 30m); "
             "candidates whose estimated cost does not fit are skipped and recorded as such.",
    ),
    candidates: str | None = typer.Option(
        None, "--candidates",
        help="--method best: comma-separated subset of unet3d-scratch, unet3d-pretrained (needs --checkpoint), "
             "sam-decoder-auto, sam-adapter-auto, ensemble-2d3d (default: all).",
    ),
    predict_dir: Path | None = typer.Option(
        None, "--predict",
        help="After fitting, segment (classify) every image in this folder, e.g. imagesTs (segment: needs --prompt "
             "auto); outputs keep the input names and geometry.",
    ),
    predict_out: Path | None = typer.Option(None, "--predict-out", help="Where --predict writes (default RUN/predictions)."),
    classes: str | None = typer.Option(None, "--classes", help="Classes to train, e.g. 1,2 (default: all)."),
    max_steps: int | None = typer.Option(None, "--max-steps", help="Optimiser steps (default 200)."),
    epochs: int | None = typer.Option(None, "--epochs", help="Epochs instead of --max-steps."),
    batch_size: int | None = typer.Option(None, "--batch-size", help="Slices per step (default 4)."),
    lr: float | None = typer.Option(None, "--lr", help="Learning rate (default 1e-4)."),
    lora_rank: int | None = typer.Option(None, "--lora-rank", help="LoRA rank (default 4)."),
    target_modules: str | None = typer.Option(None, "--target-modules", help="peft-lora targets, comma-separated."),
    frozen_stages: int | None = typer.Option(
        None, "--frozen-stages",
        help="Encoder-side recipes on TinyViT-family encoders: keep the patch stem and first N stages frozen and "
             "cache their output (N = 2 halves LiteMedSAM's step time).",
    ),
    slice_axis: int | None = typer.Option(
        None, "--slice-axis",
        help="Volumes: array axis cut into 2D slices (default: through-plane axis by spacing); "
             "predict and evaluate reuse the adapter's axis.",
    ),
    val_every: int | None = typer.Option(None, "--val-every", help="Validate every N steps and after the last (default 50)."),
    patience: int | None = typer.Option(None, "--patience", help="Early stopping after N validations without gain."),
    precision: str | None = typer.Option(None, "--precision", help="fp32 | bf16."),
    image_suffix: str | None = typer.Option(None, "--image-suffix", help="Suffix dropped from image names when pairing."),
    label_suffix: str | None = typer.Option(None, "--label-suffix", help="Suffix dropped from label names when pairing."),
    label_dir: str | None = typer.Option(None, "--label-dir", help="Label folder name inside --data (e.g. 1st_manual)."),
    cache_dir: str | None = typer.Option(None, "--cache-dir", help="On-disk embedding cache shared across runs."),
    encoder_engine: str | None = typer.Option(
        None, "--encoder-engine",
        help="auto (default) | torch | openvino | onnxruntime: engine that fills the embedding cache when the recipe "
             "freezes the encoder. auto: openvino fp32 when installed (same embeddings, about 2x faster on a CPU; "
             "exported once into the cache), else torch.",
    ),
    config: Path | None = typer.Option(None, "--config", help="YAML file with any of these options."),
    resume: bool = typer.Option(False, "--resume", help="Continue a killed run from its last checkpoint."),
    threads: int | None = typer.Option(None, "--threads", help="Torch CPU threads."),
    no_progress: bool = typer.Option(False, "--no-progress", help="No progress bar."),
    settings: list[str] | None = typer.Option(
        None, "--set", help="Any other option KEY=VALUE (repeatable; see docs/recipes.md), e.g. --set lora_alpha=32."
    ),
) -> None:
    """Adapt a foundation model from k labelled cases (or a label fraction); stores only the adapter.

    --task segment (default) adapts a SAM-family model; --task classify a ViT / SAM encoder classifier;
    --task volumetric a 3D SwinUNETR / U-Net. --method best chooses among prompt-free 3D U-Net and
    SAM-family recipes and their ensemble by cross-validation on the training cases, within --budget.
    """
    from medadapt.cli.common import parse_int_list, with_settings
    from medadapt.pipeline.apply import apply_run, check_predict_source
    from medadapt.pipeline.protocol import fit_for_use
    from medadapt.run import RunFolder

    set_threads(threads)
    if method == "best":
        per_candidate = dict(model=model, prompt=prompt, epochs=epochs, batch_size=batch_size, lr=lr,
                             lora_rank=lora_rank, target_modules=target_modules, frozen_stages=frozen_stages,
                             slice_axis=slice_axis, val_every=val_every, patience=patience, precision=precision,
                             encoder_engine=encoder_engine, config=config, split=split)
        given = [k for k, v in per_candidate.items() if v is not None] + (["resume"] if resume else [])
        if given:
            from medadapt.errors import MedadaptError

            flag = "--" + given[0].replace("_", "-")
            raise MedadaptError(
                f"{', '.join('--' + g.replace('_', '-') for g in given)}: not options of --method best (each candidate "
                "has its own recipe, and a killed selection starts again).",
                fix=f"drop {flag}, or give it to one family or candidate, e.g. --set volumetric.{given[0]}=VALUE "
                    f"or --set sam-decoder-auto.{given[0]}=VALUE (docs/best.md).")
        _fit_best(task=task, data=data, out=out, checkpoint=checkpoint, shots=shots, fraction=fraction, seed=seed,
                  test=test, folds=folds, budget=budget, candidates=candidates, classes=classes, max_steps=max_steps,
                  cache_dir=cache_dir, image_suffix=image_suffix, label_suffix=label_suffix, label_dir=label_dir,
                  settings=settings, predict_dir=predict_dir, predict_out=predict_out, threads=threads)
        return
    if budget is not None or candidates is not None:
        from medadapt.errors import MedadaptError

        raise MedadaptError("--budget and --candidates belong to --method best.", fix="add --method best, or drop them.")
    if test == 0 and shots is None and fraction is None and not split:
        fraction = 1.0  # every labelled case
    if predict_dir is not None:
        check_predict_source(task, predict_dir, prompt)
    values = dict(
        data=data, out=out, model=model, checkpoint=checkpoint, method=method, shots=shots, fraction=fraction,
        seed=seed, split=split, test=test, classes=parse_int_list(classes, option="--classes"), max_steps=max_steps,
        epochs=epochs, batch_size=batch_size, lr=lr, lora_rank=lora_rank,
        target_modules=target_modules.split(",") if target_modules else None, val_every=val_every,
        patience=patience, precision=precision, cache_dir=cache_dir, progress=False if no_progress else None,
    )
    if task == "segment":  # options only the SAM fit has
        values.update(prompt=prompt, image_suffix=image_suffix, label_suffix=label_suffix, label_dir=label_dir,
                      encoder_engine=encoder_engine, frozen_stages=frozen_stages, slice_axis=slice_axis)
    outcome = fit_for_use(task, with_settings(values, settings), config, resume, folds=folds,
                          notify=lambda line: console.print(f"[yellow]{line}[/]"))
    result = outcome.result
    if task != "segment":
        console.print(result.get("message", f"fit done: {result}"))
    else:
        if outcome.postprocess is not None or (result["prompt"] == "auto" and result["val_cases"]):
            kept = [str(c) for c in outcome.postprocess["keep_largest"]] if outcome.postprocess else []
            console.print(f"post-processing chosen on {len(result['val_cases'])} validation case(s): "
                          + (f"keep the largest component of class(es) {', '.join(kept)}" if kept else "none"))
        best = result.get("best_metric")
        console.print(
            f"[bold]fit done[/]: {result['method']} / {result['prompt']} on {len(result['train_cases'])} case(s), "
            f"{result['trainable_params']:,} trainable parameters, "
            + (f"best val DSC {best:.4f}, " if best is not None else "")
            + f"{result['fit_seconds']:.0f} s; adapter: {RunFolder(outcome.out).adapter_dir} "
            f"({(result['adapter_bytes'] or 0) / 1024:.0f} KiB)"
        )
        console.print(f"report: {outcome.report}")
    if result.get("protocol"):
        console.print(result["protocol"]["note"])
    if predict_dir is not None:
        kind, where, n = apply_run(outcome.out, predict_dir, predict_out, threads=threads)
        console.print(f"predicted {n} image(s) of {predict_dir}: {where}")


def _fit_best(*, task, data, out, checkpoint, shots, fraction, seed, test, folds, budget, candidates, classes,
              max_steps, cache_dir, image_suffix, label_suffix, label_dir, settings, predict_dir, predict_out,
              threads) -> None:
    """``fit --method best`` (:mod:`medadapt.pipeline.best`): candidates' CV table, then the chosen run."""
    from rich.table import Table

    from medadapt.cli.common import parse_int_list, parse_settings
    from medadapt.errors import MedadaptError
    from medadapt.pipeline.apply import apply_run
    from medadapt.pipeline.best import fit_best

    if task not in ("segment", "volumetric"):
        raise MedadaptError(f"--method best chooses a segmentation recipe; --task {task} has none to choose.",
                            fix="use --task segment (or volumetric), or another --method.")
    overrides: dict[str, dict] = {}
    for key, value in parse_settings(settings).items():
        scope, dot, name = key.partition(".")
        if not dot:
            raise MedadaptError(f"--set {key}=...: with --method best, name the family or candidate it is for.",
                                fix=f"e.g. --set volumetric.{key}={value} or --set sam-decoder-auto.{key}={value}")
        overrides.setdefault(scope.replace("_", "-") if scope not in ("volumetric", "segment") else scope, {})[name] = value
    values = dict(data=data, out=out, checkpoint=checkpoint, shots=shots, fraction=fraction, seed=seed, test=test,
                  classes=parse_int_list(classes, option="--classes"), max_steps=max_steps, cache_dir=cache_dir,
                  image_suffix=image_suffix, label_suffix=label_suffix, label_dir=label_dir)
    result = fit_best(values, folds=folds, budget=budget,
                      candidates=[c.strip() for c in candidates.split(",") if c.strip()] if candidates else None,
                      overrides=overrides, notify=lambda line: console.print(line))
    table = Table(title="candidates (cross-validated on the training cases only)")
    for col in ("candidate", "status", "CV DSC", "folds", "seconds"):
        table.add_column(col)
    for rec in result["candidates"]:
        cv = rec.get("cv_dsc")
        table.add_row(rec["name"], rec["status"] + (f": {rec['reason']}" if rec.get("reason") else ""),
                      "–" if cv is None else f"{cv:.4f}", " ".join(f"{d:.3f}" for d in rec.get("fold_dsc", [])),
                      f"{rec.get('seconds', 0):.0f}")
    console.print(table)
    console.print(f"[bold]fit done[/]: {result['selection']['note']}")
    console.print(f"run: {out}; candidates: {result['selection_file']}")
    if predict_dir is not None:
        kind, where, n = apply_run(Path(out), predict_dir, predict_out, threads=threads)
        console.print(f"predicted {n} image(s) of {predict_dir}: {where}")
