"""Reproduction `teacher-student`: Table 1 of Jelassi & Li — momentum does not always help.

Inputs x ~ N(0, I_30), 500 train / 1000 validation / 5000 test, labels y = sign(f*(x) − m*) of a random
ReLU teacher f* ∈ {Linear, 1-MLP, 2-MLP, 1-CNN, 2-CNN} (:mod:`momentumlab.data.teacher`); students
{1-MLP, 2-MLP, 1-CNN, 2-CNN} (:mod:`momentumlab.models.mlp`) trained on the logistic loss with GD and
GD+M (full batch) and SGD and SGD+M, 3 seeds. Within a seed every optimizer and every teacher starts
the student from the same initialization, and every teacher labels the same inputs. All 240 runs
train through the batched engine (:mod:`momentumlab.train.batched_students`), one computation per
student architecture and batch size.

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
`--scale smoke` trains 1 seed on 100 examples for a few epochs: it checks the pipeline only.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from momentumlab import atomic
from momentumlab.claims import Claim
from momentumlab.config import TeacherStudentRunConfig, apply_overrides, validate
from momentumlab.experiments.base import ReproductionOptions, ReproductionResult
from momentumlab.report import claims_table, save_figure
from momentumlab.store import RunStore, StoredRun
from momentumlab.threads import single_thread

NAME = "teacher-student"
TITLE = "Momentum does not always help: teacher–student Gaussian data (Jelassi & Li, Table 1)"
DEFAULT_SEEDS = (0, 1, 2)
SMOKE_SEEDS = (0,)
TEACHERS = {"Linear": "linear", "1-MLP": "mlp1", "2-MLP": "mlp2", "1-CNN": "cnn1", "2-CNN": "cnn2"}
STUDENTS = {"1-MLP": "mlp1", "2-MLP": "mlp2", "1-CNN": "cnn1", "2-CNN": "cnn2"}
TEACHER_WIDTHS = {"linear": 1, "mlp1": 32, "mlp2": 32, "cnn1": 8, "cnn2": 8}
STUDENT_WIDTHS = {"mlp1": 128, "mlp2": 64, "cnn1": 16, "cnn2": 8}
KERNEL_SIZE = 5
LEARNING_RATE = 0.5
MOMENTUM = 0.9
MINIBATCH = 100
EPOCHS_GD = 1000
EPOCHS_SGD = 300
OPTIMIZERS: dict[str, tuple[dict[str, Any], int | None]] = {  # label → (optimizer, batch size)
    "GD": ({"name": "gd", "lr": LEARNING_RATE}, None),
    "GD+M": ({"name": "ema_momentum", "lr": LEARNING_RATE, "momentum": MOMENTUM}, None),
    "SGD": ({"name": "gd", "lr": LEARNING_RATE}, MINIBATCH),
    "SGD+M": ({"name": "ema_momentum", "lr": LEARNING_RATE, "momentum": MOMENTUM}, MINIBATCH),
}
PAIRS = (("GD", "GD+M"), ("SGD", "SGD+M"))
SMOKE = {"data": {"n_train": 100, "n_val": 100, "n_test": 200}, "epochs": 10, "minibatch": 20}
FIT = 1.0  # train accuracy every run must reach
MAX_GAIN = 2.0  # points of test accuracy by which momentum may beat its plain counterpart on average
# Table 1, test accuracy (%) GD/GD+M; rows students, columns teachers Linear, 1-MLP, 2-MLP, 1-CNN, 2-CNN
INTRO = (
    "Momentum's benefit depends on the data: on Gaussian inputs labelled by random ReLU teachers, "
    "over-parameterized students trained to zero training error generalize about as well with momentum as "
    "without (the paper's Table 1). Test accuracy in %, mean ± std over seeds; each cell is "
    "`plain / momentum`, the paper's numbers in parentheses. The teachers and widths are ours (the paper "
    "does not give them), so the levels differ from the paper's; the comparison within a cell is the claim."
)
PAPER = {
    "1-MLP": ((93.48, 93.25), (92.32, 92.18), (84.3, 83.68), (94.18, 94.12), (76.04, 76.12)),
    "2-MLP": ((93.45, 92.85), (91.02, 91.78), (83.82, 83.25), (94.14, 94.20), (75.50, 75.56)),
    "1-CNN": ((92.21, 92.34), (92.31, 92.33), (83.39, 83.44), (94.39, 94.39), (79.44, 78.32)),
    "2-CNN": ((91.04, 91.22), (91.51, 91.56), (82.44, 82.12), (93.91, 93.79), (80.86, 78.56)),
}


def run_config(
    student: str, teacher: str, label: str, seed: int, options: ReproductionOptions
) -> TeacherStudentRunConfig:
    """One run of Table 1 (the smoke subset under `options.scale == "smoke"`), user overrides applied last."""
    smoke = options.scale == "smoke"
    optimizer, batch_size = OPTIMIZERS[label]
    if smoke and batch_size is not None:
        batch_size = SMOKE["minibatch"]
    epochs = SMOKE["epochs"] if smoke else EPOCHS_GD if batch_size is None else EPOCHS_SGD
    teacher_name, student_name = TEACHERS[teacher], STUDENTS[student]
    raw = {
        "seed": seed,
        "data": {
            "teacher": teacher_name,
            "teacher_width": TEACHER_WIDTHS[teacher_name],
            "kernel_size": KERNEL_SIZE,
            **(SMOKE["data"] if smoke else {}),
        },
        "model": {
            "architecture": student_name,
            "width": STUDENT_WIDTHS[student_name],
            "kernel_size": KERNEL_SIZE,
        },
        "optimizer": optimizer,
        "train": {
            "epochs": epochs,
            "batch_size": batch_size,
            "log_every_epochs": max(1, epochs // 10),
            "checkpoint_every_epochs": max(1, epochs // 2),
        },
    }
    return validate(TeacherStudentRunConfig, apply_overrides(raw, list(options.overrides)))


Cell = tuple[str, str, str, int]  # (student, teacher, optimizer label, seed)


def _final_table(cells: list[Cell], runs: list[StoredRun]) -> pd.DataFrame:
    """One row per run: cell, optimizer, seed, status and its last row (NaN unless it completed)."""
    rows = []
    for (student, teacher, label, seed), run in zip(cells, runs):
        complete = run.status.get("status") == "complete"
        rows.append(
            {
                "student": student,
                "teacher": teacher,
                "optimizer": label,
                "seed": seed,
                "run_id": run.run_id,
                "status": run.status.get("status"),
                **(run.final() if complete else {"train_accuracy": math.nan, "test_accuracy": math.nan}),
            }
        )
    return pd.DataFrame(rows)


def _accuracy(final: pd.DataFrame, label: str) -> pd.DataFrame:
    """Test accuracy in % as (student, teacher) × seed for one optimizer."""
    chosen = final[final["optimizer"] == label].set_index(["student", "teacher", "seed"])
    return 100 * chosen["test_accuracy"].unstack("seed")


def _gains(final: pd.DataFrame, plain: str, momentum: str) -> pd.DataFrame:
    """Per cell, momentum's test accuracy minus the plain optimizer's (points), seed by seed (same init)."""
    return _accuracy(final, momentum) - _accuracy(final, plain)


def _cell(values: pd.Series) -> str:
    return "n/a" if values.isna().any() else f"{values.mean():.2f} ± {values.std(ddof=0):.2f}"


def _table(final: pd.DataFrame, plain: str, momentum: str, with_paper: bool) -> str:
    """The paper's layout: rows students, columns teachers, cells 'plain / momentum' (mean ± std over seeds)."""
    accuracy = {label: _accuracy(final, label) for label in (plain, momentum)}
    lines = ["| student \\ teacher | " + " | ".join(TEACHERS) + " |", "|---|" + "---|" * len(TEACHERS)]
    for student in STUDENTS:
        cells = []
        for index, teacher in enumerate(TEACHERS):
            values = [accuracy[label].loc[(student, teacher)] for label in (plain, momentum)]
            cell = f"{_cell(values[0])} / {_cell(values[1])}"
            if with_paper:
                cell += " (paper {:.2f} / {:.2f})".format(*PAPER[student][index])
            cells.append(cell)
        lines.append(f"| {student} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _claims(final: pd.DataFrame) -> list[Claim]:
    claims = []
    for plain, momentum in PAIRS:
        chosen = final[final["optimizer"].isin([plain, momentum])]
        lowest = chosen["train_accuracy"].min(skipna=False)
        claims.append(
            Claim(
                f"{plain.lower()}-{momentum.lower().replace('+', '')}-fit-train",
                f"{plain} and {momentum} reach train accuracy {FIT:g} in every run of every cell (lowest measured)",
                float(lowest),
                FIT,
                ">=",
                {"runs below": int((chosen["train_accuracy"] < FIT).sum()), "runs": len(chosen)},
            )
        )
        gains = _gains(final, plain, momentum)
        mean_gain = gains.mean(axis=1, skipna=False)
        best = mean_gain.idxmax() if mean_gain.notna().all() else None
        claims.append(
            Claim(
                f"{momentum.lower().replace('+', '')}-no-better-than-{plain.lower()}",
                f"in no cell does {momentum} beat {plain} by more than {MAX_GAIN:g} points of test accuracy on "
                "average over seeds (largest mean gain measured)",
                float(mean_gain.max(skipna=False)),
                MAX_GAIN,
                "<=",
                {
                    "cell of the largest gain": " / ".join(best) if best else "n/a",
                    "smallest mean gain": float(mean_gain.min(skipna=False)),
                },
            )
        )
    return claims


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
    return "**Finding.** " + " ".join(sentences)


def _figure(final: pd.DataFrame, path: Path) -> Path:
    """Heat maps of momentum's mean test-accuracy gain per cell, with its spread over seeds."""
    figure, axes = plt.subplots(1, len(PAIRS), figsize=(6.4 * len(PAIRS), 4.2), squeeze=False)
    gains = {pair: _gains(final, *pair) for pair in PAIRS}
    limit = max(MAX_GAIN, *(float(np.nanmax(np.abs(g.mean(axis=1).to_numpy()))) for g in gains.values()))
    for axis, ((plain, momentum), gain) in zip(axes.flat, gains.items()):
        mean = gain.mean(axis=1).unstack("teacher").reindex(index=list(STUDENTS), columns=list(TEACHERS))
        spread = (
            gain.std(axis=1, ddof=0).unstack("teacher").reindex(index=list(STUDENTS), columns=list(TEACHERS))
        )
        image = axis.imshow(mean.to_numpy(), cmap="RdBu", vmin=-limit, vmax=limit, aspect="auto")
        for i, student in enumerate(STUDENTS):
            for j, teacher in enumerate(TEACHERS):
                value = mean.loc[student, teacher]
                text = "n/a" if math.isnan(value) else f"{value:+.2f}\n± {spread.loc[student, teacher]:.2f}"
                color = "white" if abs(value) > 0.6 * limit else "black"
                axis.text(j, i, text, ha="center", va="center", fontsize=8, color=color)
        axis.set_xticks(range(len(TEACHERS)), [f"{t} teacher" for t in TEACHERS], fontsize=8)
        axis.set_yticks(range(len(STUDENTS)), [f"{s} student" for s in STUDENTS], fontsize=8)
        axis.set_title(f"{momentum} − {plain}: test accuracy (points), mean ± std over seeds", fontsize=10)
        figure.colorbar(image, ax=axis, shrink=0.85)
    figure.suptitle(f"Momentum's gain per cell (the claim: at most {MAX_GAIN:g} points anywhere)")
    return save_figure(figure, path)


def run(store: RunStore, out_dir: Path, options: ReproductionOptions) -> ReproductionResult:
    """Train every run (batched through the store), then write the tables, figure, claims and report."""
    smoke = options.scale == "smoke"
    seeds = options.seeds or (SMOKE_SEEDS if smoke else DEFAULT_SEEDS)
    cells = [
        (student, teacher, label, seed)
        for student in STUDENTS
        for teacher in TEACHERS
        for label in OPTIMIZERS
        for seed in seeds
    ]
    configs = [run_config(*cell, options) for cell in cells]
    with single_thread():  # each step's products are small; a second thread mostly waits (see threads.py)
        runs = store.run_many(configs, progress=options.progress)
    final = _final_table(cells, runs)
    claims = _claims(final)

    out_dir.mkdir(parents=True, exist_ok=True)
    figure = _figure(final, out_dir / "momentum_gain.png")
    atomic.write_json(out_dir / "claims.json", [claim.to_json() for claim in claims])
    atomic.write_text(out_dir / "final_metrics.csv", final.to_csv(index=False))

    first, sgd = configs[0], next(c for c in configs if c.train.batch_size is not None)
    command = " ".join(
        [f"momentumlab reproduce {NAME} --seeds {','.join(map(str, seeds))}"]
        + (["--scale smoke"] if smoke else [])
        + [f"--set {override}" for override in options.overrides]
    )
    data, model = first.data, first.model
    section = "\n\n".join(
        [
            f"## {TITLE}\n\nCommand: `{command}`."
            + (
                "\n\n**Smoke scale**: a tiny subset for a few epochs checks the pipeline; not a result."
                if smoke
                else ""
            ),
            INTRO,
            "### Claims\n\n" + claims_table(claims),
            _finding(final),
            "### Table 1: GD / GD+M\n\n" + _table(final, "GD", "GD+M", with_paper=True),
            "### GD / GD+M replaced by SGD / SGD+M (the paper: same conclusion, numbers in its appendix)\n\n"
            + _table(final, "SGD", "SGD+M", with_paper=False),
            f"![momentum gain per cell]({NAME}/{figure.name})",
            (
                "### Setting\n\n"
                f"x ~ N(0, I_{data.dim}); {data.n_train} train, {data.n_val} validation, {data.n_test} test "
                f"examples; teachers: MLP width {TEACHER_WIDTHS['mlp1']}, CNN {TEACHER_WIDTHS['cnn1']} channels "
                f"(kernel {data.kernel_size}); labels sign(f*(x) − median f*). Students: "
                + ", ".join(f"{s} width {STUDENT_WIDTHS[a]}" for s, a in STUDENTS.items())
                + f" (CNN kernel {model.kernel_size}). η = {first.optimizer.lr} for every optimizer; momentum in "
                f"the EMA form with γ = {MOMENTUM}; GD/GD+M {first.train.epochs} epochs (full batch); "
                f"SGD/SGD+M minibatch {sgd.train.batch_size}, {sgd.train.epochs} epochs; weight decay "
                f"{first.train.weight_decay}; {first.train.dtype}. {len(runs)} runs "
                f"({sum(r.status.get('status') == 'complete' for r in runs)} complete); per-run ids and final "
                f"rows in `{NAME}/final_metrics.csv`."
            ),
        ]
    )
    return ReproductionResult(NAME, TITLE, claims, section, [figure])
