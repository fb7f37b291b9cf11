"""The trainer: logged steps, agreement with plain autograd reference loops, divergence, resumption."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch
from helpers import make_tiny_config, raise_at

from momentumlab.models.cubic_cnn import logistic_objective
from momentumlab.train.common import minibatch_indices
from momentumlab.train.feature_margin import build_data, build_model, train_feature_margin

FLOAT64 = ("train.dtype=float64",)


def reference_run(config):
    """Plain loop: autograd through CubicCNN + logistic_objective, hand-written updates, float64.

    Returns the final weights and, for every step t, (loss, W(t), full-batch ∇L(W(t)), buffer before t).
    """
    data = build_data(config).to("cpu", torch.float64)
    model = build_model(config).to(dtype=torch.float64)
    weight = model.weight
    inputs, labels = data.train.inputs, data.train.labels
    name, lr, momentum = config.optimizer.name, config.optimizer.lr, config.optimizer.momentum
    l2, batch_size = config.train.l2, config.train.batch_size
    buffer = torch.zeros_like(weight.detach())
    history = []
    for step in range(config.train.steps + 1):
        loss = logistic_objective(model(inputs), labels, weight, l2)
        (full_gradient,) = torch.autograd.grad(loss, weight)
        history.append((loss.item(), weight.detach().clone(), full_gradient, buffer.clone()))
        if step == config.train.steps:
            break
        if batch_size is None:
            gradient = full_gradient
        else:
            batch = minibatch_indices(config.seed, step, batch_size, len(labels))
            batch_loss = logistic_objective(model(inputs[batch]), labels[batch], weight, l2)
            (gradient,) = torch.autograd.grad(batch_loss, weight)
        with torch.no_grad():
            if name == "gd":
                weight -= lr * gradient
            elif name == "ema_momentum":  # g ← γg + (1−γ)∇, W ← W − ηg
                buffer = momentum * buffer + (1 - momentum) * gradient
                weight -= lr * buffer
            elif name == "heavy_ball":  # b ← μb + ∇, W ← W − hb
                buffer = momentum * buffer + gradient
                weight -= lr * buffer
            elif name == "nesterov":  # b ← μb + ∇, W ← W − h(∇ + μb)
                buffer = momentum * buffer + gradient
                weight -= lr * (gradient + momentum * buffer)
    return weight.detach(), history, data


def assert_rows_match_reference(record, history, data, config):
    """Each logged row is measured at W(t) of the reference loop."""
    feature = data.feature
    for row in record.rows:
        loss, weight, gradient, buffer = history[row["step"]]
        signal = weight @ feature
        best = int(signal.argmax())
        outputs = (data.train.inputs @ weight.T).pow(3).sum(dim=(1, 2))
        accuracy = ((outputs * data.train.labels) > 0).double().mean().item()
        assert row["train_loss"] == pytest.approx(loss, rel=1e-9, abs=1e-12)
        assert row["signal_max"] == pytest.approx(signal.max().item(), rel=1e-9, abs=1e-12)
        assert row["gradient_norm"] == pytest.approx(gradient.norm().item(), rel=1e-7, abs=1e-12)
        assert row["gradient_signal"] == pytest.approx((gradient @ feature)[best].item(), rel=1e-7, abs=1e-12)
        expected_momentum = 0.0 if config.optimizer.name == "gd" else (buffer @ feature)[best].item()
        assert row["momentum_signal"] == pytest.approx(expected_momentum, rel=1e-7, abs=1e-12)
        assert row["train_accuracy"] == pytest.approx(
            accuracy, abs=1e-6
        )  # a fraction of 400: steps of 2.5e-3


def frame(rows):
    return pd.DataFrame(rows)


# --- logging -----------------------------------------------------------------------------------------


def test_train_is_complete_and_logs_every_log_every_steps_and_the_last():
    record = train_feature_margin(make_tiny_config())
    assert record.status == "complete"
    assert record.diverged_at_step is None
    assert record.message == ""
    assert record.resumed_from_step == 0
    assert [row["step"] for row in record.rows] == [0, 10, 20, 30, 40, 50, 60]
    assert set(record.weights) == {"weight"}
    assert record.weights["weight"].shape == (4, 10)
    assert record.weights["weight"].dtype == torch.float32
    first, last = record.rows[0], record.rows[-1]
    assert last["train_loss"] < first["train_loss"]  # lr 0.5 GD on this data does learn
    expected_columns = {
        "step",
        "train_loss",
        "train_accuracy",
        "train_accuracy_large",
        "train_accuracy_small",
        "test_accuracy",
        "test_accuracy_large",
        "test_accuracy_small",
        "val_accuracy",
        "val_accuracy_large",
        "val_accuracy_small",
        "signal_max",
        "gradient_signal",
        "momentum_signal",
        "gradient_norm",
        "nu_large",
        "nu_small",
        "noise_memorization_small",
        "memorized_fraction_small",
        "noise_correlation_max",
    } | {f"{name}_r{r}" for name in ("signal", "gradient_signal", "momentum_signal") for r in range(4)}
    assert set(last) == expected_columns


def test_last_step_is_logged_once_when_steps_is_not_a_multiple_of_log_every():
    record = train_feature_margin(make_tiny_config("train.steps=25", "train.log_every=10"))
    assert [row["step"] for row in record.rows] == [0, 10, 20, 25]
    record = train_feature_margin(make_tiny_config("train.steps=1", "train.log_every=10"))
    assert [row["step"] for row in record.rows] == [0, 1]


def test_geometric_logging_adds_the_early_steps():
    record = train_feature_margin(make_tiny_config("train.log_geometric=true"))
    # ⌈1.5^k⌉ below log_every = 10: 1, 2, 3, 4, 6, 8; then the multiples of 10.
    assert [row["step"] for row in record.rows] == [0, 1, 2, 3, 4, 6, 8, 10, 20, 30, 40, 50, 60]
    plain = train_feature_margin(make_tiny_config())
    assert torch.equal(record.weights["weight"], plain.weights["weight"])  # logging does not change training
    geometric_rows = {row["step"]: row for row in record.rows}
    for row in plain.rows:
        assert geometric_rows[row["step"]] == row


def test_train_is_deterministic():
    config = make_tiny_config("optimizer.name=ema_momentum", "optimizer.momentum=0.9", "train.batch_size=50")
    first, second = train_feature_margin(config), train_feature_margin(config)
    pd.testing.assert_frame_equal(frame(first.rows), frame(second.rows), check_exact=True)
    assert torch.equal(first.weights["weight"], second.weights["weight"])


# --- agreement with reference loops ------------------------------------------------------------------


@pytest.mark.parametrize(
    "optimizer",
    [
        ("optimizer.name=gd",),
        ("optimizer.name=ema_momentum", "optimizer.momentum=0.9"),
        ("optimizer.name=heavy_ball", "optimizer.lr=0.05", "optimizer.momentum=0.9"),
        ("optimizer.name=nesterov", "optimizer.lr=0.05", "optimizer.momentum=0.9"),
    ],
    ids=lambda overrides: overrides[0].split("=")[1],
)
def test_full_batch_training_equals_an_autograd_reference_loop(optimizer):
    config = make_tiny_config(*FLOAT64, *optimizer, "train.l2=0.01")
    record = train_feature_margin(config)
    weight, history, data = reference_run(config)
    assert record.status == "complete"
    assert record.weights["weight"].dtype == torch.float64
    # The run moved the weights well away from the initialization, so agreement is not trivial.
    assert (weight - history[0][1]).norm() > 10 * torch.finfo(torch.float32).eps
    torch.testing.assert_close(record.weights["weight"], weight, rtol=1e-10, atol=1e-12)
    assert_rows_match_reference(record, history, data, config)


@pytest.mark.parametrize("chunk_bytes", [1, 10_000])
def test_training_over_chunks_of_examples_equals_the_autograd_reference_loop(monkeypatch, chunk_bytes):
    """The full-batch objective's one pass over chunks of examples (1 byte: one example per chunk;
    10 kB: chunks of 41 of the 400 examples, the last one partial) trains as autograd does."""
    from momentumlab.models import cubic_cnn

    monkeypatch.setattr(cubic_cnn, "CPU_CHUNK_BYTES", chunk_bytes)
    config = make_tiny_config(
        *FLOAT64, "optimizer.name=ema_momentum", "optimizer.momentum=0.9", "train.l2=0.01"
    )
    record = train_feature_margin(config)
    weight, history, data = reference_run(config)
    assert (weight - history[0][1]).norm() > 10 * torch.finfo(torch.float32).eps
    torch.testing.assert_close(record.weights["weight"], weight, rtol=1e-10, atol=1e-12)
    assert_rows_match_reference(record, history, data, config)


def test_ema_momentum_buffer_starts_at_zero_not_at_the_first_gradient():
    """GD+M's first step is η(1−γ)∇L(W0), not η∇L(W0) as torch's SGD(dampening=γ) would take."""
    config = make_tiny_config(
        *FLOAT64, "optimizer.name=ema_momentum", "optimizer.momentum=0.9", "train.steps=1"
    )
    record = train_feature_margin(config)
    _, history, _ = reference_run(config)
    _, initial, gradient, _ = history[0]
    torch.testing.assert_close(
        record.weights["weight"], initial - 0.5 * 0.1 * gradient, rtol=1e-12, atol=1e-14
    )
    assert record.rows[1]["momentum_signal"] != 0.0
    assert record.rows[0]["momentum_signal"] == 0.0


@pytest.mark.parametrize("optimizer", ["gd", "ema_momentum"])
def test_minibatch_training_equals_an_autograd_reference_loop(optimizer):
    momentum = "0.9" if optimizer == "ema_momentum" else "0"
    config = make_tiny_config(
        *FLOAT64,
        f"optimizer.name={optimizer}",
        f"optimizer.momentum={momentum}",
        "train.batch_size=32",
        "train.l2=0.001",
    )
    record = train_feature_margin(config)
    weight, history, data = reference_run(config)
    assert record.status == "complete"
    torch.testing.assert_close(record.weights["weight"], weight, rtol=1e-10, atol=1e-12)
    # Logged rows are full-batch measurements at W(t), not minibatch losses.
    assert_rows_match_reference(record, history, data, config)
    # Minibatch training really differs from full-batch training with the same settings.
    full_batch = train_feature_margin(
        make_tiny_config(
            *FLOAT64, f"optimizer.name={optimizer}", f"optimizer.momentum={momentum}", "train.l2=0.001"
        )
    )
    assert not torch.allclose(full_batch.weights["weight"], record.weights["weight"], rtol=1e-4, atol=1e-6)


def test_float32_training_is_close_to_the_float64_reference():
    config = make_tiny_config("optimizer.name=ema_momentum", "optimizer.momentum=0.9")
    record = train_feature_margin(config)
    weight, _, _ = reference_run(config)
    torch.testing.assert_close(record.weights["weight"].double(), weight, rtol=1e-3, atol=1e-5)


# --- minibatch indices -------------------------------------------------------------------------------


def test_minibatch_indices_cover_each_index_at_most_once_per_epoch():
    n, batch_size = 103, 10  # 10 batches per epoch, 3 examples dropped each epoch
    for epoch in range(3):
        batches = [minibatch_indices(7, epoch * 10 + position, batch_size, n) for position in range(10)]
        assert all(batch.shape == (batch_size,) and batch.dtype == torch.int64 for batch in batches)
        seen = torch.cat(batches)
        assert len(set(seen.tolist())) == 100  # no repeats within the epoch
        assert int(seen.min()) >= 0 and int(seen.max()) < n


def test_minibatch_indices_are_deterministic_and_depend_on_seed_and_epoch():
    assert torch.equal(minibatch_indices(3, 5, 8, 40), minibatch_indices(3, 5, 8, 40))
    assert not torch.equal(minibatch_indices(3, 5, 8, 40), minibatch_indices(4, 5, 8, 40))
    # steps 0 and 5 are position 0 of epochs 0 and 1 (5 batches per epoch): fresh permutations
    assert not torch.equal(minibatch_indices(3, 0, 8, 40), minibatch_indices(3, 5, 8, 40))
    # one epoch with batch_size = n is a permutation of everything
    assert sorted(minibatch_indices(0, 0, 40, 40).tolist()) == list(range(40))
    # consecutive steps of one epoch are consecutive slices of the same permutation
    whole = torch.cat([minibatch_indices(9, step, 8, 40) for step in range(5)])
    assert sorted(whole.tolist()) == list(range(40))


# --- divergence --------------------------------------------------------------------------------------


def test_huge_learning_rate_diverges_without_raising():
    # Step 0 is finite (σ0 = 1); the first update scales W by ~1e12, so f = Σ⟨w, x⟩³ overflows float32
    # at step 1. (lr = 1e6 does not diverge here: the cubic logistic loss saturates at 0.)
    config = make_tiny_config("optimizer.lr=1e12", "model.init_std=1.0")
    record = train_feature_margin(config)
    assert record.status == "diverged"
    assert record.diverged_at_step == 1
    assert record.message == "non-finite loss at step 1"
    assert [row["step"] for row in record.rows] == [0]
    assert math.isfinite(record.rows[0]["train_loss"])


def test_divergence_with_momentum_and_minibatches_is_detected():
    config = make_tiny_config(
        "optimizer.name=ema_momentum",
        "optimizer.momentum=0.9",
        "optimizer.lr=1e14",
        "model.init_std=1.0",
        "train.batch_size=50",
    )
    record = train_feature_margin(config)
    assert record.status == "diverged"
    assert 1 <= record.diverged_at_step < config.train.steps
    assert all(row["step"] < record.diverged_at_step for row in record.rows)
    assert all(math.isfinite(row["train_loss"]) for row in record.rows)
    assert record.message == f"non-finite loss at step {record.diverged_at_step}"


# --- interruption and resumption ---------------------------------------------------------------------

RESUMABLE = {
    "full-batch": ("optimizer.name=ema_momentum", "optimizer.momentum=0.9"),
    "minibatch": ("optimizer.name=ema_momentum", "optimizer.momentum=0.9", "train.batch_size=50"),
}


@pytest.fixture(scope="module")
def uninterrupted():
    return {mode: train_feature_margin(make_tiny_config(*overrides)) for mode, overrides in RESUMABLE.items()}


# (interrupt before step, the checkpoint it resumes from); checkpoints are saved at steps 20 and 40.
INTERRUPTIONS = [(5, 0), (19, 0), (20, 20), (21, 20), (30, 20), (39, 20), (40, 40), (41, 40), (59, 40)]


@pytest.mark.parametrize("mode", list(RESUMABLE))
@pytest.mark.parametrize(("stop", "resumes_from"), INTERRUPTIONS)
def test_interrupted_run_resumes_to_exactly_the_uninterrupted_result(
    tmp_path, uninterrupted, mode, stop, resumes_from
):
    config = make_tiny_config(*RESUMABLE[mode])
    checkpoint = tmp_path / "checkpoint.pt"
    with pytest.raises(RuntimeError, match=f"interrupted at step {stop}"):
        train_feature_margin(config, checkpoint, on_step=raise_at(stop))
    assert checkpoint.is_file() == (resumes_from > 0)
    steps_taken = []
    resumed = train_feature_margin(config, checkpoint, on_step=steps_taken.append)
    assert resumed.resumed_from_step == resumes_from
    assert steps_taken == list(range(resumes_from, 60))
    reference = uninterrupted[mode]
    assert resumed.status == reference.status == "complete"
    pd.testing.assert_frame_equal(frame(resumed.rows), frame(reference.rows), check_exact=True)
    assert torch.equal(resumed.weights["weight"], reference.weights["weight"])


def test_repeatedly_interrupted_run_matches_the_uninterrupted_one(tmp_path, uninterrupted):
    config = make_tiny_config(*RESUMABLE["minibatch"])
    checkpoint = tmp_path / "checkpoint.pt"
    for stop in (25, 45, 47):  # the second and third attempts resume from 20 and 40
        with pytest.raises(RuntimeError, match=f"interrupted at step {stop}"):
            train_feature_margin(config, checkpoint, on_step=raise_at(stop))
    final = train_feature_margin(config, checkpoint)
    assert final.resumed_from_step == 40
    pd.testing.assert_frame_equal(frame(final.rows), frame(uninterrupted["minibatch"].rows), check_exact=True)
    assert torch.equal(final.weights["weight"], uninterrupted["minibatch"].weights["weight"])


def test_checkpoint_holds_the_state_at_its_step(tmp_path):
    config = make_tiny_config(*RESUMABLE["full-batch"])
    checkpoint = tmp_path / "checkpoint.pt"
    with pytest.raises(RuntimeError):
        train_feature_margin(config, checkpoint, on_step=raise_at(30))
    state = torch.load(checkpoint, weights_only=True)
    assert state["position"] == 20
    assert [row["step"] for row in state["rows"]] == [0, 10]  # step 20 is measured after resuming
    # The saved weights are those a 20-step run ends with.
    twenty = train_feature_margin(make_tiny_config(*RESUMABLE["full-batch"], "train.steps=20"))
    assert torch.equal(state["model"]["weight"], twenty.weights["weight"])
    assert "momentum_buffer" in state["optimizer"]["state"][0]


def test_no_checkpoint_is_written_at_the_last_step(tmp_path):
    config = make_tiny_config("train.steps=40", "train.checkpoint_every=20")
    checkpoint = tmp_path / "checkpoint.pt"
    train_feature_margin(config, checkpoint)
    state = torch.load(checkpoint, weights_only=True)
    assert state["position"] == 20  # step 40 = the end is not checkpointed; the finished run is the result
