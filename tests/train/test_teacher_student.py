"""Table 1's teacher–student setting: teacher data, the ReLU networks, the reference trainer against
hand-computed updates, the batched trainer against the reference run by run, divergence, resumption."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch
from helpers import NEEDS_CUDA, NEVER, on_device, raise_at

from momentumlab import native
from momentumlab.config import validate
from momentumlab.data.teacher import TeacherDataConfig, make_teacher, make_teacher_data
from momentumlab.models.mlp import build_network
from momentumlab.runs import RunRecord
from momentumlab.runs.teacher_student import TeacherStudentRunConfig
from momentumlab.train import teacher_student
from momentumlab.train.common import minibatch_indices
from momentumlab.train.syncs import syncs_per_mark
from momentumlab.train.teacher_student import (
    build_student,
    build_student_data,
    outputs_in_chunks,
    steps_per_epoch,
    train_student,
)
from momentumlab.train.teacher_student_batched import student_batch_key, train_students_batched

TEACHERS = ("linear", "mlp1", "mlp2", "cnn1", "cnn2")
STUDENTS = ("mlp1", "mlp2", "cnn1", "cnn2")


def tiny(
    architecture: str = "mlp1",
    optimizer: str = "gd",
    lr: float = 0.3,
    momentum: float = 0.0,
    seed: int = 0,
    teacher: str = "mlp1",
    **train,
) -> TeacherStudentRunConfig:
    """40 training examples in dimension 8, a width-6 student, 12 float64 epochs."""
    return validate(
        TeacherStudentRunConfig,
        {
            "seed": seed,
            "data": {
                "teacher": teacher,
                "n_train": 40,
                "n_val": 10,
                "n_test": 50,
                "dim": 8,
                "teacher_width": 5,
                "kernel_size": 3,
            },
            "model": {"architecture": architecture, "width": 6, "kernel_size": 3},
            "optimizer": {"name": optimizer, "lr": lr, "momentum": momentum},
            "train": {
                "epochs": 12,
                "log_every_epochs": 5,
                "checkpoint_every_epochs": 4,
                "dtype": "float64",
                **train,
            },
        },
    )


def mixed_batch(architecture: str, batch_size: int | None) -> list[TeacherStudentRunConfig]:
    """Every update rule, different learning rates, momenta, weight decays, seeds and teachers."""
    common = {"batch_size": batch_size}
    return [
        tiny(architecture, "gd", 0.3, 0.0, 0, "linear", **common),
        tiny(architecture, "ema_momentum", 0.5, 0.9, 1, "mlp2", weight_decay=0.01, **common),
        tiny(architecture, "heavy_ball", 0.05, 0.8, 2, "cnn1", **common),
        tiny(architecture, "nesterov", 0.1, 0.5, 0, "cnn2", weight_decay=0.1, **common),
        tiny(architecture, "ema_momentum", 0.3, 0.9, 0, "mlp1", **common),
    ]


def assert_same_record(actual: RunRecord, expected: RunRecord, tolerance: float = 1e-9) -> None:
    assert (actual.status, actual.diverged_at_step) == (expected.status, expected.diverged_at_step)
    assert len(actual.rows) == len(expected.rows)
    for row, expected_row in zip(actual.rows, expected.rows):
        assert row.keys() == expected_row.keys()
        for key in row:
            assert row[key] == pytest.approx(expected_row[key], rel=tolerance, abs=tolerance, nan_ok=True), (
                key
            )
    for name, weight in expected.weights.items():
        torch.testing.assert_close(actual.weights[name], weight, rtol=tolerance, atol=tolerance)


# --- data -------------------------------------------------------------------------------------------------


def test_teacher_data_is_deterministic_in_the_seed_and_shares_inputs_across_teachers():
    config = TeacherDataConfig(teacher="mlp2", n_train=30, n_val=5, n_test=20, dim=6, teacher_width=4)
    first, again, other = (
        make_teacher_data(config, 3),
        make_teacher_data(config, 3),
        make_teacher_data(config, 4),
    )
    assert first.train.inputs.dtype == torch.float64 and first.train.inputs.shape == (30, 6)
    assert (len(first.train), len(first.validation), len(first.test)) == (30, 5, 20)
    for sample, sample_again in zip((first.train, first.test), (again.train, again.test)):
        assert torch.equal(sample.inputs, sample_again.inputs) and torch.equal(
            sample.labels, sample_again.labels
        )
    assert not torch.equal(first.train.inputs, other.train.inputs)
    linear = make_teacher_data(config.model_copy(update={"teacher": "linear"}), 3)
    assert torch.equal(linear.train.inputs, first.train.inputs)
    assert set(first.train.labels.tolist()) == {-1.0, 1.0}


@pytest.mark.parametrize("teacher", TEACHERS)
def test_labels_are_the_sign_of_the_centered_teacher_and_balanced(teacher):
    config = TeacherDataConfig(teacher=teacher, n_train=500, n_val=0, n_test=4000, teacher_width=16)
    data = make_teacher_data(config, 0)
    assert abs(data.test.labels.mean().item()) < 0.06  # 4000 fair labels: std of the mean 0.016
    assert abs(data.train.labels.mean().item()) < 0.15
    network = make_teacher(config, 0)
    with torch.no_grad():
        outputs = network(data.test.inputs)
    # labels threshold the teacher at one level: every +1 output lies above every −1 output
    assert outputs[data.test.labels > 0].min() > outputs[data.test.labels < 0].max()


# --- networks ---------------------------------------------------------------------------------------------


def convolve_same(signal: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """out[t] = Σ_j kernel[j] · signal[t + j − ⌊(k−1)/2⌋], zero outside the signal (one channel)."""
    k, length = len(kernel), len(signal)
    return torch.stack(
        [
            sum(
                kernel[j] * signal[t + j - (k - 1) // 2]
                for j in range(k)
                if 0 <= t + j - (k - 1) // 2 < length
            )
            for t in range(length)
        ]
    )


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel lengths")
def test_networks_compute_their_formulas():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(7, dtype=torch.float64, generator=generator)
    for architecture, kernel in itertools.product(("linear", "mlp1", "mlp2", "cnn1", "cnn2"), (3, 4)):
        network = build_network(architecture, 7, 5, kernel, torch.Generator().manual_seed(1)).double()
        p = {name: value.detach() for name, value in network.named_parameters()}
        if architecture.startswith("mlp") or architecture == "linear":
            hidden = x
            for index in range(0 if architecture == "linear" else int(architecture[-1])):
                hidden = (p[f"hidden.{index}.weight"] @ hidden + p[f"hidden.{index}.bias"]).clamp_min(0)
            expected = p["readout.weight"][0] @ hidden + p["readout.bias"][0]
        else:
            channels = x[None]  # (1, d)
            for index in range(int(architecture[-1])):
                weight, bias = p[f"convolutions.{index}.weight"], p[f"convolutions.{index}.bias"]
                channels = torch.stack(
                    [
                        (
                            bias[o]
                            + sum(convolve_same(channels[c], weight[o, c]) for c in range(len(channels)))
                        ).clamp_min(0)
                        for o in range(len(weight))
                    ]
                )
            expected = p["readout.weight"][0] @ channels.flatten() + p["readout.bias"][0]
        assert network(x[None]).item() == pytest.approx(expected.item(), rel=1e-12), (architecture, kernel)


def test_initialization_is_seeded_uniform_on_inverse_sqrt_fan_in():
    first = build_network("cnn2", 10, 6, 3, torch.Generator().manual_seed(5))
    second = build_network("cnn2", 10, 6, 3, torch.Generator().manual_seed(5))
    for (name, a), b in zip(first.named_parameters(), second.parameters()):
        assert torch.equal(a, b)
    bound = 1 / (6 * 3) ** 0.5  # second convolution: fan_in = 6 channels · kernel 3
    weight = first.convolutions[1].weight
    assert weight.abs().max() <= bound and weight.abs().max() > 0.8 * bound


# --- the reference trainer --------------------------------------------------------------------------------


def hand_gradient(p: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor, wd: float) -> dict:
    """∇ of mean softplus(−y f) + (λ/2)‖θ‖² for f(x) = a·ReLU(Wx + b) + c, written out by hand."""
    pre = x @ p["hidden.0.weight"].T + p["hidden.0.bias"]
    hidden = pre.clamp_min(0)
    outputs = hidden @ p["readout.weight"][0] + p["readout.bias"][0]
    g = -y * torch.sigmoid(-y * outputs) / len(y)  # ∂L/∂f_i
    back = g[:, None] * p["readout.weight"][0] * (pre > 0)  # ∂L/∂pre
    gradient = {
        "hidden.0.weight": back.T @ x,
        "hidden.0.bias": back.sum(0),
        "readout.weight": (g @ hidden)[None],
        "readout.bias": g.sum()[None],
    }
    return {name: gradient[name] + wd * p[name] for name in gradient}


@pytest.mark.parametrize(
    ("optimizer", "momentum", "batch_size"),
    [("gd", 0.0, None), ("ema_momentum", 0.9, None), ("ema_momentum", 0.8, 10)],
)
def test_first_epochs_match_hand_computed_updates(optimizer, momentum, batch_size):
    config = tiny(
        "mlp1", optimizer, 0.4, momentum, seed=3, epochs=2, batch_size=batch_size, weight_decay=0.05
    )
    data = build_student_data(config).train
    p = {name: value.detach().double() for name, value in build_student(config).named_parameters()}
    g = {name: torch.zeros_like(value) for name, value in p.items()}
    steps = 2 * (1 if batch_size is None else 40 // batch_size)
    for step in range(steps):
        batch = torch.arange(40) if batch_size is None else minibatch_indices(3, step, batch_size, 40)
        gradient = hand_gradient(p, data.inputs[batch], data.labels[batch], 0.05)
        for name, value in list(p.items()):
            g[name] = momentum * g[name] + (1 - momentum) * gradient[name]  # g ← γg + (1−γ)∇ (γ = 0: GD)
            p[name] = value - 0.4 * g[name]
    record = train_student(config)
    for name, value in p.items():
        torch.testing.assert_close(record.weights[name], value, rtol=1e-12, atol=1e-13)
    assert [row["epoch"] for row in record.rows] == [0.0, 2.0]
    assert record.rows[-1]["step"] == steps
    assert set(record.rows[0]) == {
        "epoch",
        "step",
        "train_loss",
        "train_accuracy",
        "val_loss",
        "val_accuracy",
        "test_loss",
        "test_accuracy",
    }


def test_every_optimizer_and_teacher_of_a_seed_starts_from_the_same_weights():
    reference = build_student(tiny("cnn1"))
    for other in (
        tiny("cnn1", "ema_momentum", 0.1, 0.9, teacher="linear"),
        tiny("cnn1", "nesterov", 1.0, 0.5),
    ):
        for a, b in zip(reference.parameters(), build_student(other).parameters()):
            assert torch.equal(a, b)
    assert not torch.equal(reference.readout.weight, build_student(tiny("cnn1", seed=1)).readout.weight)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("architecture", "per_example"), [("linear", 30), ("mlp2", 64), ("cnn1", 16 * 30)])
def test_a_row_is_measured_in_chunks_with_the_bits_of_one_forward(
    monkeypatch, architecture, per_example, dtype
):
    """Chunks are the largest power of two (≥ 64 examples) within ROW_CHUNK_BYTES of read-out inputs."""
    width = {"linear": 1, "mlp2": 64, "cnn1": 16}[architecture]
    model = build_network(architecture, 30, width, 5, torch.Generator().manual_seed(0)).to(dtype)
    inputs = torch.randn(1000, 30, generator=torch.Generator().manual_seed(1), dtype=dtype)
    with torch.no_grad():
        whole = model(inputs)
    calls = []
    model.register_forward_hook(lambda module, args, output: calls.append(len(args[0])))
    itemsize = inputs.element_size()
    for budget, size in ((300 * per_example * itemsize, 256), (256 * per_example * itemsize, 256), (1, 64)):
        monkeypatch.setattr(teacher_student, "ROW_CHUNK_BYTES", budget)
        calls.clear()
        with torch.no_grad():
            assert torch.equal(outputs_in_chunks(model, inputs), whole)
        assert calls == [size] * (1000 // size) + [1000 % size]


def test_rows_fit_the_training_set_and_are_logged_on_schedule():
    record = train_student(tiny("mlp2", "ema_momentum", 1.0, 0.9, epochs=300, log_every_epochs=100))
    assert record.status == "complete" and record.extra == {"steps_per_epoch": 1}
    assert [row["epoch"] for row in record.rows] == [0.0, 100.0, 200.0, 300.0]
    assert (
        record.rows[-1]["train_accuracy"] == 1.0
        and record.rows[-1]["train_loss"] < record.rows[0]["train_loss"]
    )


def test_a_non_finite_loss_is_recorded_as_divergence_at_its_epoch():
    record = train_student(tiny("mlp1", "gd", 1e60))
    assert record.status == "diverged" and record.diverged_at_step == 3
    assert record.message == "non-finite loss at epoch 3" and [row["epoch"] for row in record.rows] == [0.0]


@pytest.mark.parametrize("batch_size", (None, 8))
def test_interrupted_and_resumed_run_equals_an_uninterrupted_one(tmp_path, batch_size):
    config = tiny("cnn2", "heavy_ball", 0.1, 0.8, batch_size=batch_size)
    expected = train_student(config)
    path = tmp_path / "checkpoint.pt"
    with pytest.raises(RuntimeError, match="interrupted"):
        train_student(config, path, on_step=raise_at(10))
    resumed = train_student(config, path)
    assert resumed.resumed_from_step == 8
    assert_same_record(resumed, expected, tolerance=0)
    finished = train_student(config, path)  # a finished run's checkpoint gives its record without training
    assert finished.resumed_from_step == 12 and finished.rows == expected.rows


# --- the batched trainer ----------------------------------------------------------------------------------


def test_batch_key_blanks_seeds_teachers_optimizers_and_weight_decay_only():
    key = student_batch_key(tiny())
    for config in mixed_batch("mlp1", None):
        assert student_batch_key(config) == key
    assert student_batch_key(tiny(batch_size=8)) != key
    assert student_batch_key(tiny("mlp2")) != key
    assert student_batch_key(tiny(epochs=5)) != key


@pytest.mark.parametrize(("architecture", "batch_size"), list(itertools.product(STUDENTS, (None, 8))))
def test_batched_runs_equal_the_same_runs_trained_alone(architecture, batch_size):
    configs = mixed_batch(architecture, batch_size)
    for record, config in zip(train_students_batched(configs, [None] * len(configs)), configs):
        assert_same_record(record, train_student(config))


@pytest.mark.skipif(native.native_compiler() is None, reason="no C compiler")
@pytest.mark.parametrize("batch_size", [None, 8])
def test_batched_float32_records_are_the_same_with_the_update_kernel_and_without(monkeypatch, batch_size):
    configs = [
        config.model_copy(update={"train": config.train.model_copy(update={"dtype": "float32"})})
        for config in mixed_batch("mlp2", batch_size)
    ]
    with_kernel = train_students_batched(configs, [None] * 5)
    monkeypatch.setenv("MOMENTUMLAB_NATIVE", "0")
    native.load_kernel.cache_clear()
    for record, expected in zip(train_students_batched(configs, [None] * 5), with_kernel):
        assert_same_record(record, expected, tolerance=0)
    native.load_kernel.cache_clear()


def test_a_diverging_run_is_recorded_as_alone_and_leaves_the_others_unchanged():
    configs = mixed_batch("cnn1", 8)
    diverging = tiny("cnn1", "gd", 1e60, seed=4, batch_size=8)
    records = train_students_batched([diverging, *configs], [None] * 6)
    alone = train_student(diverging)
    assert alone.status == "diverged" and alone.diverged_at_step == 0
    assert_same_record(records[0], alone)
    for record, without in zip(records[1:], train_students_batched(configs, [None] * 5)):
        assert_same_record(record, without, tolerance=1e-12)


@pytest.mark.parametrize("architecture", ["mlp2", "cnn2"])
def test_small_chunks_give_the_same_records(monkeypatch, architecture):
    from momentumlab.train import teacher_student_batched

    configs = mixed_batch(architecture, None)
    expected = train_students_batched(configs, [None] * 5)
    monkeypatch.setattr(teacher_student_batched, "CHUNK_BYTES", {"mlp": 1, "cnn": 1})  # one run per chunk
    for record, reference in zip(train_students_batched(configs, [None] * 5), expected):
        assert_same_record(record, reference)


@pytest.mark.parametrize(
    ("architecture", "per_example"),
    [("mlp2", 6 + 6), ("cnn2", 8 * 6)],  # an MLP: both layers' units; a CNN: d positions × its widest layer
)
def test_a_chunk_holds_its_familys_bytes_of_hidden_features(monkeypatch, architecture, per_example):
    from momentumlab.train import teacher_student_batched

    runs = teacher_student_batched._load_runs([tiny(architecture, seed=s) for s in range(7)], [None] * 7)
    per_run = 40 * per_example * 8  # 40 examples, float64
    for budget, sizes in ((3 * per_run, [3, 3, 1]), (3 * per_run - 1, [2, 2, 2, 1]), (1, [1] * 7)):
        monkeypatch.setattr(teacher_student_batched, "CHUNK_BYTES", {architecture[:3]: budget})
        chunks = teacher_student_batched._chunks(runs, batch_rows=40)
        assert [len(chunk.runs) for chunk in chunks] == sizes


def test_batched_resume_and_cross_resume_between_the_trainers(tmp_path: Path):
    configs = mixed_batch("mlp2", 8)
    expected = [train_student(config) for config in configs]
    paths = [tmp_path / f"batched-{index}.pt" for index in range(5)]
    with pytest.raises(RuntimeError, match="interrupted"):
        train_students_batched(configs, paths, on_step=raise_at(6))
    assert all(path.is_file() for path in paths)
    half = 3  # the first runs resume alone, the others in a batch
    for config, path, reference in zip(configs[:half], paths[:half], expected[:half]):
        assert_same_record(train_student(config, path), reference)
    for record, reference in zip(train_students_batched(configs[half:], paths[half:]), expected[half:]):
        assert record.resumed_from_step == 4
        assert_same_record(record, reference)

    alone_paths = [tmp_path / f"alone-{index}.pt" for index in range(5)]
    for config, path in zip(configs, alone_paths):
        with pytest.raises(RuntimeError, match="interrupted"):
            train_student(config, path, on_step=raise_at(9))
    for record, reference in zip(train_students_batched(configs, alone_paths), expected):
        assert record.resumed_from_step == 8
        assert_same_record(record, reference)


def test_batched_refuses_mixed_positions_and_unbatchable_configs(tmp_path: Path):
    configs = mixed_batch("mlp1", None)[:2]
    path = tmp_path / "one.pt"
    with pytest.raises(RuntimeError):
        train_student(configs[0], path, on_step=raise_at(5))
    with pytest.raises(ValueError, match="different epochs"):
        train_students_batched(configs, [path, None])
    with pytest.raises(ValueError, match="train.batch_size = 8"):
        train_students_batched([configs[0], tiny(batch_size=8)], [None, None])
    with pytest.raises(ValueError, match="one checkpoint path per config"):
        train_students_batched(configs, [None])


@NEEDS_CUDA
@pytest.mark.parametrize("architecture", STUDENTS)
@pytest.mark.parametrize("batch_size", [None, 10])
def test_a_mixed_batch_of_students_trains_on_the_gpu_as_on_the_cpu(architecture, batch_size):
    configs = mixed_batch(architecture, batch_size)
    cuda = train_students_batched([on_device(config, "cuda") for config in configs], [None] * len(configs))
    for on_gpu, on_cpu in zip(cuda, train_students_batched(configs, [None] * len(configs)), strict=True):
        assert_same_record(on_gpu, on_cpu)


@NEEDS_CUDA
@pytest.mark.parametrize("batch_size", [None, 10])
def test_a_batched_student_step_on_the_gpu_syncs_once(batch_size):
    """Epochs 1 … 4 of 6, marked per epoch: one sync per step, none for the epoch's minibatch order."""
    configs = [
        on_device(config, "cuda", epochs=6, log_every_epochs=NEVER, checkpoint_every_epochs=NEVER)
        for config in mixed_batch("cnn1", batch_size)
    ]
    counts = syncs_per_mark(lambda on_step: train_students_batched(configs, [None] * 5, on_step=on_step))
    assert counts == [steps_per_epoch(configs[0])] * 4
