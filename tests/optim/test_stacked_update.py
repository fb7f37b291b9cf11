"""The stacked runs' optimizer step: each row against the run's own optimizer, and the C kernel against
the torch path bit for bit."""

from __future__ import annotations

import pytest
import torch

from momentumlab import native
from momentumlab.optim import build_optimizer
from momentumlab.optim.momentum import OptimizerConfig
from momentumlab.optim.stacked_update import stacked_update, torch_fuses_addcmul, update_coefficients

RULES = [  # (name, lr, momentum, weight decay)
    ("gd", 0.3, 0.0, 0.0),
    ("ema_momentum", 0.5, 0.9, 0.01),
    ("heavy_ball", 0.05, 0.8, 0.0),
    ("nesterov", 0.1, 0.5, 0.1),
]
SIZE = 1003  # not a multiple of any vector width: the kernel's last elements are a tail


@pytest.fixture
def native_off(monkeypatch):
    """The torch path inside the test (MOMENTUMLAB_NATIVE=0)."""
    monkeypatch.setenv("MOMENTUMLAB_NATIVE", "0")
    native.load_kernel.cache_clear()
    yield
    monkeypatch.delenv("MOMENTUMLAB_NATIVE")
    native.load_kernel.cache_clear()


def _rows(dtype: torch.dtype, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """θ, b, ∇ for every rule (a row each), their coefficients (η, μ, a, c, e) and λ."""
    generator = torch.Generator().manual_seed(seed)
    parameters, buffers, gradient = torch.randn(3, len(RULES), SIZE, generator=generator, dtype=dtype)
    configs = [OptimizerConfig(name=name, lr=lr, momentum=momentum) for name, lr, momentum, _ in RULES]
    coefficients = torch.tensor([(c.lr, *update_coefficients(c)) for c in configs], dtype=dtype)
    weight_decay = torch.tensor([decay for *_, decay in RULES], dtype=dtype)
    return parameters, buffers, gradient, coefficients, weight_decay


def _steps_of_each_runs_optimizer(parameters, buffers, gradient, weight_decay, steps: int):
    """Each row stepped `steps` times by its own optimizer from build_optimizer, with ∇ + λθ."""
    results = []
    for row, (name, lr, momentum, _) in enumerate(RULES):
        parameter = torch.nn.Parameter(parameters[row].clone())
        optimizer = build_optimizer(OptimizerConfig(name=name, lr=lr, momentum=momentum), [parameter])
        if name != "gd":
            optimizer.state[parameter]["momentum_buffer"] = buffers[row].clone()
        for _ in range(steps):
            parameter.grad = gradient[row] + weight_decay[row] * parameter.detach()
            optimizer.step()
        results.append(parameter.detach())
    return torch.stack(results)


@pytest.mark.parametrize("path", ["torch", "kernel"])
def test_every_row_steps_as_its_runs_own_optimizer(path, request):
    if path == "torch":
        request.getfixturevalue("native_off")
    dtype = torch.float64 if path == "torch" else torch.float32  # the kernel takes float32
    parameters, buffers, gradient, coefficients, weight_decay = _rows(dtype)
    expected = _steps_of_each_runs_optimizer(parameters, buffers, gradient, weight_decay, steps=3)
    for _ in range(3):
        stacked_update(parameters, buffers, gradient.clone(), coefficients, weight_decay)
    tolerance = {"rtol": 1e-12, "atol": 1e-12} if dtype == torch.float64 else {"rtol": 1e-5, "atol": 1e-6}
    torch.testing.assert_close(parameters, expected, **tolerance)


@pytest.mark.skipif(native.native_compiler() is None, reason="no C compiler")
def test_the_kernel_gives_the_torch_paths_bits(monkeypatch):
    kernel_rows, torch_rows = _rows(torch.float32, seed=1), _rows(torch.float32, seed=1)
    for _ in range(3):
        stacked_update(*kernel_rows[:2], kernel_rows[2].clone(), *kernel_rows[3:])
    monkeypatch.setenv("MOMENTUMLAB_NATIVE", "0")
    native.load_kernel.cache_clear()
    for _ in range(3):
        stacked_update(*torch_rows[:2], torch_rows[2].clone(), *torch_rows[3:])
    native.load_kernel.cache_clear()
    assert torch.equal(kernel_rows[0], torch_rows[0]) and torch.equal(kernel_rows[1], torch_rows[1])


def test_the_fused_rounding_probe_reads_torchs_addcmul():
    """t₁ = t₂ = 1 + 2⁻¹², t₁t₂ = 1 + 2⁻¹¹ + 2⁻²⁴: rounded on its own (a tie, to even) 1 + 2⁻¹¹, so
    −1 + t₁t₂ is 2⁻¹¹ with two roundings and 2⁻¹¹ + 2⁻²⁴ (exact) with one."""
    s, t1, t2 = (torch.tensor([value], dtype=torch.float32) for value in (-1.0, 1 + 2**-12, 1 + 2**-12))
    result = torch.addcmul(s, t1, t2).item()
    assert result in (2**-11, 2**-11 + 2**-24)
    assert torch_fuses_addcmul() == (result == 2**-11 + 2**-24)
