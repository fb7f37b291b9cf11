"""The cubic CNN and its closed-form objective against plain loops and autograd."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import torch_threads

from momentumlab.models import cubic_cnn
from momentumlab.models.cubic_cnn import (
    CubicCNN,
    FullBatchCubicObjective,
    cubic_loss_and_gradient,
    logistic_loss_bound,
    logistic_objective,
)
from momentumlab.native import native_compiler

N, P, D, M = 40, 3, 8, 4  # N = 2.5 kernel tiles; D = 8 is not a multiple of the kernel's 3 rows at once
needs_compiler = pytest.mark.skipif(native_compiler() is None, reason="no C compiler: the torch path runs")
TOLERANCES = {
    torch.float64: {"rtol": 1e-10, "atol": 1e-12},
    torch.float32: {"rtol": 2e-4, "atol": 2e-5},
}


def _problem(seed: int = 0, weight_std: float = 0.3):
    """Random inputs (N, P, d), labels in {−1, +1} and weights (m, d), float64."""
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(N, P, D, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, 2, (N,), generator=generator).to(torch.float64) * 2 - 1
    weight = torch.randn(M, D, generator=generator, dtype=torch.float64) * weight_std
    return inputs, labels, weight


def _loop_outputs(weight: torch.Tensor, inputs: torch.Tensor) -> list[float]:
    """f_W(X_i) = Σ_r Σ_j ⟨w_r, X_i[j]⟩³ as plain Python loops over floats."""
    w = weight.tolist()
    outputs = []
    for example in inputs.tolist():
        total = 0.0
        for w_r in w:
            for patch in example:
                dot = sum(a * b for a, b in zip(w_r, patch))
                total += dot**3
        outputs.append(total)
    return outputs


def _loop_loss(weight: torch.Tensor, inputs: torch.Tensor, labels: torch.Tensor, l2: float) -> float:
    """(1/N) Σ_i log(1 + exp(−y_i f_i)) + (λ/2)‖W‖²_F with Python floats."""
    outputs = _loop_outputs(weight, inputs)
    data_term = sum(math.log(1 + math.exp(-y * f)) for y, f in zip(labels.tolist(), outputs)) / len(outputs)
    penalty = 0.5 * l2 * sum(v * v for row in weight.tolist() for v in row)
    return data_term + penalty


def _autograd_reference(weight: torch.Tensor, inputs: torch.Tensor, labels: torch.Tensor, l2: float):
    """(L, ∇L) by autograd through CubicCNN, with the loss written out independently (float64)."""
    model = CubicCNN(*weight.shape, init_std=1.0).to(torch.float64)
    with torch.no_grad():
        model.weight.copy_(weight.to(torch.float64))
    outputs = model(inputs.to(torch.float64))
    y = labels.to(torch.float64)
    loss = torch.log1p(torch.exp(-y * outputs)).mean() + 0.5 * l2 * model.weight.pow(2).sum()
    (gradient,) = torch.autograd.grad(loss, model.weight)
    return loss.detach(), gradient


def test_forward_equals_triple_loop():
    """CubicCNN.forward equals Σ_r Σ_j ⟨w_r, X[j]⟩³ computed with Python loops."""
    inputs, _, weight = _problem()
    model = CubicCNN(*weight.shape, init_std=1.0).to(torch.float64)
    with torch.no_grad():
        model.weight.copy_(weight)
    outputs = model(inputs)
    assert outputs.shape == (N,)
    torch.testing.assert_close(
        outputs.detach(),
        torch.tensor(_loop_outputs(weight, inputs), dtype=torch.float64),
        rtol=1e-12,
        atol=1e-12,
    )


def test_forward_single_example_by_hand():
    """One example, P = 2, d = 2, m = 2: f = 1³ + 3³ + (−1)³ + 0.5³ written out."""
    model = CubicCNN(2, 2, init_std=1.0).to(torch.float64)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 0.0], [0.5, -0.5]], dtype=torch.float64))
    inputs = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]], dtype=torch.float64)
    # ⟨w1, X1⟩ = 1, ⟨w1, X2⟩ = 3, ⟨w2, X1⟩ = −0.5, ⟨w2, X2⟩ = −0.5
    expected = 1.0 + 27.0 - 0.125 - 0.125
    torch.testing.assert_close(
        model(inputs).detach(), torch.tensor([expected], dtype=torch.float64), rtol=1e-14, atol=1e-14
    )


def test_init_is_gaussian_with_generator():
    """Weights are torch.randn(m, d) · σ0 drawn in float64 from the given generator."""
    model = CubicCNN(M, D, init_std=0.05, generator=torch.Generator().manual_seed(7))
    expected = torch.randn(M, D, generator=torch.Generator().manual_seed(7), dtype=torch.float64) * 0.05
    assert model.weight.shape == (M, D)
    assert model.weight.dtype == torch.get_default_dtype()
    torch.testing.assert_close(model.weight.detach().to(torch.float64), expected, rtol=1e-6, atol=1e-9)
    other = CubicCNN(M, D, init_std=0.05, generator=torch.Generator().manual_seed(8))
    assert not torch.equal(model.weight, other.weight)


@pytest.mark.parametrize("l2", [0.0, 0.3])
def test_logistic_objective_equals_loop(l2):
    """logistic_objective(f, y, W, λ) = mean log(1+exp(−y f)) + λ/2‖W‖² with Python floats
    (small weights so every |y f| < 20, below F.softplus's linear threshold: tight tolerance)."""
    inputs, labels, weight = _problem(seed=1, weight_std=0.15)
    outputs = torch.tensor(_loop_outputs(weight, inputs), dtype=torch.float64)
    assert outputs.abs().max() < 20
    loss = logistic_objective(outputs, labels, weight, l2)
    assert loss.item() == pytest.approx(_loop_loss(weight, inputs, labels, l2), rel=1e-13, abs=1e-15)


@pytest.mark.parametrize("l2", [0.0, 0.3])
def test_logistic_objective_equals_loop_saturated(l2):
    """Same reference with some −y f > 20: F.softplus returns x there (threshold 20), an error of
    log1p(e^{−x}) ≤ e^{−20} ≈ 2.1e-9 per term, so the mean agrees to 3e-9."""
    inputs, labels, weight = _problem(seed=1)
    outputs = torch.tensor(_loop_outputs(weight, inputs), dtype=torch.float64)
    assert (-labels * outputs).max() > 20
    loss = logistic_objective(outputs, labels, weight, l2)
    assert loss.item() == pytest.approx(_loop_loss(weight, inputs, labels, l2), rel=0, abs=3e-9)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("l2", [0.0, 0.3])
def test_cubic_loss_and_gradient_equals_autograd(l2, dtype):
    """Closed-form (L, ∇L) on a batch equals autograd in float64 (tight) and float32 (loose); the
    loss also equals the Python-loop loss."""
    inputs, labels, weight = _problem(seed=2)
    ref_loss, ref_gradient = _autograd_reference(weight, inputs, labels, l2)
    assert ref_loss.item() == pytest.approx(_loop_loss(weight, inputs, labels, l2), rel=1e-12)
    assert ref_gradient.norm() > 1e-2  # not a trivially zero gradient

    loss, gradient = cubic_loss_and_gradient(weight.to(dtype), inputs.to(dtype), labels.to(dtype), l2)
    assert gradient.shape == (M, D) and gradient.dtype == dtype
    torch.testing.assert_close(loss.to(torch.float64), ref_loss, **TOLERANCES[dtype])
    torch.testing.assert_close(gradient.to(torch.float64), ref_gradient, **TOLERANCES[dtype])


def test_cubic_loss_and_gradient_on_minibatch():
    """On a slice of 7 examples the mean is over those 7 (autograd on the same slice)."""
    inputs, labels, weight = _problem(seed=3)
    batch_inputs, batch_labels = inputs[5:12], labels[5:12]
    ref_loss, ref_gradient = _autograd_reference(weight, batch_inputs, batch_labels, 0.1)
    loss, gradient = cubic_loss_and_gradient(weight, batch_inputs, batch_labels, 0.1)
    torch.testing.assert_close(loss, ref_loss, **TOLERANCES[torch.float64])
    torch.testing.assert_close(gradient, ref_gradient, **TOLERANCES[torch.float64])


ENGINES = [(None, True), (None, False), (1, False), (7, False), (N, False)]  # (chunk, compiled)


@pytest.mark.parametrize(("chunk", "compiled"), ENGINES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("l2", [0.0, 0.3])
def test_full_batch_objective_equals_autograd(l2, dtype, chunk, compiled):
    """FullBatchCubicObjective.loss_and_gradient equals autograd; `outputs` equals the forward pass;
    for the C kernel (float32 on the CPU) and the torch path at any chunk of examples (7: five full chunks
    and a partial one)."""
    inputs, labels, weight = _problem(seed=4)
    objective = FullBatchCubicObjective(
        inputs.to(dtype), labels.to(dtype), width=M, l2=l2, chunk=chunk, compiled=compiled
    )
    kernel = compiled and dtype == torch.float32 and native_compiler() is not None
    assert objective.engine == ("compiled" if kernel else "torch")
    loss, gradient = objective.loss_and_gradient(weight.to(dtype))
    ref_loss, ref_gradient = _autograd_reference(weight, inputs, labels, l2)
    assert gradient.dtype == dtype
    torch.testing.assert_close(loss.to(torch.float64), ref_loss, **TOLERANCES[dtype])
    torch.testing.assert_close(gradient.to(torch.float64), ref_gradient, **TOLERANCES[dtype])
    torch.testing.assert_close(
        objective.outputs.to(torch.float64),
        torch.tensor(_loop_outputs(weight, inputs), dtype=torch.float64),
        **TOLERANCES[dtype],
    )
    model = CubicCNN(M, D, init_std=1.0).to(dtype)
    with torch.no_grad():
        model.weight.copy_(weight.to(dtype))
        torch.testing.assert_close(objective.outputs, model(inputs.to(dtype)), **TOLERANCES[dtype])


@pytest.mark.parametrize("l2", [0.0, 0.3])
def test_full_batch_objective_repeated_calls(l2):
    """Calls with W1, W2, W1 again each match autograd at their own W: the buffers carry nothing over."""
    inputs, labels, weight_1 = _problem(seed=5)
    weight_2 = torch.randn(M, D, generator=torch.Generator().manual_seed(99), dtype=torch.float64) * 0.4
    objective = FullBatchCubicObjective(inputs, labels, width=M, l2=l2, chunk=7)

    results = []
    for weight in (weight_1, weight_2, weight_1):
        loss, gradient = objective.loss_and_gradient(weight)
        ref_loss, ref_gradient = _autograd_reference(weight, inputs, labels, l2)
        torch.testing.assert_close(loss, ref_loss, **TOLERANCES[torch.float64])
        torch.testing.assert_close(gradient, ref_gradient, **TOLERANCES[torch.float64])
        torch.testing.assert_close(
            objective.outputs,
            torch.tensor(_loop_outputs(weight, inputs), dtype=torch.float64),
            **TOLERANCES[torch.float64],
        )
        results.append((loss.item(), gradient.clone()))
    # the two weights give different answers, and returning to W1 reproduces the first call exactly
    assert not torch.allclose(results[0][1], results[1][1])
    assert results[2][0] == results[0][0]
    torch.testing.assert_close(results[2][1], results[0][1], rtol=0, atol=0)


def test_logistic_loss_bound_is_above_the_computed_loss_and_finite_only_where_it_is():
    """Rows of 40 float32 margins at scales from 1e-3 to 1e36, and rows where the loss is not finite or
    the bound cannot tell: the bound is at least torch's mean softplus wherever it is finite."""
    generator = torch.Generator().manual_seed(0)
    scales = torch.tensor([1e-3, 1.0, 30.0, 1e3, 1e20, 1e36])
    margins = (torch.randn(len(scales), 40, generator=generator) * scales[:, None]).float()
    margins[-1] = 1e36  # the loss 1e36 is finite, with the sum 4e37 not far below float32's 3.4e38
    bound = logistic_loss_bound(margins)
    loss = torch.nn.functional.softplus(margins).mean(dim=1)
    assert bool(torch.isfinite(bound).all())
    assert bool((bound >= loss).all())
    assert bound[1] == 4 * 40 * (margins[1].abs().max() + 1)  # B = 4N(max_i |m_i| + 1)
    # each margin 1e37 is finite, but their sum overflows: the loss is ∞, and the bound must not be finite
    special = torch.tensor([[1e37] * 40, [0.0] * 39 + [math.nan], [0.0] * 39 + [math.inf]])
    assert not bool(torch.isfinite(torch.nn.functional.softplus(special).mean(dim=1)).any())
    assert not bool(torch.isfinite(logistic_loss_bound(special)).any())
    # −∞ margins have softplus 0 (the loss is finite), but the bound cannot tell: not finite
    assert not math.isfinite(logistic_loss_bound(torch.tensor([0.0, -math.inf])))
    # more examples than 1/ε (float16: 1024) would let rounding grow past the bound: never finite
    assert not math.isfinite(logistic_loss_bound(torch.zeros(2000, dtype=torch.float16)))
    assert math.isfinite(logistic_loss_bound(torch.zeros(1000, dtype=torch.float16)))


@pytest.mark.parametrize(("chunk", "compiled"), [(None, True), (7, False)])
@pytest.mark.parametrize("l2", [0.0, 0.3])
@pytest.mark.parametrize(
    ("scale", "finite"),
    [(1.0, True), (1e10, True), (4e11, True), (1e13, False), (math.nan, False)],
    ids=["small", "large", "bound-too-large", "overflow", "nan"],
)
def test_gradient_and_finiteness_equals_loss_and_gradient(chunk, compiled, l2, scale, finite):
    """The gradient is loss_and_gradient's, bit for bit, and `finite` is whether its loss is finite, in
    float32 (the kernel and the torch path), at weights W·scale: with the outputs up to ~1e0, 4e31 (the
    bound 7e33 is finite), 3e36 (the loss 1.6e35 is finite but the bound 4·40·3e36 is not: the loss
    decides), overflowing, and NaN."""
    inputs, labels, weight = _problem(seed=6)
    objective = FullBatchCubicObjective(
        inputs.float(), labels.float(), width=M, l2=l2, chunk=chunk, compiled=compiled
    )
    weight = (weight * scale).float()
    loss, expected = objective.loss_and_gradient(weight)
    expected = expected.clone()
    gradient, is_finite = objective.gradient_and_finiteness(weight)
    assert is_finite == math.isfinite(loss) == finite
    torch.testing.assert_close(gradient, expected, rtol=0, atol=0, equal_nan=True)


@needs_compiler
@pytest.mark.parametrize(
    ("examples", "patches", "dim", "width"), [(1, 1, 1, 1), (17, 5, 30, 5), (300, 2, 33, 9)]
)
def test_compiled_objective_equals_autograd_at_other_shapes(examples, patches, dim, width):
    """The kernel, built per shape, against float64 autograd: one example (a tile of padding), one tile and
    a partial one, d above the lane count; repeated calls at W1, W2, W1 reproduce the first exactly."""
    generator = torch.Generator().manual_seed(examples)
    inputs = torch.randn(examples, patches, dim, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, 2, (examples,), generator=generator).to(torch.float64) * 2 - 1
    weights = [torch.randn(width, dim, generator=generator, dtype=torch.float64) * 0.3 for _ in range(2)]
    objective = FullBatchCubicObjective(inputs.float(), labels.float(), width=width, l2=0.1)
    assert objective.engine == "compiled"
    results = []
    for weight in (*weights, weights[0]):
        loss, gradient = objective.loss_and_gradient(weight.float())
        ref_loss, ref_gradient = _autograd_reference(weight, inputs, labels, 0.1)
        assert ref_gradient.norm() > 1e-3
        torch.testing.assert_close(loss.double(), ref_loss, **TOLERANCES[torch.float32])
        torch.testing.assert_close(gradient.double(), ref_gradient, **TOLERANCES[torch.float32])
        outputs = (inputs @ weight.T).pow(3).sum(dim=(1, 2))  # f_W(X_i), float64
        torch.testing.assert_close(objective.outputs.double(), outputs, **TOLERANCES[torch.float32])
        results.append((loss.item(), gradient.clone()))
    assert results[2][0] == results[0][0]
    torch.testing.assert_close(results[2][1], results[0][1], rtol=0, atol=0)


@needs_compiler
def test_compiled_objective_with_an_odd_block_count_equals_autograd(monkeypatch):
    """Tiles of one block of examples each (as many examples as lanes) with P = 5 patches: 5 blocks a tile,
    so the forward products' pairs of blocks end in a block alone, and its prefetches run past the data."""
    lanes = cubic_cnn._cubic_kernel(1, 1, 1, torch.zeros(1)).lanes()
    monkeypatch.setattr(cubic_cnn, "KERNEL_EXAMPLES", lanes)
    generator = torch.Generator().manual_seed(5)
    inputs = torch.randn(3 * lanes + 1, 5, 7, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, 2, (len(inputs),), generator=generator).to(torch.float64) * 2 - 1
    weight = torch.randn(3, 7, generator=generator, dtype=torch.float64) * 0.3
    objective = FullBatchCubicObjective(inputs.float(), labels.float(), width=3, l2=0.0)
    assert objective.engine == "compiled" and objective._tiles.shape[1] == 5  # (tiles, blocks, d, lanes)
    loss, gradient = objective.loss_and_gradient(weight.float())
    ref_loss, ref_gradient = _autograd_reference(weight, inputs, labels, 0.0)
    torch.testing.assert_close(loss.double(), ref_loss, **TOLERANCES[torch.float32])
    torch.testing.assert_close(gradient.double(), ref_gradient, **TOLERANCES[torch.float32])
    outputs = (inputs @ weight.T).pow(3).sum(dim=(1, 2))
    torch.testing.assert_close(objective.outputs.double(), outputs, **TOLERANCES[torch.float32])


@needs_compiler
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_compiled_objective_on_threads_equals_autograd(threads, monkeypatch):
    """3 079 examples: 193 tiles, enough for 3 threads (64 tiles each at least) with a partial last tile;
    each thread count equals autograd and gives the same bits on every call, on OpenMP's threads and on
    pthreads (a forked process) alike."""
    generator = torch.Generator().manual_seed(threads)
    inputs = torch.randn(3079, 2, 6, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, 2, (3079,), generator=generator).to(torch.float64) * 2 - 1
    weight = torch.randn(3, 6, generator=generator, dtype=torch.float64) * 0.3
    objective = FullBatchCubicObjective(inputs.float(), labels.float(), width=3, l2=0.0)
    with torch_threads(threads):
        loss, gradient = objective.loss_and_gradient(weight.float())
        gradient = gradient.clone()
        again = objective.loss_and_gradient(weight.float())[1].clone()
        monkeypatch.setattr(cubic_cnn, "openmp_usable", lambda: False)
        on_pthreads = objective.loss_and_gradient(weight.float())[1]
    torch.testing.assert_close(on_pthreads, gradient, rtol=0, atol=0)
    ref_loss, ref_gradient = _autograd_reference(weight, inputs, labels, 0.0)
    torch.testing.assert_close(loss.double(), ref_loss, **TOLERANCES[torch.float32])
    torch.testing.assert_close(gradient.double(), ref_gradient, **TOLERANCES[torch.float32])
    torch.testing.assert_close(again, gradient, rtol=0, atol=0)
    outputs = (inputs @ weight.T).pow(3).sum(dim=(1, 2))
    torch.testing.assert_close(objective.outputs.double(), outputs, **TOLERANCES[torch.float32])


@needs_compiler
def test_compiled_objective_follows_torchs_thread_count_from_call_to_call():
    """One objective called at 2, 1, 3 and again 2 threads (its buffer of the other threads' sums resized
    each time): each call equals autograd, and the two calls at 2 threads give the same bits."""
    generator = torch.Generator().manual_seed(4)
    inputs = torch.randn(3079, 2, 6, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, 2, (3079,), generator=generator).to(torch.float64) * 2 - 1
    weight = torch.randn(3, 6, generator=generator, dtype=torch.float64) * 0.3
    objective = FullBatchCubicObjective(inputs.float(), labels.float(), width=3, l2=0.0)
    reference = _autograd_reference(weight, inputs, labels, 0.0)[1]
    gradients = []
    for threads in (2, 1, 3, 2):
        with torch_threads(threads):
            gradients.append(objective.loss_and_gradient(weight.float())[1].clone())
    for gradient in gradients:
        torch.testing.assert_close(gradient.double(), reference, **TOLERANCES[torch.float32])
    torch.testing.assert_close(gradients[3], gradients[0], rtol=0, atol=0)


@needs_compiler
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_one_kernel_pass_of_several_runs_equals_each_run_alone(threads, monkeypatch):
    """Four weights (R, m, d) in one pass over 3 079 examples, into (R, N) outputs and (R, m, d)
    gradients: bit for bit each run's pass alone (the same sums in the same order), on OpenMP's threads
    and on pthreads, and each run equals autograd."""
    generator = torch.Generator().manual_seed(10 + threads)
    inputs = torch.randn(3079, 2, 6, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, 2, (3079,), generator=generator).to(torch.float64) * 2 - 1
    weights = torch.randn(4, 3, 6, generator=generator, dtype=torch.float64) * 0.3
    objective = FullBatchCubicObjective(inputs.float(), labels.float(), width=3, l2=0.0)
    outputs, gradients = torch.empty(4, 3079), torch.empty(4, 3, 6)
    alone_outputs, alone_gradients = torch.empty(4, 3079), torch.empty(4, 3, 6)
    with torch_threads(threads):
        for weight, output, gradient in zip(weights, alone_outputs, alone_gradients):
            objective.kernel_pass(weight.float(), output, gradient)
        assert objective.kernel_pass(weights.float(), outputs, gradients) is gradients
        monkeypatch.setattr(cubic_cnn, "openmp_usable", lambda: False)
        on_pthreads = objective.kernel_pass(weights.float(), torch.empty(4, 3079), torch.empty(4, 3, 6))
    torch.testing.assert_close(gradients, alone_gradients, rtol=0, atol=0)
    torch.testing.assert_close(outputs, alone_outputs, rtol=0, atol=0)
    torch.testing.assert_close(on_pthreads, gradients, rtol=0, atol=0)
    for weight, output, gradient in zip(weights, outputs, gradients):
        expected_outputs = (inputs @ weight.T).pow(3).sum(dim=(1, 2))  # f_W(X_i), float64
        torch.testing.assert_close(output.double(), expected_outputs, **TOLERANCES[torch.float32])
        reference = _autograd_reference(weight, inputs, labels, 0.0)[1]  # λ = 0: the loss term's gradient
        torch.testing.assert_close(gradient.double(), reference, **TOLERANCES[torch.float32])
    assert not torch.allclose(gradients[0], gradients[1])


@needs_compiler
def test_compiled_objective_refuses_a_weight_it_cannot_read():
    """The kernel reads raw memory: a weight of another shape or dtype is an error, not garbage."""
    inputs, labels, weight = _problem(seed=8)
    objective = FullBatchCubicObjective(inputs.float(), labels.float(), width=M, l2=0.0)
    for wrong in (weight.float()[:, :-1], weight, weight.float().T):
        with pytest.raises(ValueError, match="needs shape"):
            objective.loss_and_gradient(wrong)
    outputs, gradient = torch.empty(N), torch.empty(M, D)
    for wrong_outputs, wrong_gradient in (
        (torch.empty(N - 1), gradient),
        (outputs, torch.empty(D, M).T),  # the right shape, not contiguous
        (outputs.double(), gradient),
    ):
        with pytest.raises(ValueError, match="needs shape"):
            objective.kernel_pass(weight.float(), wrong_outputs, wrong_gradient)
    with pytest.raises(ValueError, match=r"needs shape \(2, 40\)"):  # two runs' weights, one run's outputs
        objective.kernel_pass(torch.stack([weight.float()] * 2), outputs, torch.empty(2, M, D))
    assert objective.kernel_pass(weight.float(), outputs, gradient) is gradient
    torch.testing.assert_close(gradient, objective.loss_and_gradient(weight.float())[1], rtol=0, atol=0)
    on_torch = FullBatchCubicObjective(inputs.float(), labels.float(), width=M, l2=0.0, compiled=False)
    with pytest.raises(ValueError, match="needs the compiled engine; this objective's is 'torch'"):
        on_torch.kernel_pass(weight.float(), outputs, gradient)


def test_full_batch_objective_matches_minibatch_function():
    """Full batch fast path and cubic_loss_and_gradient agree on the same data (float64)."""
    inputs, labels, weight = _problem(seed=6, weight_std=0.5)
    objective = FullBatchCubicObjective(inputs, labels, width=M, l2=0.05)
    loss_fast, gradient_fast = objective.loss_and_gradient(weight)
    loss_slow, gradient_slow = cubic_loss_and_gradient(weight, inputs, labels, 0.05)
    torch.testing.assert_close(loss_fast, loss_slow, **TOLERANCES[torch.float64])
    torch.testing.assert_close(gradient_fast, gradient_slow, **TOLERANCES[torch.float64])


def test_gradient_finite_difference():
    """Central finite differences of the Python-loop loss match the closed-form gradient entry-wise."""
    inputs, labels, weight = _problem(seed=7)
    inputs, labels = inputs[:10], labels[:10]
    _, gradient = cubic_loss_and_gradient(weight, inputs, labels, 0.2)
    eps = 1e-6
    for r, k in [(0, 0), (1, 3), (3, 7)]:
        plus, minus = weight.clone(), weight.clone()
        plus[r, k] += eps
        minus[r, k] -= eps
        numeric = (_loop_loss(plus, inputs, labels, 0.2) - _loop_loss(minus, inputs, labels, 0.2)) / (2 * eps)
        assert gradient[r, k].item() == pytest.approx(numeric, rel=1e-5, abs=1e-8)
