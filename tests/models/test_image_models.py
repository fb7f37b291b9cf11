"""ResNet-18 (CIFAR variant) and WRN-16-k: shapes, parameter counts against the architecture, norms."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from momentumlab.models.resnet import ResNet18
from momentumlab.models.wide_resnet import WideResNet16


def parameter_count(model: nn.Module) -> int:
    return sum(parameter.numel() for parameter in model.parameters())


def counter(norm: str):
    """conv(cin, cout, k) and norm(c) parameter counts: biases without norm, γ and β with batch norm."""
    bias = norm == "none"

    def conv(cin: int, cout: int, k: int = 3) -> int:
        return k * k * cin * cout + (cout if bias else 0)

    def norm_(channels: int) -> int:
        return 0 if bias else 2 * channels

    return conv, norm_


def resnet18_count(classes: int, norm: str) -> int:
    conv, norm_ = counter(norm)
    total, channels = conv(3, 64) + norm_(64), 64
    for width in (64, 128, 256, 512):
        for _ in range(2):
            total += conv(channels, width) + norm_(width) + conv(width, width) + norm_(width)
            if channels != width:
                total += conv(channels, width, 1) + norm_(width)
            channels = width
    return total + 512 * classes + classes


def wrn16_count(classes: int, k: int, norm: str) -> int:
    conv, norm_ = counter(norm)
    total, channels = conv(3, 16), 16
    for width in (16 * k, 32 * k, 64 * k):
        for _ in range(2):
            total += norm_(channels) + conv(channels, width) + norm_(width) + conv(width, width)
            if channels != width:
                total += conv(channels, width, 1)
            channels = width
    return total + norm_(channels) + channels * classes + classes


def test_resnet18_parameter_count_matches_the_standard_architecture():
    # 11 173 962 is the published count of the CIFAR ResNet-18 with batch norm and 10 classes.
    assert resnet18_count(10, "batch") == 11_173_962
    assert parameter_count(ResNet18(10, norm="batch")) == 11_173_962
    assert parameter_count(ResNet18(10, norm="none")) == resnet18_count(10, "none") == 11_169_162
    assert parameter_count(ResNet18(100, norm="none")) == resnet18_count(100, "none")


@pytest.mark.parametrize("k", [1, 4, 8])
def test_wide_resnet16_parameter_count(k):
    assert parameter_count(WideResNet16(10, widen_factor=k, norm="batch")) == wrn16_count(10, k, "batch")
    assert parameter_count(WideResNet16(100, widen_factor=k, norm="none")) == wrn16_count(100, k, "none")


def test_wide_resnet16_reference_counts():
    # WRN-16-4 and WRN-16-8 with batch norm, 10 classes: 2.75M and 10.96M (Zagoruyko & Komodakis).
    assert wrn16_count(10, 4, "batch") == 2_748_890
    assert wrn16_count(10, 8, "batch") == 10_961_370


def test_output_shapes_for_32x32_inputs():
    torch.manual_seed(0)
    images = torch.rand(2, 3, 32, 32)
    assert ResNet18(10).eval()(images).shape == (2, 10)
    assert WideResNet16(100, widen_factor=2).eval()(images).shape == (2, 100)
    assert ResNet18(10, in_channels=1)(torch.rand(2, 1, 8, 8)).shape == (2, 10)


@pytest.mark.parametrize(
    ("build", "batch_norms"),
    [
        (lambda norm: ResNet18(10, norm=norm), 20),
        (lambda norm: WideResNet16(10, widen_factor=2, norm=norm), 13),
    ],
)
def test_norm_selects_batch_norm_or_none(build, batch_norms):
    def count(model: nn.Module) -> int:
        return sum(isinstance(module, nn.BatchNorm2d) for module in model.modules())

    assert count(build("none")) == 0
    assert count(build("batch")) == batch_norms
    convs = [m for m in build("none").modules() if isinstance(m, nn.Conv2d)]
    assert all(conv.bias is not None for conv in convs)
    assert all(m.bias is None for m in build("batch").modules() if isinstance(m, nn.Conv2d))


def test_unknown_norm_is_refused():
    with pytest.raises(ValueError, match="norm='layer'"):
        ResNet18(10, norm="layer")


@pytest.mark.parametrize(
    "build", [lambda: ResNet18(10, norm="batch"), lambda: WideResNet16(10, widen_factor=2, norm="none")]
)
def test_channels_last_forward_equals_contiguous_forward(build):
    torch.manual_seed(0)
    model = build().eval()
    images = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        expected = model(images)
        model = model.to(memory_format=torch.channels_last)
        actual = model(images.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5)
