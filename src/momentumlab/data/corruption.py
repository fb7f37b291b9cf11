"""Figure 4's artificial small-margin images (Jelassi & Li; SPEC §1).

A chosen fraction of the images (10% in the paper) is made harder to classify: the resolution is
lowered, Gaussian noise of variance 0.005 is added and the RGB channels are shuffled. The corrupted
examples form the small-margin group, flagged by `ImageSet.is_corrupted`, on which every metric is
also reported.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from momentumlab.data.images import ImageSet

NOISE_VARIANCE = 0.005


def lower_resolution(images: torch.Tensor, downsample: int) -> torch.Tensor:
    """Average-pool (N, C, H, W) by `downsample`, then upsample back by nearest neighbour.

    Nearest neighbour keeps the blocky look of a low-resolution image (each low-resolution pixel becomes a
    `downsample`×`downsample` block of its mean); bilinear upsampling would blur instead.
    """
    low = F.avg_pool2d(images, kernel_size=downsample)
    return F.interpolate(low, scale_factor=downsample, mode="nearest")


def add_noise(images: torch.Tensor, variance: float, generator: torch.Generator) -> torch.Tensor:
    """Add N(0, variance) to every pixel, without clamping."""
    noise = torch.randn(images.shape, generator=generator, dtype=images.dtype)
    return images + noise * math.sqrt(variance)  # std = √variance


def shuffle_channels(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Permute each image's channels by its own permutation, drawn uniformly among the non-identity ones.

    The identity is excluded so that every corrupted image has its colours changed; one-channel images
    are returned as they are.
    """
    count, channels = images.shape[:2]
    if channels == 1:
        return images
    orders = torch.rand(count, channels, generator=generator).argsort(dim=1)
    identity = torch.arange(channels)
    while (unchanged := (orders == identity).all(dim=1)).any():
        orders[unchanged] = torch.rand(int(unchanged.sum()), channels, generator=generator).argsort(dim=1)
    return images.gather(1, orders[:, :, None, None].expand_as(images))  # output channel k = input orders[k]


def corrupt_small_margin(
    data: ImageSet,
    fraction: float = 0.1,
    seed: int = 0,
    noise_variance: float = NOISE_VARIANCE,
    downsample: int = 2,
) -> ImageSet:
    """Corrupt exactly round(fraction·N) examples chosen from `seed` and flag them in `is_corrupted`.

    Each chosen image has its resolution lowered (:func:`lower_resolution`), Gaussian noise of variance
    `noise_variance` added, the result clamped to [0, 1] (to stay a valid image), then its channels
    shuffled (:func:`shuffle_channels`). The other examples are returned bit-identical. Use different
    seeds for the training and the test set.
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction = {fraction}: must lie in [0, 1]")
    if noise_variance < 0:
        raise ValueError(f"noise_variance = {noise_variance}: must be ≥ 0")
    height, width = data.images.shape[2:]
    if downsample < 1 or height % downsample or width % downsample:
        raise ValueError(
            f"downsample = {downsample}: must be a positive divisor of the image size {height}×{width}"
        )
    generator = torch.Generator().manual_seed(seed)
    chosen = torch.randperm(len(data), generator=generator)[: round(fraction * len(data))].sort().values
    degraded = lower_resolution(data.images[chosen], downsample)
    noisy = add_noise(degraded, noise_variance, generator).clamp(0.0, 1.0)
    images = data.images.clone()
    images[chosen] = shuffle_channels(noisy, generator)
    is_corrupted = data.is_corrupted.clone()
    is_corrupted[chosen] = True
    return ImageSet(images, data.labels, is_corrupted)
