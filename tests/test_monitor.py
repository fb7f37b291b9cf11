"""The Monitor in plain training loops: nothing in the loop changes (bit-identical parameters, buffers,
optimizer state and RNG), and each recorded quantity equals a slow reference (explicit loops over examples,
dense Hessians, the actual parameter change, hand-written formulas)."""

from __future__ import annotations

import copy
import math

import pandas as pd
import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from momentumlab import Monitor
from momentumlab.monitor import accuracy
from momentumlab.optim import EMAMomentum, HeavyBall, Nesterov
from momentumlab.probes.noise import smoothing_degree

POINTS, FEATURES, CLASSES = 48, 5, 3


def _data(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(POINTS, FEATURES, generator=generator, dtype=torch.float64)
    return inputs, torch.randint(0, CLASSES, (POINTS,), generator=generator)


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(FEATURES, 6), nn.Tanh(), nn.Linear(6, CLASSES)).double()


def _bn_dropout_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(FEATURES, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Dropout(0.3), nn.Linear(6, CLASSES)
    ).double()


OPTIMIZERS = {
    "heavy_ball": lambda p: HeavyBall(p, lr=0.05, momentum=0.9),
    "ema_momentum": lambda p: EMAMomentum(p, lr=0.2, momentum=0.9),
    "nesterov": lambda p: Nesterov(p, lr=0.05, momentum=0.9),
    "torch_sgd": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, dampening=0.3, weight_decay=1e-2),
    "torch_nesterov": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True),
    "adamw": lambda p: torch.optim.AdamW(p, lr=0.01),
}


def _train(model, optimizer, loader, steps, monitor_options=None):
    """A plain loop: shuffling loader, dropout, BN; the monitor (if any) only adds monitor.step(loss)."""
    monitor = None
    if monitor_options is not None:
        monitor = Monitor(model, F.cross_entropy, optimizer, **monitor_options)
    step = 0
    while step < steps:
        for inputs, labels in loader:
            optimizer.zero_grad()
            loss = F.cross_entropy(model(inputs), labels)
            loss.backward()
            optimizer.step()
            if monitor is not None:
                monitor.step(loss)
            step += 1
            if step == steps:
                break
    return monitor


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_training_is_bit_identical_with_and_without_the_monitor(name):
    """BN + dropout in train mode, a shuffling DataLoader drawing from the global RNG, every probe on
    (eigenvalues, trace, density, noise, in train mode with dropout): parameters, BN buffers, optimizer
    state and the global RNG state after 6 steps are bit-identical to an unmonitored run."""
    inputs, labels = _data()
    results = []
    for monitored in (False, True):
        torch.manual_seed(123)
        model = _bn_dropout_model().train()
        optimizer = OPTIMIZERS[name](model.parameters())
        loader = DataLoader(TensorDataset(inputs, labels), batch_size=8, shuffle=True)
        options = {
            "data": DataLoader(TensorDataset(inputs, labels), batch_size=16, shuffle=True),
            "every": 2,
            "top_k": 2,
            "trace_probes": 3,
            "density": True,
            "density_steps": 5,
            "noise": name not in ("adamw", "heavy_ball"),  # per-sample gradients of BN: eval mode only
            "mode": "train" if name == "heavy_ball" else "eval",
        }
        monitor = _train(model, optimizer, loader, 6, options if monitored else None)
        if monitored:
            assert set(monitor.table()["step"]) == {2, 4, 6}
        state = [
            t.clone() for s in optimizer.state.values() for t in s.values() if isinstance(t, torch.Tensor)
        ]
        results.append(([p.detach().clone() for p in model.parameters()], list(model.buffers()), state))
        results[-1] += (torch.get_rng_state(),)
    for before, after in zip(*results):
        assert len(before) == len(after) and all(torch.equal(a, b) for a, b in zip(before, after))


@pytest.mark.parametrize("name", ["torch_sgd", "nesterov"])
def test_background_rows_equal_the_loops_and_training_stays_bit_identical(name):
    """The probes in a worker thread on copies of the model, and in a worker process on its state: the same
    table, the same densities, rows reaching the loggers in step order, and training (BN + dropout in train
    mode, a shuffling loader drawing from the global RNG) bit-identical to an unmonitored run, global RNG
    state included."""

    class Recorder:
        def __init__(self):
            self.steps = []

        def log(self, step, values):
            self.steps.append(step)

        def close(self):
            pass

    inputs, labels = _data()
    results, tables, densities, recorders = [], [], [], []
    for background in (None, False, "thread", "process"):
        torch.manual_seed(123)
        model = _bn_dropout_model().train()
        optimizer = OPTIMIZERS[name](model.parameters())
        loader = DataLoader(TensorDataset(inputs, labels), batch_size=8, shuffle=True)
        recorders.append(Recorder())
        options = {
            "data": (inputs, labels),
            "batch_size": 8,
            "every": 2,
            "top_k": 2,
            "trace_probes": 3,
            "density": True,
            "density_steps": 5,
            "metrics": {"accuracy": accuracy},
            "background": background,
            "loggers": [recorders[-1]],
        }
        monitor = _train(model, optimizer, loader, 12, None if background is None else options)
        if monitor is not None:
            tables.append(monitor.table())
            densities.append(monitor.spectra())
            monitor.close()
        state = [t.clone() for s in optimizer.state.values() for t in s.values()]
        results.append(
            [*map(torch.clone, model.parameters()), *model.buffers(), *state, torch.get_rng_state()]
        )
    for table, spectra in zip(tables[1:], densities[1:]):
        pd.testing.assert_frame_equal(tables[0], table, check_exact=True)
        pd.testing.assert_frame_equal(densities[0], spectra, check_exact=True)
    assert set(tables[0]["name"]) >= {"noise_norm", "top_eigenvalue_2", "hessian_trace", "accuracy"}
    assert [recorder.steps for recorder in recorders[1:]] == [[2, 4, 6, 8, 10, 12]] * 3
    for monitored in results[1:]:
        for unmonitored, value in zip(results[0], monitored):
            assert torch.equal(unmonitored, value)


def _broken_metric(outputs, targets):
    raise ArithmeticError("metric failed")


@pytest.mark.parametrize("background", ["thread", "process"])
def test_a_background_failure_is_raised_in_the_loop(background):
    inputs, labels = _data()
    model = _mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    monitor = Monitor(
        model,
        F.cross_entropy,
        optimizer,
        (inputs, labels),
        batch_size=8,
        every=1,
        background=background,
        metrics={"broken": _broken_metric},
    )
    optimizer.zero_grad()
    F.cross_entropy(model(inputs), labels).backward()
    optimizer.step()
    monitor.step()
    with pytest.raises(ArithmeticError, match="metric failed"):
        monitor.close()
    optimizer.step()  # closed all the same: the hook is gone
    assert monitor._optimizer_steps == 1


def _broken_loss(outputs, targets):
    raise ArithmeticError("loss failed")


def test_a_measurement_that_fails_in_the_worker_process_warm_up_fails_the_constructor():
    inputs, labels = _data()
    model = _mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    with pytest.raises(ArithmeticError, match="loss failed"):
        Monitor(model, _broken_loss, optimizer, (inputs, labels), batch_size=8, background="process")


def test_a_worker_process_needs_what_it_is_sent_picklable():
    inputs, labels = _data()
    model = _mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)

    def local_loss(outputs, targets):
        return F.cross_entropy(outputs, targets)

    with pytest.raises(ValueError, match="cannot be pickled .*local_loss.*background='thread'"):
        Monitor(model, local_loss, optimizer, (inputs, labels), batch_size=8, background="process")
    with pytest.raises(ValueError, match="background='fork': allowed are False, True \\(= 'thread'\\)"):
        Monitor(model, F.cross_entropy, optimizer, (inputs, labels), batch_size=8, background="fork")
    Monitor(model, local_loss, optimizer, (inputs, labels), batch_size=8, background="thread").close()


def _reference_gradients(model, inputs, labels) -> torch.Tensor:
    """Per-example gradients by an explicit loop with autograd."""
    rows = []
    for x, y in zip(inputs, labels):
        reference = copy.deepcopy(model)
        F.cross_entropy(reference(x[None]), y[None]).backward()
        rows.append(torch.cat([p.grad.reshape(-1) for p in reference.parameters()]))
    return torch.stack(rows)


def _dense_hessian(model, inputs, labels) -> torch.Tensor:
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]

    def loss(flat):
        views = {n: v.view(s) for n, v, s in zip(names, flat.split([s.numel() for s in shapes]), shapes)}
        return F.cross_entropy(torch.func.functional_call(model, views, (inputs,)), labels)

    return torch.autograd.functional.hessian(
        loss, torch.nn.utils.parameters_to_vector(model.parameters()).detach()
    )


@pytest.mark.parametrize("name", ["heavy_ball", "ema_momentum", "nesterov", "torch_sgd", "torch_nesterov"])
def test_recorded_quantities_equal_references(name):
    """One measured step (the 3rd): every quantity against its reference at the points x_t (start of the
    step) and x_{t+1} (end)."""
    inputs, labels = _data()
    model = _mlp()
    optimizer = OPTIMIZERS[name](model.parameters())
    monitor = Monitor(
        model,
        F.cross_entropy,
        optimizer,
        (inputs, labels),
        every=3,
        top_k=2,
        eigen_tol=1e-8,
        trace_probes=2,
        metrics={"accuracy": accuracy},
        batch_size=8,
        chunk_size=10,
    )
    rule = monitor.rules[0]
    for step in range(3):
        batch = slice(8 * step, 8 * step + 8)
        optimizer.zero_grad()
        loss = F.cross_entropy(model(inputs[batch]), labels[batch])
        loss.backward()
        if step == 2:
            start_model = copy.deepcopy(model)
            gradient = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
        optimizer.step()
        row = monitor.step(loss)
        assert (row is None) == (step < 2)
    x_start = torch.nn.utils.parameters_to_vector(start_model.parameters()).detach()
    x_end = torch.nn.utils.parameters_to_vector(model.parameters()).detach()
    direction = (x_start - x_end) / rule.lr  # the step actually taken: x_{t+1} = x_t − η d_t
    per_example = _reference_gradients(start_model, inputs, labels)
    full = per_example.mean(0) + rule.weight_decay * x_start  # ∇f(x_t) as the rule sees it
    variance = ((per_example - per_example.mean(0)) ** 2).sum(1).mean().item()
    buffer = torch.cat([optimizer.state[p]["momentum_buffer"].reshape(-1) for p in model.parameters()])
    expected = {
        "loss": loss.item(),
        "grad_norm": gradient.norm().item(),
        "full_grad_norm": full.norm().item(),
        "noise_norm": (direction - full).norm().item(),
        "step_noise": rule.lr * (direction - full).norm().item(),
        "gradient_variance": variance,
        "buffer_norm": buffer.norm().item(),
        "buffer_grad_cosine": (buffer @ gradient / (buffer.norm() * gradient.norm())).item(),
        "update_grad_ratio": (x_start - x_end).norm().item() / (rule.lr * gradient.norm().item()),
        "probe_loss": F.cross_entropy(model(inputs), labels).item(),
        "accuracy": (model(inputs).argmax(1) == labels).double().mean().item(),
        "param_norm": x_end.norm().item(),
    }
    spectrum = torch.linalg.eigvalsh(_dense_hessian(model, inputs, labels))
    expected["top_eigenvalue_1"], expected["top_eigenvalue_2"] = spectrum[-1].item(), spectrum[-2].item()
    for key, value in expected.items():
        assert row[key] == pytest.approx(value, rel=1e-8, abs=1e-12), key
    assert row["eigen_converged"] == 1.0
    assert row["gradient_bound"] == row["full_grad_norm"]  # K: the only measurement so far
    assert row["effective_step"] == pytest.approx(rule.effective_step)
    assert math.isfinite(row["hessian_trace"])
    if rule.smoothing_method is not None:
        delta = smoothing_degree(
            rule.smoothing_method, rule.lr, 8, rule.momentum, variance, full.norm().item()
        )
        assert row["smoothing_delta"] == pytest.approx(delta, rel=1e-8)
    else:
        assert "smoothing_delta" not in row
    table = monitor.table()
    assert list(table.columns) == ["step", "name", "value"] and set(table["step"]) == {3}
    assert dict(zip(table["name"], table["value"])) == row


def test_noise_and_hessian_on_fixed_subsets_equal_references_on_those_subsets():
    """noise_examples=20, hessian_batch=16 of 48: distinct examples drawn once; ∇f is the subset's mean
    gradient, C² = (N−1)/N · s² over the subset (explicit loop), λ_max that of the subset's dense Hessian;
    subsets larger than the data mean all of it."""
    inputs, labels = _data()
    model = _mlp()
    optimizer = HeavyBall(model.parameters(), lr=0.05, momentum=0.9)
    options = {"every": 1, "top_k": 1, "eigen_tol": 1e-8, "batch_size": 8}
    monitor = Monitor(
        model, F.cross_entropy, optimizer, (inputs, labels), noise_examples=20, hessian_batch=16, **options
    )
    noise_rows = {tuple(x.tolist()) for x in monitor.noise_inputs}
    assert len(noise_rows) == 20 and noise_rows <= {tuple(x.tolist()) for x in inputs}
    assert len({tuple(x.tolist()) for x in monitor.hessian_inputs}) == 16
    start_model = copy.deepcopy(model)
    optimizer.zero_grad()
    loss = F.cross_entropy(model(inputs[:8]), labels[:8])
    loss.backward()
    optimizer.step()
    row = monitor.step(loss)
    per_example = _reference_gradients(start_model, monitor.noise_inputs, monitor.noise_targets)
    mean = per_example.mean(0)
    sample_variance = ((per_example - mean) ** 2).sum(1).sum().item() / 19  # s²
    assert row["gradient_variance"] == pytest.approx(sample_variance * 47 / 48, rel=1e-8)  # (N−1)/N · s²
    assert row["full_grad_norm"] == pytest.approx(mean.norm().item(), rel=1e-8)
    hessian = _dense_hessian(model, monitor.hessian_inputs, monitor.hessian_targets)
    assert row["top_eigenvalue_1"] == pytest.approx(torch.linalg.eigvalsh(hessian)[-1].item(), rel=1e-8)
    everything = Monitor(model, F.cross_entropy, optimizer, (inputs, labels), noise_examples=100, **options)
    assert torch.equal(everything.noise_inputs, inputs) and len(everything.hessian_inputs) == 48
    monitor.close()
    everything.close()


def test_evaluate_false_skips_only_the_pass_over_data():
    """The same rows as with evaluate=True (bit for bit) less probe_loss and the metrics; metrics without
    that pass are refused."""
    inputs, labels = _data()
    rows = {}
    for evaluate in (True, False):
        model = _mlp()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        metrics = {"accuracy": accuracy} if evaluate else None
        monitor = Monitor(
            model,
            F.cross_entropy,
            optimizer,
            (inputs, labels),
            every=1,
            batch_size=8,
            metrics=metrics,
            evaluate=evaluate,
        )
        optimizer.zero_grad()
        loss = F.cross_entropy(model(inputs[:8]), labels[:8])
        loss.backward()
        optimizer.step()
        rows[evaluate] = monitor.step(loss)
        monitor.close()
    assert rows[True]["probe_loss"] == pytest.approx(F.cross_entropy(model(inputs), labels).item(), rel=1e-12)
    assert {k: v for k, v in rows[True].items() if k not in {"probe_loss", "accuracy"}} == rows[False]
    with pytest.raises(ValueError, match=r"evaluate=False with metrics \['accuracy'\]"):
        Monitor(
            model,
            F.cross_entropy,
            optimizer,
            (inputs, labels),
            batch_size=8,
            metrics={"accuracy": accuracy},
            evaluate=False,
        )


def test_adam_records_its_first_moment_and_no_noise():
    inputs, labels = _data()
    model = _mlp()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    with pytest.raises(ValueError, match="noise=True"):
        Monitor(model, F.cross_entropy, optimizer, (inputs, labels))
    monitor = Monitor(model, F.cross_entropy, optimizer, (inputs, labels), every=1, noise=False, top_k=0)
    optimizer.zero_grad()
    F.cross_entropy(model(inputs), labels).backward()
    optimizer.step()
    row = monitor.step()
    exp_avg = torch.cat([optimizer.state[p]["exp_avg"].reshape(-1) for p in model.parameters()])
    assert row["buffer_norm"] == pytest.approx(exp_avg.norm().item(), rel=1e-12)
    assert row["buffer_grad_cosine"] == pytest.approx(1.0, rel=1e-12)  # m_1 = (1 − β₁) g_1
    assert not {"effective_step", "noise_norm", "smoothing_delta", "top_eigenvalue_1"} & set(row)


def test_batchnorm_model_in_eval_mode_measures_the_eval_function():
    """λ_max recorded in eval mode equals the dense Hessian of the eval-mode model; the model stays in
    train mode with its running statistics."""
    inputs, labels = _data()
    model = _bn_dropout_model().train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    monitor = Monitor(
        model, F.cross_entropy, optimizer, (inputs, labels), every=1, eigen_tol=1e-8, batch_size=8
    )
    optimizer.zero_grad()
    F.cross_entropy(model(inputs[:8]), labels[:8]).backward()
    optimizer.step()
    buffers = [b.clone() for b in model.buffers()]
    row = monitor.step()
    assert model.training and all(torch.equal(a, b) for a, b in zip(buffers, model.buffers()))
    expected = torch.linalg.eigvalsh(_dense_hessian(copy.deepcopy(model).eval(), inputs, labels))[-1]
    assert row["top_eigenvalue_1"] == pytest.approx(expected.item(), rel=1e-7)


def test_loggers_receive_every_row_and_are_closed(tmp_path):
    class Recorder:
        def __init__(self):
            self.rows, self.closed = [], False

        def log(self, step, values):
            self.rows.append((step, dict(values)))

        def close(self):
            self.closed = True

    inputs, labels = _data()
    model = _mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    recorder = Recorder()
    with Monitor(
        model, F.cross_entropy, optimizer, (inputs, labels), every=2, batch_size=8, loggers=[recorder]
    ) as monitor:
        for _ in range(4):
            optimizer.zero_grad()
            F.cross_entropy(model(inputs), labels).backward()
            optimizer.step()
            monitor.step()
    assert recorder.closed and [step for step, _ in recorder.rows] == [2, 4]
    monitor.save(tmp_path / "monitor.parquet")
    saved = pd.read_parquet(tmp_path / "monitor.parquet")
    pd.testing.assert_frame_equal(saved, monitor.table())
    optimizer.step()  # the hook is gone after close: no count, no error
    assert monitor._optimizer_steps == 4


def test_misuse_gets_clear_errors():
    inputs, labels = _data()
    model = _mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    monitor = Monitor(model, F.cross_entropy, optimizer, (inputs, labels), batch_size=8)
    with pytest.raises(RuntimeError, match="once after each optimizer.step"):
        monitor.step()
    with pytest.raises(ValueError, match="every=0"):
        Monitor(model, F.cross_entropy, optimizer, (inputs, labels), every=0, batch_size=8)
    with pytest.raises(ValueError, match="batch_size=None"):
        Monitor(model, F.cross_entropy, optimizer, (inputs, labels))
    with pytest.raises(ValueError, match="hessian_batch=0"):
        Monitor(model, F.cross_entropy, optimizer, (inputs, labels), batch_size=8, hessian_batch=0)
    with pytest.raises(ValueError, match="noise_examples=1"):
        Monitor(model, F.cross_entropy, optimizer, (inputs, labels), batch_size=8, noise_examples=1)
    with pytest.raises(TypeError, match="data of type"):
        Monitor(model, F.cross_entropy, optimizer, inputs, batch_size=8)
    with pytest.raises(ValueError, match="mode='train' with noise=True"):
        Monitor(_bn_dropout_model(), F.cross_entropy, optimizer, (inputs, labels), batch_size=8, mode="train")
    with pytest.raises(ValueError, match="background=True with mode='train'"):
        Monitor(
            model, F.cross_entropy, optimizer, (inputs, labels), batch_size=8, mode="train", background=True
        )
    with pytest.raises(ValueError, match="mode='test'"):
        Monitor(model, F.cross_entropy, optimizer, (inputs, labels), batch_size=8, mode="test")


def test_learning_rate_schedules_and_parameter_groups():
    """η is read at each measured step (a scheduler halves it); with groups of different rules, δ and the
    effective step (one η, one β) are left out and the noise uses each group's own rule."""
    inputs, labels = _data()
    model = _mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.5)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    monitor = Monitor(model, F.cross_entropy, optimizer, (inputs, labels), every=2, top_k=0, batch_size=8)
    for _ in range(2):
        optimizer.zero_grad()
        F.cross_entropy(model(inputs), labels).backward()
        optimizer.step()
        row = monitor.step()
        scheduler.step()
    assert row["effective_step"] == pytest.approx(0.05 / 0.5)  # η = 0.1·0.5 at the second step
    model = _mlp()
    first, second = list(model.parameters())[:2], list(model.parameters())[2:]
    optimizer = torch.optim.SGD(
        [{"params": first, "momentum": 0.0}, {"params": second}], lr=0.1, momentum=0.9
    )
    monitor = Monitor(model, F.cross_entropy, optimizer, (inputs, labels), every=3, top_k=0)
    for _ in range(3):
        optimizer.zero_grad()
        F.cross_entropy(model(inputs), labels).backward()  # full batch: g_t = ∇f(x_t)
        before = torch.nn.utils.parameters_to_vector(model.parameters()).detach().clone()
        gradient = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
        optimizer.step()
        row = monitor.step()
    direction = (before - torch.nn.utils.parameters_to_vector(model.parameters()).detach()) / 0.1
    assert not {"effective_step", "smoothing_delta"} & set(row)
    assert row["noise_norm"] == pytest.approx((direction - gradient).norm().item(), rel=1e-8)
    assert row["noise_norm"] > 0.1 * gradient.norm().item()  # the momentum group's buffer lags the gradient
