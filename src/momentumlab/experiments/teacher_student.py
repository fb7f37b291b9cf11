"""Reproduction `teacher-student`: Table 1 of Jelassi & Li — momentum does not always help.

Inputs x ~ N(0, I_30), 500 train / 1000 validation / 5000 test, labels y = sign(f*(x) − m*) of a random
ReLU teacher f* ∈ {Linear, 1-MLP, 2-MLP, 1-CNN, 2-CNN} (:mod:`momentumlab.data.teacher`); students
{1-MLP, 2-MLP, 1-CNN, 2-CNN} (:mod:`momentumlab.models.mlp`) trained on the logistic loss with GD and
GD+M (full batch) and SGD and SGD+M, 3 seeds. Within a seed every optimizer and every teacher starts
the student from the same initialization, and every teacher labels the same inputs. All 240 runs
train through the batched engine (:mod:`momentumlab.train.teacher_student_batched`), one computation
per student architecture and batch size.

Calibration. The paper gives neither widths nor step sizes; we chose them on training accuracy only
(never on test), for two constraints: every run reaches train accuracy 1.0 (the paper trains "to zero
training error"), and the 240 runs finish within 10 minutes on a 2-core CPU.

- Students, over-parameterized (more parameters than the 500 examples): 1-MLP 128 hidden units
  (4 097 parameters), 2-MLP 64 + 64 (6 209), 1-CNN 16 channels (577), 2-CNN 8 channels (617), kernel 5,
  stride 1, 'same' padding. A CNN step costs about channels × 30 positions per example, so the CNNs
  are the narrowest with more parameters than examples; the 2-CNN student is still the costliest.
- Teachers narrower than the students: 1-/2-MLP 32 hidden units, 1-/2-CNN 8 channels (kernel 5).
- One step size for every optimizer, η = 0.5; GD+M and SGD+M in the paper's EMA form with γ = 0.9,
  which moves by η times a gradient average, so momentum is the only change. Measured alternatives
  (seeds 0–2, 300 epochs): at η = 1, GD on the 2-CNN student fitted 1 of its 15 runs (6 stalled near
  chance training accuracy) while GD+M fitted all 15; at η = 0.25 and 0.5 most CNN-student runs on
  the MLP teachers had not fitted yet, hence the paper's 1000 epochs.
- GD / GD+M: 1000 epochs (= steps), as in the paper. In the full reproduction (rows every 100 epochs)
  every MLP-student run had fitted by epoch 200, every 2-CNN run by 400, every 1-CNN run by 800.
  SGD / SGD+M: minibatch 100 (5 steps per epoch), 300 epochs; every run had fitted by epoch 180
  (rows every 30 epochs).

The full reproduction ran in 4 min 38 s and 5 min 44 s (two runs, identical results) on the 2-core
CPU with one thread, the machine shared with other jobs (load ≈ 3): 84–142 s for the 30 GD/GD+M runs
of the 2-CNN student, 9–60 s for each other group.

The claims are the issue's: both optimizers reach train accuracy 1.0 in every cell, and in no cell
does GD+M beat GD by more than 2 points of test accuracy on average (the same for SGD/SGD+M).
`--scale smoke` trains 1 seed on 100 examples for 10 epochs: it checks the pipeline only.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Literal

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from pydantic import Field, model_validator

from momentumlab.claims import Claim
from momentumlab.config import StrictModel
from momentumlab.data.teacher import TeacherDataConfig, TeacherName
from momentumlab.experiments.reproduction import (
    ClaimFunction,
    Reproduction,
    ReproductionSettings,
    Seeds,
    Tables,
    read_prose,
)
from momentumlab.optim.momentum import OptimizerConfig
from momentumlab.report import save_figure
from momentumlab.runs.teacher_student import (
    StudentConfig,
    StudentName,
    StudentTrainConfig,
    TeacherStudentRunConfig,
)
from momentumlab.statistics import bootstrap_mean
from momentumlab.store import RunStore

# network name (of data.teacher and runs.teacher_student) → Table 1's label
NETWORKS = {"linear": "Linear", "mlp1": "1-MLP", "mlp2": "2-MLP", "cnn1": "1-CNN", "cnn2": "2-CNN"}
OPTIMIZERS = {  # label → (optimizer field, training field) of the settings
    "GD": ("gd", "full_batch"),
    "GD+M": ("gdm", "full_batch"),
    "SGD": ("gd", "minibatch"),
    "SGD+M": ("gdm", "minibatch"),
}
PAIRS = (("GD", "GD+M"), ("SGD", "SGD+M"))
FIT = 1.0  # train accuracy every run must reach
MAX_GAIN = 2.0  # points of test accuracy by which momentum may beat its plain counterpart on average
# Table 1, test accuracy (%) GD/GD+M; rows students, columns teachers Linear, 1-MLP, 2-MLP, 1-CNN, 2-CNN
PAPER = {
    student: dict(zip(NETWORKS.values(), cells))
    for student, cells in {
        "1-MLP": ((93.48, 93.25), (92.32, 92.18), (84.3, 83.68), (94.18, 94.12), (76.04, 76.12)),
        "2-MLP": ((93.45, 92.85), (91.02, 91.78), (83.82, 83.25), (94.14, 94.20), (75.50, 75.56)),
        "1-CNN": ((92.21, 92.34), (92.31, 92.33), (83.39, 83.44), (94.39, 94.39), (79.44, 78.32)),
        "2-CNN": ((91.04, 91.22), (91.51, 91.56), (82.44, 82.12), (93.91, 93.79), (80.86, 78.56)),
    }.items()
}
Width = Annotated[int, Field(ge=1)]
HiddenTeacher = Literal["mlp1", "mlp2", "cnn1", "cnn2"]  # the teachers that have a width


class Sample(StrictModel):
    """The inputs x ~ N(0, I_dim) that every teacher labels."""

    dim: int = Field(30, ge=2, description="d, input dimension")
    n_train: int = Field(500, ge=1)
    n_val: int = Field(1000, ge=0, description="validation examples")
    n_test: int = Field(5000, ge=1)


class Settings(ReproductionSettings):
    """Teachers, students, the shared sample sizes, the two optimizers and the two ways of training."""

    seeds: Seeds = (0, 1, 2)
    data: Sample = Sample()
    teachers: tuple[TeacherName, ...] = Field(tuple(NETWORKS), min_length=1, description="Table 1's columns")
    teacher_widths: dict[HiddenTeacher, Width] = Field(
        {"mlp1": 32, "mlp2": 32, "cnn1": 8, "cnn2": 8},
        description="hidden units (MLP) or channels (CNN) of each teacher with hidden layers",
    )
    students: dict[StudentName, Width] = Field(
        {"mlp1": 128, "mlp2": 64, "cnn1": 16, "cnn2": 8},
        min_length=1,
        description="Table 1's rows: each student's hidden units (MLP) or channels (CNN)",
    )
    kernel_size: int = Field(5, ge=1, description="convolution kernel of the CNN teachers and students")
    gd: OptimizerConfig = Field(OptimizerConfig(name="gd", lr=0.5), description="GD's and SGD's")
    gdm: OptimizerConfig = Field(
        OptimizerConfig(name="ema_momentum", lr=0.5, momentum=0.9), description="GD+M's and SGD+M's"
    )
    full_batch: StudentTrainConfig = Field(
        StudentTrainConfig(epochs=1000, log_every_epochs=100, checkpoint_every_epochs=500),
        description="how GD and GD+M train (batch_size null)",
    )
    minibatch: StudentTrainConfig = Field(
        StudentTrainConfig(epochs=300, batch_size=100, log_every_epochs=30, checkpoint_every_epochs=150),
        description="how SGD and SGD+M train",
    )

    @classmethod
    def smoke(cls) -> Settings:
        def train(batch_size: int | None) -> StudentTrainConfig:
            return StudentTrainConfig(
                epochs=10, batch_size=batch_size, log_every_epochs=1, checkpoint_every_epochs=5
            )

        return cls(
            seeds=(0,),
            data=Sample(n_train=100, n_val=100, n_test=200),
            full_batch=train(None),
            minibatch=train(20),
        )

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        for name in ("seeds", "teachers"):
            values = getattr(self, name)
            if len(set(values)) < len(values):
                raise ValueError(f"{name} = {list(values)}: each value may appear once")
        missing = [t for t in self.teachers if t != "linear" and t not in self.teacher_widths]
        if missing:
            raise ValueError(
                f"teacher_widths has no width for teacher {missing[0]!r}; give teacher_widths.{missing[0]}"
            )
        convolutions = [n for n in (*self.teachers, *self.students) if n.startswith("cnn")]
        if convolutions and self.kernel_size > self.data.dim:
            raise ValueError(
                f"kernel_size = {self.kernel_size} exceeds data.dim = {self.data.dim} (the CNN "
                f"{convolutions[0]} convolves over the d coordinates); allowed: 1..{self.data.dim}"
            )
        if self.full_batch.batch_size is not None:
            raise ValueError(
                f"full_batch.batch_size = {self.full_batch.batch_size}; allowed: null (GD, GD+M)"
            )
        size = self.minibatch.batch_size
        if size is None or size > self.data.n_train:
            raise ValueError(
                f"minibatch.batch_size = {size}; allowed: 1..{self.data.n_train} (data.n_train; SGD, SGD+M)"
            )
        return self

    def run_config(
        self, student: StudentName, teacher: TeacherName, label: str, seed: int
    ) -> TeacherStudentRunConfig:
        """One run of Table 1: a student, a teacher, an optimizer (a key of OPTIMIZERS) and a seed."""
        optimizer, train = OPTIMIZERS[label]
        return TeacherStudentRunConfig(
            seed=seed,
            data=TeacherDataConfig(
                teacher=teacher,
                teacher_width=self.teacher_widths.get(teacher, 1),  # a linear teacher has no hidden layer
                kernel_size=self.kernel_size,
                **self.data.model_dump(),
            ),
            model=StudentConfig(
                architecture=student, width=self.students[student], kernel_size=self.kernel_size
            ),
            optimizer=getattr(self, optimizer),
            train=getattr(self, train),
        )


def measure(settings: Settings, store: RunStore) -> Tables:
    """Train (or load) every run of both tables, batched; one row per run with its final measurements."""
    cells = [
        (student, teacher, label, seed)
        for student in settings.students
        for teacher in settings.teachers
        for label in OPTIMIZERS
        for seed in settings.seeds
    ]
    runs = store.run_many([settings.run_config(*cell) for cell in cells])
    rows = []
    for (student, teacher, label, seed), run in zip(cells, runs):
        complete = run.status == "complete"
        rows.append(
            {
                "student": NETWORKS[student],
                "teacher": NETWORKS[teacher],
                "optimizer": label,
                "seed": seed,
                "run_id": run.run_id,
                "status": run.status,
                "seconds": run.seconds,
                # NaN unless the run completed, so every claim that uses it fails
                **(run.final() if complete else {"train_accuracy": math.nan, "test_accuracy": math.nan}),
            }
        )
    return {"final": pd.DataFrame(rows)}


def _accuracy(final: pd.DataFrame, label: str) -> pd.DataFrame:
    """Test accuracy in % as (student, teacher) × seed for one optimizer."""
    chosen = final[final["optimizer"] == label].set_index(["student", "teacher", "seed"])
    return 100 * chosen["test_accuracy"].unstack("seed")


def _gains(final: pd.DataFrame, plain: str, momentum: str) -> pd.DataFrame:
    """Per cell, momentum's test accuracy minus the plain optimizer's (points), seed by seed (same init)."""
    return _accuracy(final, momentum) - _accuracy(final, plain)


def _claim_id(label: str) -> str:
    return label.lower().replace("+", "")


def _fit_train(plain: str, momentum: str) -> ClaimFunction:
    def fit_train(settings: Settings, tables: Tables) -> Claim:
        """Both optimizers of the pair fit their training sets in every run of every cell.

        References: Jelassi & Li (2022), Table 1 and Section 1: the students are over-parameterized and
        trained "to ensure zero training error" with GD and GD+M (SGD and SGD+M in the appendix)."""
        final = tables["final"]
        chosen = final[final["optimizer"].isin([plain, momentum])]
        return Claim(
            f"{_claim_id(plain)}-{_claim_id(momentum)}-fit-train",
            f"{plain} and {momentum} reach train accuracy {FIT:g} in every run of every cell "
            "(lowest measured)",
            float(chosen["train_accuracy"].min(skipna=False)),
            FIT,
            ">=",
            {"runs below": int((chosen["train_accuracy"] < FIT).sum()), "runs": len(chosen)},
        )

    return fit_train


def _no_better(plain: str, momentum: str) -> ClaimFunction:
    def no_better(settings: Settings, tables: Tables) -> Claim:
        """Momentum does not improve test accuracy in any cell (by more than a tolerance).

        References: Jelassi & Li (2022), Table 1 and Section 1: "whether the target function is simple
        (linear) or complex (neural network), momentum does not improve generalization"; the same for
        SGD/SGD+M in the appendix."""
        gains = _gains(tables["final"], plain, momentum)
        mean_gain = gains.mean(axis=1, skipna=False)
        best = mean_gain.idxmax() if mean_gain.notna().all() else None
        # per cell, the paired bootstrap interval of the mean gain; the claim holds when every cell's interval
        # lies below the tolerance, fails when one lies above: the max over cells of each end
        estimates = [bootstrap_mean(row.tolist()) for _, row in gains.iterrows()]  # gains: paired by seed
        interval = (
            (max(e.low for e in estimates), max(e.high for e in estimates))
            if mean_gain.notna().all()
            else None
        )
        return Claim(
            f"{_claim_id(momentum)}-no-better-than-{_claim_id(plain)}",
            f"in no cell does {momentum} beat {plain} by more than {MAX_GAIN:g} points of test accuracy on "
            "average over seeds (largest mean gain measured)",
            float(mean_gain.max(skipna=False)),
            MAX_GAIN,
            "<=",
            {
                "cell of the largest gain": " / ".join(best) if best else "n/a",
                "smallest mean gain": float(mean_gain.min(skipna=False)),
                "seeds": gains.shape[1],
                "interval": (
                    "per cell, the expanded percentile-bootstrap 95% interval of the seed-paired mean gain; the largest "
                    "lower end and the largest upper end over cells"
                ),
            },
            interval=interval,
        )

    return no_better


CLAIMS = tuple(claim(*pair) for pair in PAIRS for claim in (_fit_train, _no_better))


def _labels(settings: Settings) -> tuple[list[str], list[str]]:
    """(students, teachers) as Table 1's labels, in the settings' order."""
    return [NETWORKS[s] for s in settings.students], [NETWORKS[t] for t in settings.teachers]


def figures(settings: Settings, tables: Tables, out_dir: Path) -> list[Path]:
    """Heat maps of momentum's mean test-accuracy gain per cell, with its spread over seeds."""
    students, teachers = _labels(settings)
    final = tables["final"]
    figure, axes = plt.subplots(1, len(PAIRS), figsize=(6.4 * len(PAIRS), 4.2), squeeze=False)
    gains = {pair: _gains(final, *pair) for pair in PAIRS}
    limit = max(MAX_GAIN, *(float(np.nanmax(np.abs(g.mean(axis=1).to_numpy()))) for g in gains.values()))
    for axis, ((plain, momentum), gain) in zip(axes.flat, gains.items()):
        mean = gain.mean(axis=1).unstack("teacher").reindex(index=students, columns=teachers)
        spread = gain.std(axis=1, ddof=0).unstack("teacher").reindex(index=students, columns=teachers)
        image = axis.imshow(mean.to_numpy(), cmap="RdBu", vmin=-limit, vmax=limit, aspect="auto")
        for i, student in enumerate(students):
            for j, teacher in enumerate(teachers):
                value = mean.loc[student, teacher]
                text = "n/a" if math.isnan(value) else f"{value:+.2f}\n± {spread.loc[student, teacher]:.2f}"
                color = "white" if abs(value) > 0.6 * limit else "black"
                axis.text(j, i, text, ha="center", va="center", fontsize=8, color=color)
        axis.set_xticks(range(len(teachers)), [f"{t} teacher" for t in teachers], fontsize=8)
        axis.set_yticks(range(len(students)), [f"{s} student" for s in students], fontsize=8)
        axis.set_title(f"{momentum} − {plain}: test accuracy (points), mean ± std over seeds", fontsize=10)
        figure.colorbar(image, ax=axis, shrink=0.85)
    figure.suptitle(f"Momentum's gain per cell (the claim: at most {MAX_GAIN:g} points anywhere)")
    return [save_figure(figure, out_dir / "momentum_gain.png")]


def _cell(values: pd.Series) -> str:
    return "n/a" if values.isna().any() else f"{values.mean():.2f} ± {values.std(ddof=0):.2f}"


def _table(settings: Settings, final: pd.DataFrame, plain: str, momentum: str, with_paper: bool) -> str:
    """The paper's layout: rows students, columns teachers, cells 'plain / momentum' (mean ± std over
    seeds)."""
    students, teachers = _labels(settings)
    accuracy = {label: _accuracy(final, label) for label in (plain, momentum)}
    lines = ["| student \\ teacher | " + " | ".join(teachers) + " |", "|---|" + "---|" * len(teachers)]
    for student in students:
        cells = []
        for teacher in teachers:
            values = [accuracy[label].loc[(student, teacher)] for label in (plain, momentum)]
            cell = f"{_cell(values[0])} / {_cell(values[1])}"
            if with_paper:
                cell += " (paper {:.2f} / {:.2f})".format(*PAPER[student][teacher])
            cells.append(cell)
        lines.append(f"| {student} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _finding(final: pd.DataFrame) -> str:
    """Where momentum's mean test-accuracy gain is largest and smallest, for both pairs."""
    sentences = []
    for plain, momentum in PAIRS:
        mean_gain = _gains(final, plain, momentum).mean(axis=1)
        if mean_gain.isna().any():
            sentences.append(f"{momentum} − {plain}: some cells lack a completed run.")
            continue
        high, low = mean_gain.idxmax(), mean_gain.idxmin()
        sentences.append(
            f"{momentum} − {plain}: largest mean gain {mean_gain[high]:+.2f} points ({high[0]} student, "
            f"{high[1]} teacher), smallest {mean_gain[low]:+.2f} ({low[0]} student, {low[1]} teacher)."
        )
    return " ".join(sentences)


def _optimizer(config: OptimizerConfig) -> str:
    return f"{config.name}, η = {config.lr:g}" + (f", γ = {config.momentum:g}" if config.momentum else "")


def _training(config: StudentTrainConfig) -> str:
    batch = "full batch" if config.batch_size is None else f"minibatch {config.batch_size}"
    return f"{batch}, {config.epochs} epochs, weight decay {config.weight_decay:g}, {config.dtype}"


def report(settings: Settings, tables: Tables) -> dict[str, str]:
    final, data = tables["final"], settings.data
    return {
        "finding": _finding(final),
        "table_gd": _table(settings, final, "GD", "GD+M", with_paper=True),
        "table_sgd": _table(settings, final, "SGD", "SGD+M", with_paper=False),
        "setting": (
            f"x ~ N(0, I_{data.dim}); {data.n_train} train, {data.n_val} validation, {data.n_test} test "
            "examples; teachers: "
            + ", ".join(
                f"{NETWORKS[t]} width {settings.teacher_widths[t]}"
                for t in settings.teachers
                if t != "linear"
            )
            + f" (CNN kernel {settings.kernel_size}); labels sign(f*(x) − median f*). Students: "
            + ", ".join(f"{NETWORKS[s]} width {width}" for s, width in settings.students.items())
            + f" (CNN kernel {settings.kernel_size}). GD and SGD: {_optimizer(settings.gd)}; GD+M and SGD+M: "
            f"{_optimizer(settings.gdm)} (the EMA form). GD/GD+M: {_training(settings.full_batch)}; "
            f"SGD/SGD+M: {_training(settings.minibatch)}. {len(final)} runs "
            f"({int((final['status'] == 'complete').sum())} complete)."
        ),
    }


REPRODUCTION = Reproduction(
    name="teacher-student",
    title="Momentum does not always help: teacher–student Gaussian data (Jelassi & Li, Table 1)",
    settings=Settings,
    measure=measure,
    claims=CLAIMS,
    figures=figures,
    report=report,
    prose=read_prose(__file__),
    single_thread=True,  # each step's products are small; a second thread mostly waits (see threads.py)
)
