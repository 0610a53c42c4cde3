"""Named fine-tuning recipes: which modules to inject and which parameters to train.

A recipe is a function of (model, :class:`RecipeConfig`) that injects its modules (LoRA,
adapters) and names the parameters it trains. :func:`apply_recipe` wraps every recipe in the
same steps: freeze everything, inject, unfreeze exactly the named parameters (plus the prompt
encoder when asked and any ``also_train`` modules a task adds), keep frozen BatchNorm statistics
fixed, and report counts. The config is all that is needed to rebuild the same trainable model
on a fresh base, which is how :mod:`medadapt.adapt.artifact` reloads adapters.

Defaults name the modules of SAM (``image_encoder``, ``prompt_encoder``, ``mask_decoder``).
Other models set ``encoder_attr`` / ``decoder_attr``: for MONAI's SwinUNETR the encoder is
``swinViT`` and the decoder is every other top-level module (``decoder_attr="*"``); for a ViT
classifier the encoder is ``""`` (the whole model) or ``blocks`` and the head is ``head``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from medadapt.adapt.adapter import _Wrapper, apply_decoder_adapters, apply_encoder_adapters, find_blocks
from medadapt.adapt.bitfit import unfreeze_biases
from medadapt.adapt.freeze import (
    count_trainable,
    freeze_all,
    freeze_bn_stats,
    get_submodule,
    trainable_names,
    unfreeze_named,
)
from medadapt.adapt.lora import _LoRABase, apply_lora_decoder, apply_lora_qkv, find_qkv_attention
from medadapt.adapt.norm import unfreeze_norms
from medadapt.adapt.peft_lora import apply_peft_lora
from medadapt.errors import MedadaptError

__all__ = ["RECIPES", "AppliedRecipe", "Recipe", "RecipeConfig", "apply_recipe", "get_recipe"]

SAM_HEAD = ("output_hypernetworks_mlps", "iou_prediction_head")


class RecipeConfig(BaseModel):
    """Everything that decides a trainable model; stored in ``adapter.json``."""

    model_config = ConfigDict(extra="forbid")

    name: str = "decoder"
    lora_rank: int = Field(4, ge=1)
    lora_alpha: float | None = Field(None, gt=0, description="None: equal to the rank (scaling 1, as SAMed)")
    lora_dropout: float = Field(0.0, ge=0.0, lt=1.0)
    lora_blocks: list[int] | None = Field(None, description="encoder attention blocks for LoRA; None: all")
    target_modules: list[str] | str | None = Field(
        None, description="peft-lora targets: module names / dotted suffixes, or one regular expression")
    adapter_ratio: float = Field(0.25, gt=0.0, description="adapter bottleneck width / model width")
    adapter_scale: float = Field(0.5, description="weight of the adapter beside each MLP")
    adapter_blocks: list[int] | None = Field(None, description="encoder blocks with adapters; None: all")
    frozen_stages: int = Field(
        0, ge=0, description="encoder patch stem + first N stages kept frozen and unadapted (staged "
        "encoders such as TinyViT); the engine then caches their output and trains from there")
    train_prompt_encoder: bool = False
    encoder_attr: str | list[str] = "image_encoder"
    decoder_attr: str | list[str] = Field(
        "mask_decoder", description="'*': every top-level module other than the encoder and prompt encoder")
    prompt_encoder_attr: str = "prompt_encoder"
    head: list[str] | None = Field(
        None, description="head modules; None: SAM's hypernetwork MLPs + IoU head, else 'head', else 'out'")
    also_train: list[str] = Field(
        default_factory=list, description="extra modules or parameters to train (prompt tokens, new heads)")


@dataclass(frozen=True)
class Recipe:
    name: str
    description: str
    cost: str
    build: Callable[[nn.Module, RecipeConfig], tuple[list[str], list[str]]] = field(repr=False)
    """Injects modules; returns (injected module names, parameter names to train)."""


@dataclass
class AppliedRecipe:
    """What :func:`apply_recipe` did to a model."""

    name: str
    trainable: int
    total: int
    trainable_names: list[str]
    injected: list[str]
    encoder_trainable: bool
    frozen_bn: list[str]
    frozen_stages: int = 0

    @property
    def fraction(self) -> float:
        return self.trainable / max(self.total, 1)

    def summary(self) -> str:
        return (f"recipe {self.name}: {self.trainable:,} of {self.total:,} parameters trainable "
                f"({100 * self.fraction:.3g}%) in {len(self.trainable_names)} tensors"
                + (f", {len(self.injected)} modules injected" if self.injected else ""))


# ----------------------------------------------------------------------------- module groups

def _as_list(attr: str | Sequence[str]) -> list[str]:
    return [attr] if isinstance(attr, str) else list(attr)


def _encoder(model: nn.Module, cfg: RecipeConfig) -> list[str]:
    names = _as_list(cfg.encoder_attr)
    for n in names:
        get_submodule(model, n)
    return names


def _decoder(model: nn.Module, cfg: RecipeConfig) -> list[str]:
    if cfg.decoder_attr == "*":
        skip = set(_as_list(cfg.encoder_attr)) | {cfg.prompt_encoder_attr}
        names = [n for n, _ in model.named_children() if n not in skip]
        if not names:
            raise MedadaptError("decoder_attr='*' found no module outside the encoder")
        return names
    names = _as_list(cfg.decoder_attr)
    for n in names:
        get_submodule(model, n)
    return names


def _params_under(model: nn.Module, roots: Sequence[str]) -> list[str]:
    out: list[str] = []
    for r in roots:
        out += [f"{r}.{n}" if r else n for n, _ in get_submodule(model, r).named_parameters()]
    return out


def _under(name: str, root: str) -> bool:
    return root == "" or name == root or name.startswith(root + ".")


def _lora_params(model: nn.Module) -> list[str]:
    return [f"{m}.{p}" for m, mod in model.named_modules() if isinstance(mod, _LoRABase)
            for p, _ in mod.named_parameters() if p.startswith("lora_")]


def _adapter_params(model: nn.Module) -> list[str]:
    return [f"{m}.adapter.{p}" for m, mod in model.named_modules() if isinstance(mod, _Wrapper)
            for p, _ in mod.adapter.named_parameters()]


def head_names(model: nn.Module, cfg: RecipeConfig) -> list[str]:
    """The head modules: ``cfg.head``, else SAM's hypernetwork MLPs + IoU head, ``head``, ``out``."""
    if cfg.head is not None:
        return list(cfg.head)
    if cfg.decoder_attr != "*":
        for dec in _as_list(cfg.decoder_attr):
            m = model.get_submodule(dec) if dec else model
            if all(h in m._modules for h in SAM_HEAD):
                return [f"{dec}.{h}" if dec else h for h in SAM_HEAD]
    for name in ("head", "out"):
        if name in model._modules:
            return [name]
    raise MedadaptError(f"no head found in {type(model).__name__}",
                        fix="name the head modules with --head (RecipeConfig.head)")


# ----------------------------------------------------------------------------- recipes

def _full(model: nn.Module, cfg: RecipeConfig) -> tuple[list[str], list[str]]:
    return [], _params_under(model, [""])


def _decoder_full(model: nn.Module, cfg: RecipeConfig) -> tuple[list[str], list[str]]:
    return [], _params_under(model, _decoder(model, cfg))


def _enc_lora(model: nn.Module, cfg: RecipeConfig) -> list[str]:
    return apply_lora_qkv(model, cfg.lora_rank, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_blocks,
                          root=_encoder(model, cfg))


def _dec_lora(model: nn.Module, cfg: RecipeConfig) -> list[str]:
    return apply_lora_decoder(model, cfg.lora_rank, cfg.lora_alpha, cfg.lora_dropout, root=_decoder(model, cfg))


def _encoder_lora(model: nn.Module, cfg: RecipeConfig) -> tuple[list[str], list[str]]:
    return _enc_lora(model, cfg), _lora_params(model)


def _decoder_lora(model: nn.Module, cfg: RecipeConfig) -> tuple[list[str], list[str]]:
    return _dec_lora(model, cfg), _lora_params(model)


def _lora(model: nn.Module, cfg: RecipeConfig) -> tuple[list[str], list[str]]:
    return _enc_lora(model, cfg) + _dec_lora(model, cfg), _lora_params(model)


def _peft_lora(model: nn.Module, cfg: RecipeConfig) -> tuple[list[str], list[str]]:
    if not cfg.target_modules:
        raise MedadaptError("the peft-lora recipe needs target modules",
                            fix="pass --target-modules (e.g. 'qkv,proj,lin1,lin2' or a regular expression)")
    injected = apply_peft_lora(model, cfg.target_modules, cfg.lora_rank, cfg.lora_alpha, cfg.lora_dropout)
    return injected, [n for n, _ in model.named_parameters() if ".lora_" in n]


def _enc_adapter(model: nn.Module, cfg: RecipeConfig) -> list[str]:
    return apply_encoder_adapters(model, cfg.adapter_ratio, cfg.adapter_scale, cfg.adapter_blocks,
                                  root=_encoder(model, cfg))


def _dec_adapter(model: nn.Module, cfg: RecipeConfig) -> list[str]:
    return apply_decoder_adapters(model, cfg.adapter_ratio, cfg.adapter_scale, root=_decoder(model, cfg))


def _encoder_adapter(model: nn.Module, cfg: RecipeConfig) -> tuple[list[str], list[str]]:
    return _enc_adapter(model, cfg), _adapter_params(model)


def _decoder_adapter(model: nn.Module, cfg: RecipeConfig) -> tuple[list[str], list[str]]:
    return _dec_adapter(model, cfg), _adapter_params(model)


def _adapter(model: nn.Module, cfg: RecipeConfig) -> tuple[list[str], list[str]]:
    return _enc_adapter(model, cfg) + _dec_adapter(model, cfg), _adapter_params(model)


def _bias(model: nn.Module, cfg: RecipeConfig) -> tuple[list[str], list[str]]:
    return [], unfreeze_biases(model)


def _norm(model: nn.Module, cfg: RecipeConfig) -> tuple[list[str], list[str]]:
    return [], unfreeze_norms(model)


def _head(model: nn.Module, cfg: RecipeConfig) -> tuple[list[str], list[str]]:
    return [], _params_under(model, head_names(model, cfg))


def _recipes(*items: Recipe) -> dict[str, Recipe]:
    return {r.name: r for r in items}


# Trainable counts are measured on LiteMedSAM (9.79M parameters: TinyViT encoder 5.73M, mask
# decoder 4.06M, prompt encoder 6k) and SAM ViT-B (93.7M) with default settings (rank 4, ratio 0.25).
# "embeddings cacheable": the encoder is frozen, so the training loop can encode each image once.
RECIPES: dict[str, Recipe] = _recipes(
    Recipe("full", "every weight except the prompt encoder (unless asked)",
           "9.8M (ViT-B 93.7M); encoder backward every step; artifact = whole model", _full),
    Recipe("decoder", "mask decoder only (MedSAM-style); image and prompt encoders frozen",
           "4.06M; embeddings cacheable, so the cheapest steps; artifact ~16 MB", _decoder_full),
    Recipe("decoder-lora", "LoRA on q/v of every mask-decoder attention (self, both cross, final)",
           "24k; embeddings cacheable; artifact ~0.1 MB", _decoder_lora),
    Recipe("encoder-lora", "LoRA on the q/v rows of each encoder qkv (SAMed); decoder frozen",
           "30k (ViT-B 147k); encoder backward; add also_train=['mask_decoder'] for SAMed's setup", _encoder_lora),
    Recipe("lora", "encoder q/v LoRA plus decoder q/v LoRA (finetune-SAM)",
           "53k (ViT-B 171k); encoder backward; artifact ~0.2 MB", _lora),
    Recipe("peft-lora", "peft LoRA on the modules named by target_modules (Linear, Conv1d-3d)",
           "rank x (in + out) per target (30k for 'qkv'); any architecture, incl. 3D convolutions", _peft_lora),
    Recipe("decoder-adapter", "bottleneck adapters after each decoder attention and beside its MLPs",
           "265k; embeddings cacheable; cannot be merged", _decoder_adapter),
    Recipe("encoder-adapter", "bottleneck adapters after each encoder attention and beside its MLP",
           "396k (ViT-B 7.1M); encoder backward; cannot be merged", _encoder_adapter),
    Recipe("adapter", "encoder and decoder adapters (finetune-SAM)",
           "661k (ViT-B 7.4M); encoder backward; artifact ~2.7 MB; cannot be merged", _adapter),
    Recipe("bias", "BitFit: every bias term (prompt encoder excluded unless asked)",
           "41k (ViT-B 118k); encoder backward", _bias),
    Recipe("norm", "affine scale/shift of every norm layer (LayerNorm, LayerNorm2d, BatchNorm, GroupNorm)",
           "23k (ViT-B 43k); encoder backward; BatchNorm statistics are saved too", _norm),
    Recipe("head", "only the head: SAM's hypernetwork MLPs + IoU head, a classifier's 'head', a 3D 'out'",
           "692k for SAM; embeddings cacheable; a linear probe for classifiers", _head),
    Recipe("linear-probe", "alias of 'head'", "as 'head'", _head),
)


def get_recipe(name: str) -> Recipe:
    try:
        return RECIPES[name]
    except KeyError:
        raise MedadaptError(f"unknown recipe {name!r}", fix="use one of " + ", ".join(RECIPES)) from None


def apply_recipe(model: nn.Module, config: RecipeConfig | str) -> AppliedRecipe:
    """Freeze ``model``, inject the recipe's modules in place, unfreeze what it trains.

    The prompt encoder (``config.prompt_encoder_attr``, when the model has one) is frozen unless
    ``train_prompt_encoder``; ``also_train`` names extra modules or parameters to train.
    """
    cfg = RecipeConfig(name=config) if isinstance(config, str) else config
    recipe = get_recipe(cfg.name)
    stem = frozen_stem_prefixes(model, cfg)
    freeze_all(model)
    injected, names = recipe.build(model, _blocks_after_stem(model, cfg, stem))
    freeze_all(model)  # injection helpers (peft) may have set flags of their own
    if stem:
        inside = [m for m in injected if any(_under(m, p) for p in stem)]
        if inside:
            raise MedadaptError(f"{inside[0]} lies in the encoder's frozen stem (frozen_stages={cfg.frozen_stages})",
                                fix="choose blocks (or peft target modules, e.g. a regular expression) after "
                                    "the frozen stages, or lower frozen_stages")
        names = [n for n in names if not any(_under(n, p) for p in stem)]

    pe = cfg.prompt_encoder_attr
    has_pe = bool(pe) and _has(model, pe)
    if has_pe:
        names = [n for n in names if not _under(n, pe)]
    if cfg.train_prompt_encoder:
        if not has_pe:
            raise MedadaptError(f"train_prompt_encoder is set but the model has no {pe!r}",
                                fix="unset it, or name the prompt encoder with prompt_encoder_attr")
        names += _params_under(model, [pe])
    unfreeze_named(model, [*names, *cfg.also_train])
    frozen_bn = freeze_bn_stats(model)

    trainable, total = count_trainable(model)
    if trainable == 0:
        raise MedadaptError(f"recipe {cfg.name!r} leaves nothing to train in {type(model).__name__}",
                            fix="check encoder_attr / decoder_attr / head for this model")
    tnames = trainable_names(model)
    enc = [e for e in _as_list(cfg.encoder_attr) if _has(model, e)]
    return AppliedRecipe(
        name=cfg.name, trainable=trainable, total=total, trainable_names=tnames, injected=injected,
        encoder_trainable=any(_under(n, e) for n in tnames for e in enc),
        frozen_bn=frozen_bn, frozen_stages=cfg.frozen_stages,
    )


def frozen_stem_prefixes(model: nn.Module, cfg: RecipeConfig) -> list[str]:
    """Module names of the encoder's frozen stem: ``patch_embed`` and ``layers.0..N-1`` ([] when N = 0).

    Only staged encoders (:class:`~medadapt.models.sam.tiny_vit.StagedEncoder`: TinyViT, the
    distilled students) can run from a cached stem output, so other encoders are refused.
    """
    n = cfg.frozen_stages
    if n == 0:
        return []
    roots = _encoder(model, cfg)
    enc = get_submodule(model, roots[0]) if len(roots) == 1 else None
    if enc is None or not hasattr(enc, "forward_stem"):
        raise MedadaptError(f"frozen_stages needs a staged encoder (TinyViT family); {type(model).__name__}'s "
                            f"encoder {roots} is not one", fix="drop frozen_stages for this model")
    if n > len(enc.layers):
        raise MedadaptError(f"frozen_stages={n}, but the encoder has {len(enc.layers)} stages",
                            fix=f"use 1..{len(enc.layers)}")
    return [f"{roots[0]}.{name}" for name in enc.stem_names(n)]


def _blocks_after_stem(model: nn.Module, cfg: RecipeConfig, stem: list[str]) -> RecipeConfig:
    """``cfg`` with encoder LoRA / adapter blocks defaulting to those after the frozen stem."""
    if not stem:
        return cfg
    def after(found: list[tuple[str, nn.Module]]) -> list[int]:
        return [i for i, (name, _) in enumerate(found) if not any(_under(name, p) for p in stem)]

    roots = _encoder(model, cfg)
    update = {}
    if cfg.lora_blocks is None:
        update["lora_blocks"] = after(find_qkv_attention(model, roots))
    if cfg.adapter_blocks is None:
        update["adapter_blocks"] = after(find_blocks(model, roots))
    return cfg.model_copy(update=update)


def _has(model: nn.Module, name: str) -> bool:
    try:
        model.get_submodule(name)
    except AttributeError:
        return False
    return True
