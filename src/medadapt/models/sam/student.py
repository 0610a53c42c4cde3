"""Small TinyViT-style image encoders to distil LiteMedSAM's encoder into.

LiteMedSAM's TinyViT spends most of its time where the feature maps are largest: a stride-1
stem and two MBConv blocks at 256x256 (64 -> 256 channels inside each block), then two
attention blocks at 128x128. Only the 64x64 grid reaches the mask decoder. The student keeps
TinyViT's blocks (so teacher weights can seed it) but

- downsamples by 2 in the stem (3x3 stride-2 convolution), so stage 0 runs at 128x128,
- runs every attention stage at 64x64 (stage 1 merges 128 -> 64, later merges keep 64),
- has fewer blocks per stage.

Output: ``[B, 256, 64, 64]`` for a ``[B, 3, 256, 256]`` input, like the teacher, so LiteMedSAM's
prompt encoder and mask decoder sit on top unchanged. Module names follow TinyViT
(``patch_embed``, ``layers.i.blocks.j``, ``layers.i.downsample``, ``neck``) and every block keeps
its TinyViT shape, which is what :func:`init_from_teacher` relies on.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from medadapt.models.sam.common import LayerNorm2d
from medadapt.models.sam.tiny_vit import (
    Attention,
    Conv2dBN,
    PatchMerging,
    StagedEncoder,
    TinyViT,
    make_stage,
)


@dataclass(frozen=True)
class StudentConfig:
    img_size: int = 256
    embed_dims: tuple[int, ...] = (64, 128, 160, 320)
    depths: tuple[int, ...] = (1, 1, 2, 1)
    num_heads: tuple[int, ...] = (2, 4, 5, 10)
    window_sizes: tuple[int, ...] = (7, 7, 14, 7)
    # Which teacher block seeds each student block, per stage (None: the first ``depth`` blocks).
    teacher_blocks: tuple[tuple[int, ...], ...] | None = ((0,), (1,), (0, 5), (1,))
    mlp_ratio: float = 4.0
    mbconv_expand_ratio: float = 4.0
    local_conv_size: int = 3
    out_chans: int = 256


# ~2.5x fewer multiply-adds than LiteMedSAM's encoder, every stage seeded from its teacher stage.
LITEMEDSAM_STUDENT_S = StudentConfig()
# Narrower and shallower: no 320-channel stage, ~5x fewer multiply-adds (neck learnt from scratch).
LITEMEDSAM_STUDENT_XS = StudentConfig(
    embed_dims=(48, 96, 160), depths=(1, 1, 2), num_heads=(2, 3, 5), window_sizes=(7, 7, 14),
    teacher_blocks=None,
)


class StudentStem(nn.Module):
    """3x3 stride-2 conv (3 -> C/2), GELU, 3x3 conv (C/2 -> C): ``[B, 3, S, S] -> [B, C, S/2, S/2]``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.seq = nn.Sequential(Conv2dBN(3, dim // 2, 3, 2, 1), nn.GELU(), Conv2dBN(dim // 2, dim, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.seq(x)


class StudentViT(StagedEncoder):
    """``[B, 3, S, S]`` -> ``[B, out_chans, S/4, S/4]``; stage resolutions ``S/2, S/4, S/4, ...``."""

    def __init__(self, cfg: StudentConfig) -> None:
        super().__init__()
        if cfg.img_size % 4:
            raise ValueError(f"img_size must be a multiple of 4, got {cfg.img_size}")
        n = len(cfg.depths)
        if not (n >= 2 and len(cfg.embed_dims) == len(cfg.num_heads) == len(cfg.window_sizes) == n):
            raise ValueError("embed_dims, depths, num_heads and window_sizes need one entry per stage (>= 2)")
        self.cfg = cfg
        self.img_size = cfg.img_size
        dims = cfg.embed_dims
        self.patch_embed = StudentStem(dims[0])
        r0, r = cfg.img_size // 2, cfg.img_size // 4
        self.layers = nn.ModuleList()
        for i in range(n):
            res = (r0, r0) if i == 0 else (r, r)
            downsample = None
            if i < n - 1:
                downsample = PatchMerging(res, dims[i], dims[i + 1], stride=2 if i == 0 else 1)
            self.layers.append(make_stage(cfg, i, res, downsample))
        self.embedding_size = r
        self.neck = nn.Sequential(
            nn.Conv2d(dims[-1], cfg.out_chans, kernel_size=1, bias=False),
            LayerNorm2d(cfg.out_chans),
            nn.Conv2d(cfg.out_chans, cfg.out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(cfg.out_chans),
        )


@torch.no_grad()
def init_from_teacher(student: StudentViT, teacher: TinyViT) -> list[str]:
    """Copy the teacher's weights into every student tensor of the same role and shape.

    Blocks are resolution-agnostic (convolutions, per-token linears, attention-bias tables that
    depend on the window only), so teacher block ``teacher_blocks[i][j]`` of stage ``i`` seeds
    student block ``j``; downsampling layers and the neck are copied when their shapes agree.
    The stem (1x1 in LiteMedSAM, 3x3 stride 2 here) starts random. Returns the names copied.
    """
    src = teacher.state_dict()
    plan = student.cfg.teacher_blocks
    mapping: dict[str, str] = {}
    for name in student.state_dict():
        parts = name.split(".")
        if parts[0] == "layers" and parts[2] == "blocks":
            stage, block = int(parts[1]), int(parts[3])
            chosen = plan[stage][block] if plan is not None and stage < len(plan) and block < len(plan[stage]) \
                else block
            mapping[name] = ".".join([*parts[:3], str(chosen), *parts[4:]])
        elif parts[0] in ("layers", "neck"):
            mapping[name] = name
    copied = []
    dst = student.state_dict()
    for name, src_name in mapping.items():
        t = src.get(src_name)
        if t is not None and t.shape == dst[name].shape:
            dst[name].copy_(t)
            copied.append(name)
    return copied


def count_macs(encoder: nn.Module, size: int = 256) -> int:
    """Multiply-accumulates of one ``[1, 3, size, size]`` forward pass (convs, linears, attention).

    A FLOP proxy that does not depend on machine load; attention counts ``QK^T`` and ``AV``.
    """
    total = 0

    def conv_hook(m: nn.Module, _inp, out: torch.Tensor) -> None:
        nonlocal total
        c = m.c if isinstance(m, Conv2dBN) else m  # Conv2dBN folds its BatchNorm and skips ``c`` in eval
        total += out.numel() * (c.in_channels // c.groups) * c.kernel_size[0] * c.kernel_size[1]

    def linear_hook(m: nn.Linear, inp, _out) -> None:
        nonlocal total
        total += inp[0].numel() // m.in_features * m.in_features * m.out_features

    def attn_hook(m: nn.Module, inp, _out) -> None:
        nonlocal total
        b, n, c = inp[0].shape
        total += 2 * b * n * n * c  # QK^T and AV over all heads

    handles = []
    inner = {id(m.c) for m in encoder.modules() if isinstance(m, Conv2dBN)}
    for m in encoder.modules():
        if isinstance(m, Conv2dBN) or (isinstance(m, nn.Conv2d) and id(m) not in inner):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))
        elif isinstance(m, Attention):
            handles.append(m.register_forward_hook(attn_hook))
    try:
        was_training = encoder.training
        encoder.eval()
        with torch.no_grad():
            encoder(torch.zeros(1, 3, size, size))
        encoder.train(was_training)
    finally:
        for h in handles:
            h.remove()
    return total
