"""The batched engine: each run of a batch equals the same run trained alone by `train_feature_margin()`."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch
from helpers import NEEDS_CUDA, NEVER, make_tiny_config, on_device, raise_at

import momentumlab.train.feature_margin_batched as batched_module
from momentumlab.native import load_kernel, native_compiler
from momentumlab.optim.momentum import OptimizerConfig, build_optimizer
from momentumlab.train.feature_margin import build_data, train_feature_margin
from momentumlab.train.feature_margin_batched import (
    batch_key,
    full_batch_slices,
    rule_coefficients,
    train_batched,
)
from momentumlab.train.syncs import syncs_per_mark

SMALL = (
    "data.n_train=200",
    "data.n_test=100",
    "data.n_val=100",
    "train.steps=50",
    "train.checkpoint_every=20",
)

# Every update rule, learning rates, momenta and λ that differ, and three datasets: seed 0's holds three
# runs, seeds 1 and 2 two each (so two buckets, one a `bmm` over two datasets, and the engine's order
# of runs is not the given one). The run with seed 3 shares seed 0's data through data.seed but has
# its own initialization and minibatches.
MIXED = [
    ("optimizer.name=gd", "optimizer.lr=0.5"),
    ("seed=1", "optimizer.name=ema_momentum", "optimizer.momentum=0.9", "train.l2=0.01"),
    ("seed=2", "optimizer.name=heavy_ball", "optimizer.lr=0.05", "optimizer.momentum=0.8"),
    ("seed=1", "optimizer.name=nesterov", "optimizer.lr=0.04", "optimizer.momentum=0.9", "train.l2=0.001"),
    ("optimizer.name=ema_momentum", "optimizer.lr=1.0", "optimizer.momentum=0.0"),
    ("seed=3", "data.seed=0", "optimizer.name=ema_momentum", "optimizer.lr=0.7", "optimizer.momentum=0.5"),
    ("seed=2", "optimizer.name=gd", "optimizer.lr=0.3", "train.l2=0.005"),
]
MODES = {
    "full-batch-float64": ("train.dtype=float64", "train.sharpness_every=25"),
    "minibatch-float64": ("train.dtype=float64", "train.batch_size=32"),
    "full-batch-float32": (),
    "minibatch-float32": ("train.batch_size=32", "train.log_geometric=true"),
}
TOLERANCE = {"float64": {"rel": 1e-9, "abs": 1e-12}, "float32": {"rel": 1e-4, "abs": 1e-7}}


def configs_for(mode: str, runs=MIXED):
    return [make_tiny_config(*SMALL, *MODES[mode], *overrides) for overrides in runs]


def assert_records_match(batched, alone, rel, abs):
    """Same status, divergence step, message, logged steps and columns; values and weights within tolerance."""
    assert batched.status == alone.status
    assert batched.diverged_at_step == alone.diverged_at_step
    assert batched.message == alone.message
    assert [row["step"] for row in batched.rows] == [row["step"] for row in alone.rows]
    for batched_row, alone_row in zip(batched.rows, alone.rows):
        assert list(batched_row) == list(alone_row)
        for column, value in alone_row.items():
            assert batched_row[column] == pytest.approx(value, rel=rel, abs=abs, nan_ok=True), column
    assert batched.weights.keys() == alone.weights.keys() == {"weight"}
    assert batched.weights["weight"].dtype == alone.weights["weight"].dtype
    torch.testing.assert_close(batched.weights["weight"], alone.weights["weight"], rtol=rel, atol=abs)


@pytest.fixture(scope="module")
def solo():
    """`train_feature_margin()` of every config of every mode, computed once."""
    return {mode: [train_feature_margin(config) for config in configs_for(mode)] for mode in MODES}


@pytest.fixture(scope="module")
def batched():
    return {mode: train_batched(configs_for(mode), [None] * len(MIXED)) for mode in MODES}


# --- agreement with solo runs ------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["full-batch-float64", "minibatch-float64"])
def test_the_gpus_sliced_full_batch_gives_the_chunked_passes_runs(batched, mode, monkeypatch):
    """The GPU's full batch (all examples at once, cut into S slices batched in each product, the
    gradient's partial sums added after), forced on the CPU with 4 slices of 50 examples."""
    monkeypatch.setattr(batched_module, "full_batch_slices", lambda n, device: 4)
    sliced = train_batched(configs_for(mode), [None] * len(MIXED))
    for with_slices, chunked in zip(sliced, batched[mode], strict=True):
        assert_records_match(with_slices, chunked, **TOLERANCE["float64"])


def test_the_gpu_cuts_the_examples_into_the_most_slices_of_at_least_256():
    gpu, cpu = torch.device("cuda"), torch.device("cpu")
    assert [full_batch_slices(n, gpu) for n in (20_000, 1_000, 512, 511, 200, 20_011)] == [50, 2, 2, 1, 1, 1]
    assert full_batch_slices(20_000, cpu) == 1


@NEEDS_CUDA
@pytest.mark.parametrize("mode", ["full-batch-float64", "minibatch-float64"])
def test_a_mixed_batch_trains_on_the_gpu_as_on_the_cpu(batched, mode):
    """The GPU path (one `bmm` pair per bucket over all examples) gives the CPU's runs; the weights come
    back to the host."""
    cuda = train_batched([on_device(config, "cuda") for config in configs_for(mode)], [None] * len(MIXED))
    for on_gpu, on_cpu in zip(cuda, batched[mode], strict=True):
        assert on_gpu.weights["weight"].device.type == "cpu"
        assert_records_match(on_gpu, on_cpu, **TOLERANCE["float64"])


@NEEDS_CUDA
@pytest.mark.parametrize("batch_size", [None, 32])
def test_a_batched_step_on_the_gpu_syncs_once(batch_size):
    """Steps 1 … 18 of 20 (epochs of 6 steps begin among them): the finiteness check is the only sync."""
    configs = [
        on_device(config, "cuda", steps=20, log_every=NEVER, checkpoint_every=NEVER, batch_size=batch_size)
        for config in configs_for("full-batch-float32")
    ]
    counts = syncs_per_mark(lambda on_step: train_batched(configs, [None] * len(MIXED), on_step=on_step))
    assert counts == [1] * 18


@pytest.mark.parametrize("mode", list(MODES))
def test_each_run_of_a_mixed_batch_equals_the_run_trained_alone(solo, batched, mode):
    dtype = "float64" if "float64" in mode else "float32"
    for batched_record, alone in zip(batched[mode], solo[mode], strict=True):
        assert batched_record.status == "complete"
        assert len(batched_record.rows) >= 6
        assert_records_match(batched_record, alone, **TOLERANCE[dtype])
    # The runs really differ from each other, so a mixed-up order or shared state would show.
    finals = [record.rows[-1]["train_loss"] for record in solo[mode]]
    assert len({round(loss, 6) for loss in finals}) == len(finals)
    if "train.sharpness_every=25" in MODES[mode]:
        assert [row["step"] for row in batched[mode][0].rows if "sharpness" in row] == [0, 25, 50]


def test_momentum_signal_follows_the_buffer_convention_of_each_rule(batched):
    """GD and momentum 0 log no buffer (0); the others their own buffer: zero at t = 0, nonzero after."""
    records = batched["full-batch-float64"]
    for record, overrides in zip(records, MIXED):
        momentum_signals = [row["momentum_signal"] for row in record.rows]
        assert momentum_signals[0] == 0.0
        if "optimizer.name=gd" in overrides or "optimizer.momentum=0.0" in overrides:
            assert set(momentum_signals) == {0.0}
        else:
            assert all(signal != 0.0 for signal in momentum_signals[1:])


def test_rule_coefficients_give_each_update_rule():
    """b ← μb + τ∇; W ← W − c_g∇ − c_b·b reproduces one step of each optimizer from a nonzero buffer."""
    generator = torch.Generator().manual_seed(0)
    weight, gradient, buffer = (torch.randn(3, 4, generator=generator, dtype=torch.float64) for _ in range(3))
    for name, momentum in [("gd", 0.0), ("ema_momentum", 0.9), ("heavy_ball", 0.7), ("nesterov", 0.6)]:
        config = OptimizerConfig(name=name, lr=0.3, momentum=momentum)
        parameter = torch.nn.Parameter(weight.clone())
        optimizer = build_optimizer(config, [parameter])
        if name != "gd":
            optimizer.state[parameter]["momentum_buffer"] = buffer.clone()
        parameter.grad = gradient.clone()
        optimizer.step()
        mu, tau, c_g, c_b = rule_coefficients(config)
        expected_buffer = mu * buffer + tau * gradient
        expected = weight - c_g * gradient - c_b * expected_buffer
        torch.testing.assert_close(parameter.detach(), expected, rtol=1e-14, atol=1e-15)
        if name != "gd":
            torch.testing.assert_close(optimizer.state[parameter]["momentum_buffer"], expected_buffer)


# --- divergence --------------------------------------------------------------------------------------


def test_a_diverging_run_is_recorded_as_alone_and_leaves_its_neighbours_alone():
    # lr = 1e15 with minibatches diverges at step 7 in float32 (found by scanning). At the logged step 6
    # its full-batch loss is already non-finite but its batch loss is not: no row, and the run goes on.
    runs = [
        MIXED[0],
        ("optimizer.name=ema_momentum", "optimizer.lr=1e15", "optimizer.momentum=0.9"),
        MIXED[1],
    ]
    configs = configs_for("minibatch-float32", runs)
    records = train_batched(configs, [None] * len(configs))
    alone = [train_feature_margin(config) for config in configs]
    assert alone[1].status == "diverged" and alone[1].diverged_at_step == 7
    assert [row["step"] for row in alone[1].rows] == [0, 1, 2, 3, 4]
    for record, reference in zip(records, alone, strict=True):
        assert_records_match(record, reference, **TOLERANCE["float32"])
    assert records[1].message == "non-finite loss at step 7"
    # Sharing the dataset with the diverged run, the first run still finished exactly as alone.
    assert records[0].status == "complete" and records[0].rows[-1]["step"] == 50


@pytest.mark.parametrize("steps", [50, 1], ids=["in-the-loop", "at-the-final-measurement"])
def test_a_run_diverging_after_its_first_step_in_full_batch_float64(steps):
    runs = [
        (*MIXED[0], f"train.steps={steps}"),
        ("optimizer.name=gd", "optimizer.lr=1e200", f"train.steps={steps}"),
    ]
    configs = configs_for("full-batch-float64", runs)
    records = train_batched(configs, [None, None])
    alone = [train_feature_margin(config) for config in configs]
    assert (records[1].status, records[1].diverged_at_step) == ("diverged", 1)
    for record, reference in zip(records, alone, strict=True):
        assert_records_match(record, reference, **TOLERANCE["float64"])


def test_a_run_diverging_in_full_batch_float32_is_recorded_as_alone():
    # The first update of lr = 1e20 makes f overflow float32 at step 1, where the loss bound is not
    # finite and the losses decide.
    runs = [MIXED[0], ("optimizer.name=gd", "optimizer.lr=1e20")]
    configs = configs_for("full-batch-float32", runs)
    records = train_batched(configs, [None, None])
    alone = [train_feature_margin(config) for config in configs]
    assert (records[1].status, records[1].diverged_at_step) == ("diverged", 1)
    for record, reference in zip(records, alone, strict=True):
        assert_records_match(record, reference, **TOLERANCE["float32"])


def test_full_batch_steps_without_the_loss_bound_are_the_same(batched, monkeypatch):
    """Where the bound never shows a loss finite, every step computes the losses: the same records, bit
    for bit, as with the bound."""
    monkeypatch.setattr(batched_module, "logistic_loss_bound", lambda margins: margins[:, 0] * math.inf)
    records = train_batched(configs_for("full-batch-float32"), [None] * len(MIXED))
    for record, reference in zip(records, batched["full-batch-float32"], strict=True):
        assert record.status == "complete"
        assert_records_match(record, reference, rel=0, abs=0)


# --- interruption and resumption ---------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["full-batch-float64", "minibatch-float64"])
def test_interrupted_batch_resumes_to_exactly_the_uninterrupted_result(tmp_path, batched, mode):
    configs = configs_for(mode)
    checkpoints = [tmp_path / f"run{i}.pt" for i in range(len(configs))]
    with pytest.raises(RuntimeError, match="interrupted at step 30"):
        train_batched(configs, checkpoints, on_step=raise_at(30))
    assert all(torch.load(path, weights_only=True)["position"] == 20 for path in checkpoints)
    steps_taken = []
    resumed = train_batched(configs, checkpoints, on_step=steps_taken.append)
    assert steps_taken == list(range(20, 50))
    for record, reference in zip(resumed, batched[mode], strict=True):
        assert record.resumed_from_step == 20
        pd.testing.assert_frame_equal(
            pd.DataFrame(record.rows), pd.DataFrame(reference.rows), check_exact=True
        )
        assert torch.equal(record.weights["weight"], reference.weights["weight"])


@pytest.mark.parametrize("mode", ["full-batch-float64", "minibatch-float64"])
def test_train_resumes_a_run_checkpointed_in_a_batch(tmp_path, solo, mode):
    configs = configs_for(mode)
    checkpoints = [tmp_path / f"run{i}.pt" for i in range(len(configs))]
    with pytest.raises(RuntimeError):
        train_batched(configs, checkpoints, on_step=raise_at(45))
    for config, checkpoint, reference in zip(configs, checkpoints, solo[mode], strict=True):
        resumed = train_feature_margin(config, checkpoint)
        assert resumed.resumed_from_step == 40
        assert_records_match(resumed, reference, **TOLERANCE["float64"])


@pytest.mark.parametrize("mode", ["full-batch-float64", "minibatch-float64"])
def test_a_batch_resumes_runs_checkpointed_by_train(tmp_path, solo, mode):
    configs = configs_for(mode)
    checkpoints = [tmp_path / f"run{i}.pt" for i in range(len(configs))]
    for config, checkpoint in zip(configs, checkpoints):
        with pytest.raises(RuntimeError):
            train_feature_margin(config, checkpoint, on_step=raise_at(25))
    records = train_batched(configs, checkpoints)
    for record, reference in zip(records, solo[mode], strict=True):
        assert record.resumed_from_step == 20
        assert_records_match(record, reference, **TOLERANCE["float64"])


def test_runs_at_different_checkpoint_positions_are_refused(tmp_path):
    configs = configs_for("full-batch-float32", MIXED[:2])
    checkpoints = [tmp_path / "a.pt", tmp_path / "b.pt"]
    with pytest.raises(RuntimeError):
        train_feature_margin(configs[0], checkpoints[0], on_step=raise_at(25))
    with pytest.raises(ValueError, match=r"checkpoint positions \[20, 0\]"):
        train_batched(configs, checkpoints)


# --- which runs can share a batch --------------------------------------------------------------------


def test_batch_key_groups_runs_that_differ_in_seed_optimizer_and_l2():
    key = batch_key(make_tiny_config(*SMALL))
    assert key is not None
    for overrides in MIXED:
        assert batch_key(make_tiny_config(*SMALL, *overrides)) == key


@pytest.mark.parametrize(
    "override",
    [
        "train.steps=51",
        "data.n_train=300",
        "data.beta_margin=0.3",
        "model.width=5",
        "train.batch_size=32",
        "train.log_every=5",
        "train.checkpoint_every=10",
        "train.sharpness_every=10",
        "train.dtype=float64",
    ],
)
def test_batch_key_separates_runs_that_must_not_share_a_batch(override):
    assert batch_key(make_tiny_config(*SMALL, override)) != batch_key(make_tiny_config(*SMALL))


def test_gradient_penalty_trains_alone_and_mixed_keys_are_refused():
    penalized = make_tiny_config(*SMALL, "train.gradient_penalty=0.1")
    assert batch_key(penalized) is None
    plain = make_tiny_config(*SMALL)
    with pytest.raises(ValueError, match="batch keys"):
        train_batched([plain, penalized], [None, None])
    with pytest.raises(ValueError, match="batch keys"):
        train_batched([plain, make_tiny_config(*SMALL, "train.steps=40")], [None, None])
    with pytest.raises(ValueError, match="equally many"):
        train_batched([plain], [None, None])


def test_each_dataset_is_drawn_once_per_batch(monkeypatch):
    """MIXED has seven runs on three datasets (data seeds 0, 1, 2)."""
    drawn = []

    def counting_build_data(config):
        drawn.append(config.data.seed if config.data.seed is not None else config.seed)
        return build_data(config)

    monkeypatch.setattr(batched_module, "build_data", counting_build_data)
    train_batched(configs_for("full-batch-float32"), [None] * len(MIXED))
    assert sorted(drawn) == [0, 1, 2]


@pytest.mark.parametrize("native", ["1", "0"])
def test_full_batch_float32_on_the_kernel_and_on_bmm_equals_the_runs_trained_alone(monkeypatch, solo, native):
    """In float32 on the CPU the full batch runs the C kernel run by run where it builds, else the
    stacked `bmm` (as on a GPU); each gives every run as trained alone."""
    monkeypatch.setenv("MOMENTUMLAB_NATIVE", native)
    load_kernel.cache_clear()
    chosen = []

    def recording(*arguments):
        chosen.append(full_batch(*arguments))
        return chosen[-1]

    full_batch = batched_module._full_batch
    monkeypatch.setattr(batched_module, "_full_batch", recording)
    mode = "full-batch-float32"
    records = train_batched(configs_for(mode), [None] * len(MIXED))
    kernel = native == "1" and native_compiler() is not None
    assert type(chosen[0]).__name__ == ("_KernelFullBatch" if kernel else "_StackedFullBatch")
    for record, alone in zip(records, solo[mode], strict=True):
        assert_records_match(record, alone, **TOLERANCE["float32"])
    load_kernel.cache_clear()


def test_full_batch_in_many_small_chunks_equals_the_runs_trained_alone(monkeypatch, solo):
    """On the CPU the full batch is swept in chunks of examples; here 6 and 8 (200 = 33·6 + 2)."""
    monkeypatch.setattr(batched_module, "CPU_CHUNK_ELEMENTS", 300)
    mode = "full-batch-float64"
    records = train_batched(configs_for(mode), [None] * len(MIXED))
    for record, alone in zip(records, solo[mode], strict=True):
        assert_records_match(record, alone, **TOLERANCE["float64"])
