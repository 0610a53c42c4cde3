"""A small CNN trained from scratch: the no-pre-training baseline of the few-label benchmarks.

Four blocks of (3x3 conv -> BatchNorm -> ReLU) x 2 with 2x2 max-pooling after the first three,
then global average pooling and a Linear head, as the "simple CNN" baselines of MedMNIST-size data.
Widths 32-64-128-256 give ~1.2M parameters; at 28-64 px a training step costs milliseconds per
image on CPU, so it shows what pre-training buys at each label fraction.

It exposes the same surface as the other classifiers (``blocks``, ``fc_norm``, ``head``,
``forward_pooled`` / ``forward_from_pooled``), so recipes, the trainer and the feature cache treat
it like any backbone. There are no published weights: only the ``full`` recipe makes sense.
"""

from __future__ import annotations

import torch
from torch import nn

CNN_CONFIGS = {"cnn_small": (32, 64, 128, 256)}


def _block(cin: int, cout: int, pool: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for c in (cin, cout):  # two convolutions: cin -> cout -> cout
        layers += [nn.Conv2d(c, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


class SmallCNN(nn.Module):
    """[B,3,S,S] -> blocks -> [B,C,S/8,S/8] -> mean -> [B,C] -> dropout -> Linear -> [B,num_classes]."""

    def __init__(self, num_classes: int, widths: tuple[int, ...] = CNN_CONFIGS["cnn_small"], drop_rate: float = 0.1):
        super().__init__()
        chans = (3, *widths)
        self.blocks = nn.ModuleList(_block(chans[i], chans[i + 1], pool=i < len(widths) - 1)
                                    for i in range(len(widths)))
        self.fc_norm = nn.Identity()
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(widths[-1], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward_pooled(self, x: torch.Tensor) -> torch.Tensor:
        for blk in self.blocks:
            x = blk(x)
        return x.mean(dim=(2, 3))  # [B,C]

    def forward_from_pooled(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.head(self.head_drop(self.fc_norm(pooled)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_from_pooled(self.forward_pooled(x))
