"""WideResNet-16-k (Zagoruyko & Komodakis 2016), pre-activation blocks, no dropout, norm optional.

Depth 16 = 6n + 4 with n = 2 blocks per group. A 3×3 stem of 16 channels, then three groups of width
16k, 32k, 64k (the last two halve the size with stride 2), each block norm → ReLU → 3×3 conv → norm →
ReLU → 3×3 conv plus the shortcut (a 1×1 projection where the width or size changes), then a final
norm → ReLU, global average pool and a linear read-out. As in :mod:`momentumlab.models.resnet`,
`norm="none"` makes every norm the identity and gives every convolution a bias; `norm="batch"` is the
reference network (WRN-16-8, 10 classes: 10 961 370 parameters, 10 958 666 with "none"; WRN-16-4:
2 748 890).
"""

from __future__ import annotations

import torch
from torch import nn

from momentumlab.models.resnet import Norm, conv3x3, norm_layer

DEPTH = 16
BLOCKS_PER_GROUP = (DEPTH - 4) // 6  # n
STEM_WIDTH = 16
GROUP_WIDTHS = (16, 32, 64)  # times the widen factor k


class PreActBlock(nn.Module):
    """Pre-activation residual block: x + conv(relu(norm(conv(relu(norm(x))))))."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, norm: Norm):
        super().__init__()
        self.norm1 = norm_layer(norm, in_channels)
        self.conv1 = conv3x3(in_channels, out_channels, stride, norm)
        self.norm2 = norm_layer(norm, out_channels)
        self.conv2 = conv3x3(out_channels, out_channels, 1, norm)
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=norm == "none")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        activated = torch.relu(self.norm1(x))
        out = self.conv1(activated)
        out = self.conv2(torch.relu(self.norm2(out)))
        # the projection reads the activated input, as in the reference implementation
        return out + (x if self.shortcut is None else self.shortcut(activated))


class WideResNet16(nn.Module):
    """WRN-16-k for small (e.g. 32×32) images; logits of shape (N, num_classes)."""

    def __init__(
        self, num_classes: int = 10, in_channels: int = 3, widen_factor: int = 8, norm: Norm = "none"
    ):
        super().__init__()
        if widen_factor < 1:
            raise ValueError(f"widen_factor={widen_factor}: must be a positive integer")
        self.stem = conv3x3(in_channels, STEM_WIDTH, 1, norm)
        blocks, channels = [], STEM_WIDTH
        for group, width in enumerate(GROUP_WIDTHS):
            for index in range(BLOCKS_PER_GROUP):
                stride = 2 if group > 0 and index == 0 else 1
                blocks.append(PreActBlock(channels, width * widen_factor, stride, norm))
                channels = width * widen_factor
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(
            norm_layer(norm, channels), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()
        )
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.head(self.blocks(self.stem(images))))
