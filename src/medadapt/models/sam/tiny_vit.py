"""TinyViT image encoder of MobileSAM (1024 input) and LiteMedSAM (256 input).

Same module tree and state-dict keys as MobileSAM's ``tiny_vit_sam.py`` and the LiteMedSAM
variant of it, so official checkpoints load unchanged. Written here because the official
code needs timm. Two deliberate differences:

- Attention biases are gathered from the learnable table in every forward pass. The official
  code caches them when ``train(False)`` is called, so weights loaded after ``eval()`` silently
  kept the old biases; indexing per call costs microseconds and removes that trap.
- Attention runs through ``F.scaled_dot_product_attention`` with the bias as ``attn_mask``.

Stochastic depth is left out: both published configurations train with ``drop_path_rate=0``.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from medadapt.models.sam.common import LayerNorm2d


@dataclass(frozen=True)
class TinyViTConfig:
    img_size: int
    embed_dims: tuple[int, ...] = (64, 128, 160, 320)
    depths: tuple[int, ...] = (2, 2, 6, 2)
    num_heads: tuple[int, ...] = (2, 4, 5, 10)
    window_sizes: tuple[int, ...] = (7, 7, 14, 7)
    # Patch stem: MobileSAM uses two 3x3 stride-2 convolutions (1024 -> 256); LiteMedSAM
    # replaced them with 1x1 stride-1 convolutions (256 -> 256).
    stem_kernel: int = 3
    stem_stride: int = 2
    mlp_ratio: float = 4.0
    mbconv_expand_ratio: float = 4.0
    local_conv_size: int = 3
    # MobileSAM keeps TinyViT's unused ImageNet classifier (norm_head, head) in its checkpoint.
    num_classes: int = 0
    out_chans: int = 256


MOBILESAM_TINYVIT = TinyViTConfig(img_size=1024, stem_kernel=3, stem_stride=2, num_classes=1000)
LITEMEDSAM_TINYVIT = TinyViTConfig(img_size=256, stem_kernel=1, stem_stride=1, num_classes=0)


class Conv2dBN(nn.Sequential):
    """Convolution without bias followed by BatchNorm (children ``c`` and ``bn``).

    In eval mode the BatchNorm is folded into the convolution on the fly: one pass over the
    (large, 256x256x256 in LiteMedSAM's first stage) activations instead of two. The fold is
    recomputed per call from the current tensors, so loaded or tuned weights always apply.
    """

    def __init__(self, a: int, b: int, ks: int = 1, stride: int = 1, pad: int = 0, groups: int = 1) -> None:
        super().__init__()
        self.add_module("c", nn.Conv2d(a, b, ks, stride, pad, groups=groups, bias=False))
        self.add_module("bn", nn.BatchNorm2d(b))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c, bn = self.c, self.bn
        if self.training or type(c) is not nn.Conv2d or type(bn) is not nn.BatchNorm2d:
            return bn(c(x))  # also when a child was wrapped (e.g. by an adapter)
        scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
        weight = c.weight * scale.view(-1, 1, 1, 1)
        bias = bn.bias - bn.running_mean * scale
        return F.conv2d(x, weight, bias, c.stride, c.padding, c.dilation, c.groups)


class PatchEmbed(nn.Module):
    def __init__(self, in_chans: int, embed_dim: int, kernel: int, stride: int) -> None:
        super().__init__()
        pad = kernel // 2
        self.seq = nn.Sequential(
            Conv2dBN(in_chans, embed_dim // 2, kernel, stride, pad),
            nn.GELU(),
            Conv2dBN(embed_dim // 2, embed_dim, kernel, stride, pad),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.seq(x)


class MBConv(nn.Module):
    """Inverted residual block (1x1 expand, 3x3 depthwise, 1x1 project) on ``[B, C, H, W]``."""

    def __init__(self, dim: int, expand_ratio: float) -> None:
        super().__init__()
        hidden = int(dim * expand_ratio)
        self.conv1 = Conv2dBN(dim, hidden)
        self.act1 = nn.GELU()
        self.conv2 = Conv2dBN(hidden, hidden, ks=3, stride=1, pad=1, groups=hidden)
        self.act2 = nn.GELU()
        self.conv3 = Conv2dBN(hidden, dim)
        self.act3 = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act1(self.conv1(x))
        y = self.act2(self.conv2(y))
        y = self.conv3(y)
        return self.act3(x + y)


class PatchMerging(nn.Module):
    """Convolutional downsampling between stages; returns tokens ``[B, L, out_dim]``."""

    def __init__(self, input_resolution: tuple[int, int], dim: int, out_dim: int, stride: int) -> None:
        super().__init__()
        self.input_resolution = input_resolution
        self.act = nn.GELU()
        self.conv1 = Conv2dBN(dim, out_dim, 1, 1, 0)
        self.conv2 = Conv2dBN(out_dim, out_dim, 3, stride, 1, groups=out_dim)
        self.conv3 = Conv2dBN(out_dim, out_dim, 1, 1, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 3:  # tokens [B, L, C] -> [B, C, H, W]
            h, w = self.input_resolution
            x = x.view(x.shape[0], h, w, -1).permute(0, 3, 1, 2)
        x = self.act(self.conv1(x))
        x = self.act(self.conv2(x))
        x = self.conv3(x)
        return x.flatten(2).transpose(1, 2)


class _Stage(nn.Module):
    """A TinyViT stage: ``blocks`` in sequence, then an optional ``downsample``."""

    blocks: nn.ModuleList
    downsample: nn.Module | None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for blk in self.blocks:
            x = blk(x)
        if self.downsample is not None:
            x = self.downsample(x)
        return x


class ConvLayer(_Stage):
    """Stage 0: MBConv blocks, then downsampling."""

    def __init__(self, dim: int, depth: int, expand_ratio: float, downsample: nn.Module | None) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(MBConv(dim, expand_ratio) for _ in range(depth))
        self.downsample = downsample



class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(self.norm(x))))


def _bias_index(window: int) -> tuple[torch.Tensor, int]:
    """Index of each (query, key) pair of a window into the table of |dy|, |dx| offsets."""
    points = list(itertools.product(range(window), range(window)))
    offsets: dict[tuple[int, int], int] = {}
    idxs = []
    for p1 in points:
        for p2 in points:
            off = (abs(p1[0] - p2[0]), abs(p1[1] - p2[1]))
            idxs.append(offsets.setdefault(off, len(offsets)))
    n = len(points)
    return torch.tensor(idxs, dtype=torch.long).view(n, n), len(offsets)


class Attention(nn.Module):
    """Windowed multi-head attention with a learned bias per head and relative offset.

    ``qkv`` is laid out per head as ``[q | k | v]`` (TinyViT/LeViT order), not SAM-ViT's
    ``[q... | k... | v...]``.
    """

    def __init__(self, dim: int, num_heads: int, window: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.key_dim = dim // num_heads
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        idxs, n_offsets = _bias_index(window)
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, n_offsets))
        self.register_buffer("attention_bias_idxs", idxs, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [B, N, C]
        b, n, _ = x.shape
        x = self.norm(x)
        qkv = self.qkv(x).view(b, n, self.num_heads, 3 * self.key_dim)
        q, k, v = qkv.permute(0, 2, 1, 3).split(self.key_dim, dim=-1)  # each [B, heads, N, d]
        # 4-D mask ([1, heads, N, N]): a 3-D one sends SDPA to its slow unfused CPU path.
        bias = self.attention_biases[:, self.attention_bias_idxs].unsqueeze(0)
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype))
        return self.proj(x.transpose(1, 2).reshape(b, n, -1))


class TinyViTBlock(nn.Module):
    """Window attention, depthwise 3x3 conv, MLP; tokens ``[B, H*W, C]`` in and out."""

    def __init__(self, dim: int, input_resolution: tuple[int, int], num_heads: int, window_size: int,
                 mlp_ratio: float, local_conv_size: int) -> None:
        super().__init__()
        self.input_resolution = input_resolution
        self.window_size = window_size
        self.attn = Attention(dim, num_heads, window_size)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.local_conv = Conv2dBN(dim, dim, ks=local_conv_size, stride=1, pad=local_conv_size // 2, groups=dim)

    def _window_attention(self, x: torch.Tensor) -> torch.Tensor:
        h, w = self.input_resolution
        ws = self.window_size
        b, _, c = x.shape
        if h == ws and w == ws:
            return self.attn(x)
        x = x.view(b, h, w, c)
        pad_b, pad_r = (ws - h % ws) % ws, (ws - w % ws) % ws
        if pad_b or pad_r:  # zero tokens take part in attention, as in the official code
            x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
        ph, pw = h + pad_b, w + pad_r
        nh, nw = ph // ws, pw // ws
        x = x.view(b, nh, ws, nw, ws, c).transpose(2, 3).reshape(b * nh * nw, ws * ws, c)
        x = self.attn(x)
        x = x.view(b, nh, nw, ws, ws, c).transpose(2, 3).reshape(b, ph, pw, c)
        return x[:, :h, :w].reshape(b, h * w, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = self.input_resolution
        b, n, c = x.shape
        assert n == h * w, f"expected {h}x{w} tokens, got {n}"
        x = x + self._window_attention(x)
        x = self.local_conv(x.transpose(1, 2).reshape(b, c, h, w))
        x = x.view(b, c, n).transpose(1, 2)
        return x + self.mlp(x)


class BasicLayer(_Stage):
    """Stages 1-3: TinyViT blocks, then (except the last stage) downsampling."""

    def __init__(self, dim: int, input_resolution: tuple[int, int], depth: int, num_heads: int,
                 window_size: int, mlp_ratio: float, local_conv_size: int,
                 downsample: nn.Module | None) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            TinyViTBlock(dim, input_resolution, num_heads, window_size, mlp_ratio, local_conv_size)
            for _ in range(depth)
        )
        self.downsample = downsample



class StagedEncoder(nn.Module):
    """``patch_embed``, ``layers`` (stage 0 convolutional, the rest token stages), ``neck``.

    The forward pass is split in two so that deployment can run the high-resolution first stages
    and the rest at different precisions (``deploy.export``: OpenVINO ``mixed`` precision):
    ``forward(x) == forward_trunk(forward_stem(x, n), n)`` for every ``n`` in ``1..len(layers)``.
    """

    patch_embed: nn.Module
    layers: nn.ModuleList
    neck: nn.Module
    embedding_size: int

    @staticmethod
    def stem_names(stages: int) -> list[str]:
        """Names of the modules :meth:`forward_stem` runs for ``stages``: the patch stem and ``layers.0..stages-1``."""
        return ["patch_embed", *(f"layers.{i}" for i in range(stages))]

    def stem(self, stages: int) -> nn.ModuleList:
        """Those modules as one (non-owning) container, e.g. to fingerprint the frozen stem's weights."""
        return nn.ModuleList([self.get_submodule(n) for n in self.stem_names(stages)])

    def forward_stem(self, x: torch.Tensor, stages: int) -> torch.Tensor:
        """``[B, 3, S, S]`` → tokens ``[B, L, C]`` after the patch stem and the first ``stages`` stages."""
        # Channels-last convolutions are faster on CPU, and the token stages need this layout
        # anyway: [B, C, H, W] channels-last flattens to tokens [B, H*W, C] without a copy.
        x = self.patch_embed(x.contiguous(memory_format=torch.channels_last))  # [B, C0, r, r]
        for layer in self.layers[:stages]:
            x = layer(x)  # tokens [B, L, C] after stage 0
        return x

    def forward_trunk(self, x: torch.Tensor, stages: int) -> torch.Tensor:
        """Tokens after ``stages`` stages → ``[B, out_chans, g, g]``: the remaining stages, then the neck."""
        for layer in self.layers[stages:]:
            x = layer(x)
        b, _, c = x.shape
        r = self.embedding_size
        x = x.view(b, r, r, c).permute(0, 3, 1, 2)
        return self.neck(x).contiguous()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = len(self.layers)
        return self.forward_trunk(self.forward_stem(x, n), n)


def make_stage(cfg, i: int, res: tuple[int, int], downsample: nn.Module | None) -> nn.Module:
    """Stage ``i`` of a TinyViT-style encoder: MBConv blocks first (``ConvLayer``), windowed attention
    after (``BasicLayer``). ``cfg`` is a :class:`TinyViTConfig` or a student config with the same fields."""
    dims = cfg.embed_dims
    if i == 0:
        return ConvLayer(dims[0], cfg.depths[0], cfg.mbconv_expand_ratio, downsample)
    return BasicLayer(dims[i], res, cfg.depths[i], cfg.num_heads[i], cfg.window_sizes[i], cfg.mlp_ratio,
                      cfg.local_conv_size, downsample)


class TinyViT(StagedEncoder):
    """``[B, 3, S, S]`` image -> ``[B, 256, 64, 64]`` embedding (for the published sizes).

    Stage resolutions with ``r`` = stem output: ``r, r/2, r/4, r/4`` (the last downsampling
    keeps the resolution, as in MobileSAM).
    """

    def __init__(self, cfg: TinyViTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.img_size = cfg.img_size
        dims, n_layers = cfg.embed_dims, len(cfg.depths)
        self.patch_embed = PatchEmbed(3, dims[0], cfg.stem_kernel, cfg.stem_stride)
        r = cfg.img_size // cfg.stem_stride**2
        resolutions = [r // 2 ** (i - 1 if i == n_layers - 1 else i) for i in range(n_layers)]
        self.layers = nn.ModuleList()
        for i in range(n_layers):
            res = (resolutions[i], resolutions[i])
            downsample = None
            if i < n_layers - 1:
                stride = 1 if i == n_layers - 2 else 2
                downsample = PatchMerging(res, dims[i], dims[i + 1], stride)
            self.layers.append(make_stage(cfg, i, res, downsample))
        self.embedding_size = resolutions[-1]  # side of the output grid
        if cfg.num_classes > 0:
            # Unused by SAM; kept so MobileSAM checkpoints load with matching keys.
            self.norm_head = nn.LayerNorm(dims[-1])
            self.head = nn.Linear(dims[-1], cfg.num_classes)
        self.neck = nn.Sequential(
            nn.Conv2d(dims[-1], cfg.out_chans, kernel_size=1, bias=False),
            LayerNorm2d(cfg.out_chans),
            nn.Conv2d(cfg.out_chans, cfg.out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(cfg.out_chans),
        )
