"""ResNet-18, CIFAR variant (He et al. 2016), with batch normalization optional.

Stem: one 3×3 convolution of 64 channels, stride 1, and no max-pool, so 32×32 inputs keep their size
until the first downsampling stage. Then four stages of two basic blocks (3×3 conv → norm → ReLU →
3×3 conv → norm, plus the shortcut, then ReLU) with 64, 128, 256, 512 channels; stages 2–4 halve the
size with stride 2 and a 1×1 projection shortcut. Global average pool and a linear read-out.

`norm="batch"` is the standard network (11 173 962 parameters for 10 classes; convolutions carry no bias
because the norm's shift replaces it). `norm="none"` is the paper's Figure 1 network: every norm is the
identity and every convolution gets a bias instead (11 169 162 parameters for 10 classes).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

Norm = Literal["none", "batch"]
STAGE_WIDTHS = (64, 128, 256, 512)
BLOCKS_PER_STAGE = (2, 2, 2, 2)


def norm_layer(norm: Norm, channels: int) -> nn.Module:
    """BatchNorm2d, or the identity when `norm` is "none"."""
    if norm == "batch":
        return nn.BatchNorm2d(channels)
    if norm == "none":
        return nn.Identity()
    raise ValueError(f"norm={norm!r}: allowed 'none' or 'batch'")


def conv3x3(in_channels: int, out_channels: int, stride: int, norm: Norm) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=norm == "none")


class BasicBlock(nn.Module):
    """Two 3×3 convolutions with a residual connection (post-activation, as in ResNet v1)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, norm: Norm):
        super().__init__()
        self.conv1 = conv3x3(in_channels, out_channels, stride, norm)
        self.norm1 = norm_layer(norm, out_channels)
        self.conv2 = conv3x3(out_channels, out_channels, 1, norm)
        self.norm2 = norm_layer(norm, out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=norm == "none"),
                norm_layer(norm, out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    """ResNet-18 for small (e.g. 32×32) images; logits of shape (N, num_classes)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3, norm: Norm = "none"):
        super().__init__()
        self.stem = nn.Sequential(
            conv3x3(in_channels, STAGE_WIDTHS[0], 1, norm), norm_layer(norm, STAGE_WIDTHS[0]), nn.ReLU()
        )
        blocks, channels = [], STAGE_WIDTHS[0]
        for stage, (width, count) in enumerate(zip(STAGE_WIDTHS, BLOCKS_PER_STAGE)):
            for index in range(count):
                stride = 2 if stage > 0 and index == 0 else 1
                blocks.append(BasicBlock(channels, width, stride, norm))
                channels = width
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.blocks(self.stem(images))))
