"""Figure 4's small-margin corruption: exact fraction, determinism, and each of its three steps."""

from __future__ import annotations

import pytest
import torch

from momentumlab.data.corruption import corrupt_small_margin, lower_resolution
from momentumlab.data.images import ImageSet


def random_images(count: int = 200, channels: int = 3, side: int = 8, seed: int = 0) -> ImageSet:
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(count, channels, side, side, generator=generator)
    return ImageSet.clean(images, torch.randint(0, 10, (count,), generator=generator))


@pytest.mark.parametrize(("fraction", "expected"), [(0.1, 20), (0.25, 50), (0.0, 0), (1.0, 200), (0.123, 25)])
def test_exactly_round_fraction_n_examples_are_corrupted(fraction, expected):
    corrupted = corrupt_small_margin(random_images(), fraction=fraction)
    assert int(corrupted.is_corrupted.sum()) == expected


def test_the_same_seed_gives_the_same_result_and_another_seed_another():
    data = random_images()
    first, again = corrupt_small_margin(data, seed=5), corrupt_small_margin(data, seed=5)
    assert torch.equal(first.images, again.images) and torch.equal(first.is_corrupted, again.is_corrupted)
    other = corrupt_small_margin(data, seed=6)
    assert not torch.equal(first.is_corrupted, other.is_corrupted)


def test_untouched_examples_are_bit_identical_and_corrupted_ones_differ():
    data = random_images()
    corrupted = corrupt_small_margin(data, fraction=0.3, seed=1)
    rest, chosen = ~corrupted.is_corrupted, corrupted.is_corrupted
    assert torch.equal(corrupted.images[rest], data.images[rest])
    assert torch.equal(corrupted.labels, data.labels)
    difference = (corrupted.images[chosen] - data.images[chosen]).abs().flatten(1).amax(dim=1)
    assert difference.min() > 0.1
    assert 0.0 <= corrupted.images.min() and corrupted.images.max() <= 1.0
    assert not data.is_corrupted.any()  # the input is not modified


def test_lower_resolution_replaces_each_block_by_its_mean():
    images = random_images(count=3, side=8).images
    degraded = lower_resolution(images, downsample=2)
    for row in range(0, 8, 2):
        for column in range(0, 8, 2):
            block_mean = images[:, :, row : row + 2, column : column + 2].mean(dim=(2, 3), keepdim=True)
            torch.testing.assert_close(
                degraded[:, :, row : row + 2, column : column + 2], block_mean.expand(-1, -1, 2, 2)
            )


def test_noise_has_variance_0_005():
    # Flat mid-grey images: lowering the resolution and shuffling channels change nothing and the clamp to
    # [0, 1] is 7 standard deviations away, so corrupted − 0.5 is the noise itself.
    count, channels, side = 2000, 3, 8
    flat = ImageSet.clean(
        torch.full((count, channels, side, side), 0.5), torch.zeros(count, dtype=torch.long)
    )
    noise = corrupt_small_margin(flat, fraction=1.0, seed=2).images - 0.5
    assert abs(noise.mean().item()) < 1e-3
    assert noise.var().item() == pytest.approx(0.005, rel=0.02)  # standard error of the estimate ≈ 0.3%


@pytest.mark.parametrize("channels", [2, 3])
def test_channels_are_shuffled_by_a_non_identity_permutation(channels):
    data = random_images(count=300, channels=channels)
    corrupted = corrupt_small_margin(data, fraction=0.5, seed=3, noise_variance=0.0)
    chosen = corrupted.is_corrupted
    degraded = lower_resolution(data.images[chosen], downsample=2)
    orders = []
    for before, after in zip(degraded, corrupted.images[chosen]):
        sources = [[j for j in range(channels) if torch.equal(after[k], before[j])] for k in range(channels)]
        assert all(len(source) == 1 for source in sources)  # each output channel is one input channel
        order = tuple(source[0] for source in sources)
        assert sorted(order) == list(range(channels)) and order != tuple(range(channels))
        orders.append(order)
    if channels == 3:
        assert len(set(orders)) == 5  # every non-identity permutation of RGB occurs


def test_one_channel_images_are_not_permuted():
    data = random_images(channels=1)
    corrupted = corrupt_small_margin(data, fraction=0.2, seed=4, noise_variance=0.0)
    chosen = corrupted.is_corrupted
    assert torch.equal(corrupted.images[chosen], lower_resolution(data.images[chosen], downsample=2))


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"fraction": 1.5}, "fraction = 1.5: must lie in"),
        ({"noise_variance": -1.0}, "noise_variance = -1.0"),
        ({"downsample": 3}, "downsample = 3: must be a positive divisor of the image size 8×8"),
    ],
)
def test_invalid_settings_are_refused(settings, message):
    with pytest.raises(ValueError, match=message):
        corrupt_small_margin(random_images(count=4), **settings)
