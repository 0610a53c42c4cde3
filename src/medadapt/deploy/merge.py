"""Full checkpoints from adapted or distilled models (``medadapt merge``).

- :func:`merge_adapter_run`: base model + a fit run's adapter, LoRA folded into the weights, as
  one state dict with exactly the base model's keys, so ``medadapt predict --model NAME
  --checkpoint FILE`` loads it like an official checkpoint. Adapters that cannot be folded
  (bottleneck adapters are non-linear; automatic-mode class prompts live outside SAM) are refused
  rather than silently dropped.
- :func:`merge_student`: a distilled student encoder under its teacher's prompt encoder and mask
  decoder, as a checkpoint of the registered student model.

Both write ``FILE.safetensors`` and ``FILE.json`` (what was merged, the tensors' sha256).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch
from torch import nn

import medadapt
from medadapt.errors import MedadaptError
from medadapt.io.atomic import atomic_path, write_json

FORMAT = "medadapt.checkpoint"


def check_out_file(out: str | Path) -> Path:
    out = Path(out)
    if out.suffix != ".safetensors":
        raise MedadaptError("the merged checkpoint must be a .safetensors file.", path=out,
                            fix=f"use --out {out.with_suffix('.safetensors').name}")
    if out.is_dir():
        raise MedadaptError("is a folder; --out names the checkpoint file to write.", path=out)
    return out


def save_full_checkpoint(state: dict[str, torch.Tensor], out: str | Path, meta: dict[str, Any]) -> dict[str, Any]:
    """Write ``out`` (safetensors) and ``out.with_suffix('.json')``; returns the JSON content."""
    from safetensors.torch import save_file

    out = check_out_file(out)
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}
    with atomic_path(out) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt", "medadapt": FORMAT})
    h = hashlib.sha256()
    with open(out, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    info = {
        "format": FORMAT,
        "medadapt_version": medadapt.__version__,
        **meta,
        "tensors": len(tensors),
        "params": sum(t.numel() for t in tensors.values() if t.is_floating_point()),
        "file": {"name": out.name, "sha256": h.hexdigest(), "bytes": out.stat().st_size},
    }
    write_json(out.with_suffix(".json"), info)
    return info


def _base_keys(model: nn.Module) -> set[str]:
    return set(model.state_dict())


def merge_adapter_run(run: str | Path, out: str | Path, *, checkpoint: str | Path | None = None) -> dict[str, Any]:
    """Fold a fit run's adapter into its base model and write the full checkpoint to ``out``."""
    from medadapt.adapt.artifact import merged_state_dict
    from medadapt.infer.factory import adapter_dir, load_adapted_model
    from medadapt.models.registry import build_model

    out = check_out_file(out)
    if (Path(run) / "modalities.json").is_file():
        raise MedadaptError("is a per-modality adapter bank; merge one modality at a time.", path=run,
                            fix=f"use --adapter {Path(run) / '<modality>'}")
    net, name, meta = load_adapted_model(Path(run), checkpoint=Path(checkpoint) if checkpoint else None)
    state = merged_state_dict(net)
    base_keys = _base_keys(build_model(name, pretrained=False))
    extra = sorted(set(state) - base_keys)
    if extra:
        recipe = (meta.get("recipe") or {}).get("name")
        raise MedadaptError(
            f"the adapter (recipe '{recipe}') cannot be folded into {name}'s weights: {len(extra)} tensor(s) have "
            f"no place in the base model (e.g. {extra[0]}); bottleneck adapters and automatic-mode class prompts "
            "stay separate.",
            path=adapter_dir(Path(run)),
            fix="use the adapter as it is (`medadapt predict --adapter RUN`), or fit a LoRA / decoder / bias / norm recipe.",
        )
    missing = sorted(k for k in base_keys - set(state))
    if missing:  # cannot happen for recipes that wrap and fold; guard the file anyway
        raise MedadaptError(f"the merged model lacks {len(missing)} base tensor(s) (e.g. {missing[0]}).", path=run)
    base = meta.get("base") or {}
    return save_full_checkpoint(state, out, {
        "model": name,
        "kind": "adapter-merged",
        "adapter": str(adapter_dir(Path(run)).resolve()),
        "recipe": meta.get("recipe"),
        "base": {**base, **({"checkpoint": str(Path(checkpoint).resolve())} if checkpoint else {})},
    })


def merge_student(student_run: str | Path, out: str | Path, *, teacher: str | None = None,
                  teacher_checkpoint: str | Path | None = None) -> dict[str, Any]:
    """Distilled student encoder + the teacher's prompt encoder and mask decoder -> ``out``."""
    from medadapt.deploy.distill import build_student, build_teacher, load_student, student_dir
    from medadapt.models.registry import get_sam_spec

    out = check_out_file(out)
    encoder_state, smeta = load_student(student_run)
    distilled_from = smeta.get("teacher")
    if teacher is not None and distilled_from and get_sam_spec(teacher).name != get_sam_spec(distilled_from).name:
        raise MedadaptError(
            f"this student was distilled from '{distilled_from}', not '{teacher}': its embeddings only suit "
            f"{distilled_from}'s mask decoder.", path=student_dir(student_run), fix=f"use --teacher {distilled_from}",
        )
    teacher_name = teacher or distilled_from
    if teacher_name is None:
        raise MedadaptError("student.json does not name its teacher.", path=student_dir(student_run),
                            fix="pass --teacher NAME")
    model = build_student(smeta["student"], smeta.get("image_size"))
    try:
        model.image_encoder.load_state_dict(encoder_state, strict=True)
    except RuntimeError as err:
        raise MedadaptError(f"the student weights do not fit '{smeta['student']}' ({str(err).splitlines()[0]}).",
                            path=student_dir(student_run)) from None
    ckpt = teacher_checkpoint or smeta.get("teacher_checkpoint")
    teacher_model = build_teacher(teacher_name, ckpt)
    for part in ("prompt_encoder", "mask_decoder"):
        getattr(model, part).load_state_dict(getattr(teacher_model, part).state_dict(), strict=True)
    return save_full_checkpoint(model.state_dict(), out, {
        "model": smeta["student"],
        "kind": "student-merged",
        "student": str(student_dir(student_run).resolve()),
        "teacher": teacher_name,
        "teacher_checkpoint": str(Path(ckpt).resolve()) if ckpt else None,
        "image_size": smeta.get("image_size"),
    })
