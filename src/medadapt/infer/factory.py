"""Build a ready :class:`SamPredictor` (or adapted model) from a model name, a checkpoint and an adapter run."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from torch import nn

from medadapt.adapt.artifact import load_adapter
from medadapt.adapt.class_prompts import attach_auto_prompts
from medadapt.errors import MedadaptError
from medadapt.infer.ensemble import EnsemblePredictor, VolumetricMember
from medadapt.infer.modality_bank import load_bank_predictor
from medadapt.infer.predictor import SamPredictor
from medadapt.models.preprocess import FIT_RESIZE, RESIZE_METHODS, ZERO_SHOT_RESIZE
from medadapt.models.registry import build_model, get_sam_spec
from medadapt.run import RunFolder, adapter_info, ensemble_members, is_bank, is_ensemble, trained_slice_axis


def load_adapted_model(
    run: Path, *, model: str | None = None, checkpoint: Path | None = None
) -> tuple[nn.Module, str, dict]:
    """Base model + adapter of a fit run. Returns (model, model name, adapter metadata)."""
    run_folder = RunFolder.resolve(run)
    folder, meta = run_folder.adapter_dir, run_folder.read_adapter_meta()
    base = meta.get("base") or {}
    name = model or base.get("model")
    if name is None:
        raise MedadaptError("adapter.json does not name its base model.", path=folder, fix="pass --model NAME.")
    if model is not None and base.get("model") not in (None, model):
        raise MedadaptError(
            f"this adapter was trained on '{base.get('model')}', not '{model}'.",
            path=folder,
            fix=f"use --model {base.get('model')} (or leave --model out).",
        )
    net = build_model(name, checkpoint=checkpoint or base.get("checkpoint"))
    attach_auto_prompts(net, meta)
    load_adapter(net, folder)
    return net.eval(), name, meta


DECODER_PRECISION_NAMES = ("fp32", "int8", "bf16")  # which engine runs which: deploy.runtime.check_decoder_precision


@dataclass(frozen=True)
class PredictorSpec:
    """Everything that picks and sets up a predictor; every setting goes to the predictor's constructor.

    ``adapters``: none (the base ``model`` zero-shot), one fit run or modality bank, or several runs
    (their ensemble). ``backend`` is ``torch`` here; :func:`medadapt.deploy.backend.load_predictor`
    also runs ``onnxruntime`` / ``openvino`` exports (``export``, ``threads``, ``ov_cache``; ``decoder_precision``:
    ``int8`` / ``bf16`` mask decoders there, for fast interactive clicks).
    ``encoder`` replaces the torch image encoder (an exported frozen encoder after ``fit --encoder-engine``).
    ``keep_largest``: the classes of an automatic-mode run whose largest component alone is kept; None
    takes the run's own choice (``postprocess.json``), ``()`` predicts without post-processing.
    ``resize`` / ``roi_margin``: how small images are enlarged, and ROI inference of box prompts
    (:class:`~medadapt.infer.predictor.SamPredictor`); ``resize`` None takes the default of the model
    (:meth:`resize_for`).
    """

    model: str | None = None
    checkpoint: Path | None = None
    adapters: tuple[Path, ...] = ()
    backend: str = "torch"
    precision: str = "fp32"
    decoder_precision: str = "fp32"
    export: Path | None = None
    batch_size: int | None = None
    threads: int | None = None
    cache_dir: Path | None = None
    use_cache: bool = False
    ov_cache: Path | None = None
    mirror: bool = False
    encoder: Callable | None = None
    keep_largest: tuple[int, ...] | None = None
    resize: str | None = None
    roi_margin: float | None = None

    def __post_init__(self):
        if self.resize is not None and self.resize not in RESIZE_METHODS:
            raise MedadaptError(f"--resize '{self.resize}' is not one of {', '.join(RESIZE_METHODS)}.",
                                fix="use --resize official (the model's own preprocessing) or bilinear.")
        if self.decoder_precision not in DECODER_PRECISION_NAMES:
            raise MedadaptError(f"--decoder-precision '{self.decoder_precision}' is not one of "
                                f"{', '.join(DECODER_PRECISION_NAMES)}.", fix="use --decoder-precision fp32")
        if self.roi_margin is not None and not self.roi_margin >= 0:
            raise MedadaptError(f"--roi-margin must be 0 or more (a fraction of the box size), got {self.roi_margin}.",
                                fix="for example --roi-margin 0.5, or leave it out to segment whole images.")

    def resize_for(self, adapted: bool) -> str:
        """``resize`` if given, else the model's default: what ``fit`` trained an adapted model with,
        the validated zero-shot choice otherwise (:mod:`medadapt.models.preprocess`)."""
        return self.resize or (FIT_RESIZE if adapted else ZERO_SHOT_RESIZE)

    def member(self, adapter: Path | None) -> PredictorSpec:
        """The same settings for one adapter (an ensemble member)."""
        return replace(self, adapters=() if adapter is None else (Path(adapter),))


def adapters_of(adapter: str | Path | Sequence[str | Path] | None) -> tuple[Path, ...]:
    """``--adapter`` given once, several times, or not at all, as a tuple of paths."""
    if adapter is None:
        return ()
    if isinstance(adapter, (str, Path)):
        return (Path(adapter),)
    return tuple(Path(a) for a in adapter)


def expand_ensembles(adapters: Sequence[Path]) -> tuple[Path, ...]:
    """``adapters`` with every ensemble run (``fit --method best``) replaced by its member runs."""
    out: list[Path] = []
    for a in adapters:
        out.extend(ensemble_members(a) if is_ensemble(a) else [Path(a)])
    return tuple(out)


def is_volumetric_run(adapter: Path) -> bool:
    """Whether ``adapter`` is a 3D run (``fit --task volumetric``): an ensemble member on torch."""
    return not is_bank(adapter) and adapter_info(RunFolder.resolve(adapter).read_adapter_meta()).task == "volumetric"


def compose(spec: PredictorSpec, build_one: Callable[[PredictorSpec], SamPredictor]):
    """``build_one(spec)`` for none or one adapter; the :class:`EnsemblePredictor` of the members for several
    (an ensemble run counts as its members; 3D members run on torch whatever builds the others).

    The one place where predictors are combined, whatever builds each of them.
    """
    adapters = expand_ensembles(spec.adapters)
    spec = replace(spec, adapters=adapters)
    if len(adapters) > 1:
        members = [VolumetricMember(a, batch_size=spec.batch_size or 4) if is_volumetric_run(a)
                   else build_one(spec.member(a)) for a in adapters]
        return EnsemblePredictor(members, adapters)
    return build_one(spec)


def load_predictor(spec: PredictorSpec):
    """A predictor on torch (see :func:`medadapt.deploy.backend.load_predictor` for every back-end)."""
    if spec.backend != "torch":
        raise MedadaptError(f"the {spec.backend} back-end is loaded by medadapt.deploy.backend.load_predictor.")
    return compose(spec, _torch_member)


def _torch_member(spec: PredictorSpec) -> SamPredictor:
    adapter = spec.adapters[0] if spec.adapters else None
    common = dict(batch_size=spec.batch_size, precision=spec.precision, cache_dir=spec.cache_dir,
                  use_cache=spec.use_cache, mirror=spec.mirror, resize=spec.resize_for(adapter is not None),
                  roi_margin=spec.roi_margin)
    if adapter is not None and is_bank(adapter):  # per-modality adapters, routed per case
        return load_bank_predictor(adapter, model=spec.model, checkpoint=spec.checkpoint,
                                   keep_largest=spec.keep_largest, **common)
    if adapter is None:
        model = spec.model or "litemedsam"
        net = build_model(model, checkpoint=spec.checkpoint).eval()
        return SamPredictor(net, get_sam_spec(model), encoder=spec.encoder, **common)
    net, model, meta = load_adapted_model(adapter, model=spec.model, checkpoint=spec.checkpoint)
    classes, keep_largest = RunFolder.resolve(adapter).automatic_mode()
    if spec.keep_largest is not None:
        keep_largest = list(spec.keep_largest)
    return SamPredictor(
        net, get_sam_spec(model), classes=classes, frozen_stages=int((meta.get("recipe") or {}).get("frozen_stages", 0)),
        keep_largest=keep_largest, slice_axis=trained_slice_axis(meta), encoder=spec.encoder, **common,
    )


def build_predictor(
    model: str | None,
    *,
    checkpoint: Path | None = None,
    adapter: Path | Sequence[Path] | None = None,
    batch_size: int | None = None,
    precision: str = "fp32",
    cache_dir: Path | None = None,
    use_cache: bool = False,
    resize: str | None = None,
    roi_margin: float | None = None,
) -> SamPredictor:
    """The base ``model`` zero-shot, adapted by one fit run, or (several runs) their ensemble, on torch
    (shorthand for :func:`load_predictor` of a :class:`PredictorSpec`)."""
    return load_predictor(PredictorSpec(model=model, checkpoint=checkpoint, adapters=adapters_of(adapter),
                                        batch_size=batch_size, precision=precision, cache_dir=cache_dir,
                                        use_cache=use_cache, resize=resize, roi_margin=roi_margin))
