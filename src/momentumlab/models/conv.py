"""A small convolutional classifier without batch norm or dropout, for curvature probes on images.

conv3×3 → ReLU → conv3×3 → ReLU → average pool to 2×2 → linear. Padding keeps the image size, so the
pooling window is image_size / 2 and the parameter count does not depend on the image size (width 16,
10 classes: 3 130 parameters for one input channel, 3 418 for three).
"""

from __future__ import annotations

import math

import torch
from torch import nn

POOLED_SIZE = 2  # spatial size after pooling


class SmallCNN(nn.Module):
    """Two 3×3 convolutions of `width` channels and a linear read-out of the 2×2-pooled features.

    With a `generator`, the weights are drawn from it with PyTorch's default layer initialization
    (uniform on ±1/√fan_in), so a model is a function of its seed and not of the global random state.
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        width: int = 16,
        image_size: int = 8,
        generator: torch.Generator | None = None,
    ):
        super().__init__()
        if image_size < POOLED_SIZE or image_size % POOLED_SIZE:
            raise ValueError(f"image_size={image_size}: must be a positive multiple of {POOLED_SIZE}")
        self.image_size = image_size
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, width, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.AvgPool2d(image_size // POOLED_SIZE),
            nn.Flatten(),
        )
        self.classifier = nn.Linear(width * POOLED_SIZE**2, num_classes)
        if generator is not None:
            self._initialize(generator)

    @torch.no_grad()
    def _initialize(self, generator: torch.Generator) -> None:
        for layer in (self.features[0], self.features[2], self.classifier):
            bound = 1 / math.sqrt(layer.weight[0].numel())  # 1/√fan_in
            layer.weight.uniform_(-bound, bound, generator=generator)
            layer.bias.uniform_(-bound, bound, generator=generator)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits of shape (N, num_classes) for images of shape (N, C, image_size, image_size)."""
        if images.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(
                f"images of size {tuple(images.shape[-2:])}: this model takes {self.image_size}×{self.image_size}"
            )
        return self.classifier(self.features(images))
