"""Reproduction `heavy-ball-flow`: heavy ball follows the IGR-M modified flow to O(h²) (Ghosh et al.).

(a) Toy loss E(w1, w2) = ½(y − w1 w2 x)², x = 1, y = 0.6, start (2.8, 3.4), β = 0.5, horizon T = 1: the
distance ‖x_K − x̃(T)‖ (K = T/h) between heavy ball and the IGR-M flow, and the plain flow x' = −∇E/(1−β),
against h on a log–log plot; the fitted slope is the order. (b) The same on a small tanh network
(:mod:`momentumlab.models.tanh_network` on :mod:`momentumlab.data.tanh_teacher` data), three seeds.
(c) Explicit regularizer: heavy ball (h, β) against GD on E + λ_IGR-M‖∇E‖² and plain GD, both at the
equal effective step h/(1 − β).

Which start. The protocol of the order claims starts heavy ball on its slow manifold,
x_{−1} = x_0 + h∇E(x_0)/(1 − β) (see `momentumlab.probes.flows`): the O(h²) statement is about the slow
solution of the two-step recursion. The at-rest start x_1 = x_0 − h∇E(x_0) (SPEC §2's, and PyTorch's) is
reported as a variant: it trails every flow by the time lag τ = hβ/(1 − β) while its momentum builds up,
so x_k − x̃(kh) ≈ −τ x̃'(kh), O(h) wherever the flow still moves. At the toy's horizon the flow has
reached the valley of minima and moves at speed O(h), so the lag costs only O(h²) there (SPEC §2's
numbers, reproduced to two digits); the network's flow still moves at T and the lag dominates. Against
the IGR-M flow at T − τ the at-rest start shows the O(h²) agreement again.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from matplotlib.ticker import FormatStrFormatter, NullLocator
from pydantic import Field, model_validator
from torch import Tensor

from momentumlab.claims import Claim, Comparison
from momentumlab.config import StrictModel
from momentumlab.data.landscapes import scalar_product_loss
from momentumlab.data.tanh_teacher import tanh_teacher_data
from momentumlab.experiments.reproduction import Reproduction, ReproductionSettings, Seeds, Tables, read_prose
from momentumlab.models.tanh_network import TanhNetwork
from momentumlab.probes.curvature import flat_loss_hvp, top_eigenvalues
from momentumlab.probes.flows import (
    STARTS,
    Loss,
    Start,
    fitted_order,
    gradient,
    heavy_ball_iterates,
    igr_m_strength,
    momentum_time_lag,
    order_study,
    regularized_loss,
    solver_error,
)
from momentumlab.report import save_figure
from momentumlab.statistics import bootstrap_mean
from momentumlab.store import RunStore

SPEC_SETTING = {"beta": 0.5, "toy": {"input": 1.0, "target": 0.6, "start": (2.8, 3.4), "horizon": 1.0}}
SPEC_DISTANCES = {  # SPEC §2 in SPEC_SETTING: h → (distance to the IGR-M flow, to the plain flow)
    4e-3: (1.0e-2, 7.1e-2),
    2e-3: (2.8e-3, 3.6e-2),
    1e-3: (7.2e-4, 1.8e-2),
}
ORDER_TWO, ORDER_ONE = 1.8, 1.2  # thresholds on the fitted slopes (orders 2 and 1), set before the runs
PROTOCOL: Start = "slow_manifold"  # heavy ball's start in the order claims; "rest" is the reported variant
START_NAMES = {"slow_manifold": "on the slow manifold", "rest": "at rest"}
INPUT_DIM = 2  # the network's inputs u ∈ R²
COLORS = {
    "IGR-M": "#00798c",
    "plain": "#d1495b",
    "IGR-M lagged": "#edae49",
    "GD+M": "#00798c",
    "GD + λ‖∇E‖²": "#edae49",
    "GD": "#d1495b",
}
Beta = Annotated[float, Field(ge=0, lt=1)]
StepSizes = Annotated[tuple[Annotated[float, Field(gt=0)], ...], Field(min_length=2)]


class ToySettings(StrictModel):
    """SPEC §2's toy E(w1, w2) = ½(y − w1 w2 x)², heavy ball's start, the step sizes h and the horizon T."""

    input: float = Field(1.0, description="x")
    target: float = Field(0.6, description="y")
    start: tuple[float, float] = (2.8, 3.4)
    step_sizes: StepSizes = (8e-3, 4e-3, 2e-3, 1e-3, 5e-4)
    horizon: float = Field(1.0, gt=0, description="T")


class NetworkSettings(StrictModel):
    """The tanh network, its teacher's data, the step sizes h and the horizon T."""

    points: int = Field(64, ge=1, description="training inputs")
    width: int = Field(24, ge=1, description="hidden units of the trained network")
    teacher_width: int = Field(4, ge=1, description="hidden units of the teacher")
    step_sizes: StepSizes = (8e-3, 4e-3, 2e-3, 1e-3, 5e-4)
    horizon: float = Field(2.0, gt=0, description="T")


class RegularizerSettings(StrictModel):
    """Heavy ball (h, β) on the network against GD at η = h/(1 − β) with and without λ_IGR-M‖∇E‖²."""

    step: float = Field(2e-3, gt=0, description="heavy ball's h; GD runs at h/(1 − β)")
    beta: Beta = 0.9
    steps: int = Field(4000, ge=1)
    checkpoints: int = Field(24, ge=1, description="log-spaced steps at which the runs are measured")
    sharpness_tolerance: float = Field(1e-8, gt=0, description="relative tolerance of the Lanczos probe")


class Settings(ReproductionSettings):
    """β of the order studies, the toy, the network, the regularizer study and the ODE tolerances."""

    seeds: Seeds = (0, 1, 2)  # the network's data and initialization, and its sharpness probe's start
    beta: Beta = 0.5
    toy: ToySettings = ToySettings()
    network: NetworkSettings = NetworkSettings()
    regularizer: RegularizerSettings = RegularizerSettings()
    rtol: float = Field(1e-11, gt=0, description="relative tolerance of the flows' ODE solver")
    atol: float = Field(1e-12, gt=0, description="absolute tolerance of the flows' ODE solver")

    @classmethod
    def smoke(cls) -> Settings:
        """The toy's real setting at two step sizes (so SPEC §2's numbers are checked); one seed; the
        network and the regularizer study shrunk to at most a hundred steps each."""
        return cls(
            seeds=(0,),
            toy=ToySettings(step_sizes=(4e-3, 2e-3)),
            network=NetworkSettings(points=16, width=4, step_sizes=(4e-3, 2e-3), horizon=0.2),
            regularizer=RegularizerSettings(steps=60, checkpoints=4),
        )

    @model_validator(mode="after")
    def _step_sizes_fit_horizon(self) -> Settings:
        for name, problem in (("toy", self.toy), ("network", self.network)):
            if len(set(problem.step_sizes)) < len(problem.step_sizes):
                raise ValueError(
                    f"{name}.step_sizes = {list(problem.step_sizes)}: allowed are distinct values"
                )
            for h in problem.step_sizes:
                if round(problem.horizon / h) * h <= momentum_time_lag(h, self.beta):
                    raise ValueError(
                        f"{name}.step_sizes contains h = {h}: with horizon {problem.horizon} and "
                        f"β = {self.beta}, K = round(T/h) steps must span more than the lag τ = hβ/(1 − β); "
                        "allowed: smaller h"
                    )
        return self


def _toy_problem(settings: Settings) -> tuple[Loss, Tensor]:
    toy = settings.toy
    return scalar_product_loss(toy.input, toy.target), torch.tensor(toy.start, dtype=torch.float64)


def _network_problem(settings: Settings, seed: int) -> tuple[Loss, Tensor]:
    """The network's loss on its teacher's data and θ_0, both drawn from one generator seeded by `seed`."""
    generator = torch.Generator().manual_seed(seed)
    data = tanh_teacher_data(settings.network.points, settings.network.teacher_width, generator, INPUT_DIM)
    network = TanhNetwork(INPUT_DIM, settings.network.width)
    return network.mse_loss(data.inputs, data.targets), network.initial_parameters(generator)


def _sharpness(loss: Loss, point: Tensor, seed: int, tolerance: float) -> tuple[float, int]:
    """(top Hessian eigenvalue of E at `point`, Hessian-vector products used), by Lanczos."""
    generator = torch.Generator().manual_seed(seed)
    result = top_eigenvalues(
        flat_loss_hvp(loss, point), point.numel(), k=1, tol=tolerance, generator=generator
    )
    return result.eigenvalues[0].item(), result.hvp_count


def _regularizer_study(loss: Loss, start: Tensor, seed: int, settings: Settings) -> pd.DataFrame:
    """Heavy ball (h, β), GD on E + λ_IGR-M‖∇E‖² and GD, both GDs at η = h/(1 − β), at log-spaced steps."""
    h, beta, steps = settings.regularizer.step, settings.regularizer.beta, settings.regularizer.steps
    effective = h / (1 - beta)  # η
    strength = igr_m_strength(h, beta)  # λ = (1 + β)h/(4(1 − β)²)
    record = sorted({0, steps, *(int(k) for k in np.geomspace(1, steps, settings.regularizer.checkpoints))})
    runs = {
        "GD+M": heavy_ball_iterates(loss, start, h, beta, steps, record),
        "GD + λ‖∇E‖²": heavy_ball_iterates(
            regularized_loss(loss, strength), start, effective, 0.0, steps, record
        ),
        "GD": heavy_ball_iterates(loss, start, effective, 0.0, steps, record),
    }
    rows = []
    for method, iterates in runs.items():
        for step, point in zip(record, iterates):
            top, hvp_count = _sharpness(loss, point, seed, settings.regularizer.sharpness_tolerance)
            rows.append(
                {
                    "method": method,
                    "seed": seed,
                    "step": step,
                    "loss": loss(point).item(),
                    "gradient_norm": gradient(loss, point).norm().item(),
                    "sharpness": top,
                    "sharpness_hvps": hvp_count,
                    "distance_to_gdm": (point - runs["GD+M"][record.index(step)]).norm().item(),
                }
            )
    return pd.DataFrame(rows)


def measure(settings: Settings, store: RunStore) -> Tables:
    """The order studies of the toy and of the network for every seed, each from both heavy-ball starts;
    the regularizer study for every seed; the ODE solver's error at the smallest step sizes (first seed)."""
    beta, tolerances = settings.beta, (settings.rtol, settings.atol)
    toy_loss, toy_start = _toy_problem(settings)
    toy = settings.toy
    toy_distances = pd.DataFrame(
        order_study(toy_loss, toy_start, toy.step_sizes, toy.horizon, beta, *tolerances, STARTS)
    )
    network = settings.network
    network_distances, regularizer = [], []
    for seed in settings.seeds:
        loss, start = _network_problem(settings, seed)
        distances = pd.DataFrame(
            order_study(loss, start, network.step_sizes, network.horizon, beta, *tolerances, STARTS)
        )
        distances.insert(0, "seed", seed)
        network_distances.append(distances)
        regularizer.append(_regularizer_study(loss, start, seed, settings))
    loss, start = _network_problem(settings, settings.seeds[0])
    solver = [
        ("toy", toy_loss, toy_start, min(toy.step_sizes), toy.horizon),
        ("network", loss, start, min(network.step_sizes), network.horizon),
    ]
    return {
        "toy_distances": toy_distances,
        "network_distances": pd.concat(network_distances, ignore_index=True),
        "regularizer": pd.concat(regularizer, ignore_index=True),
        "solver_error": pd.DataFrame(
            [
                {"problem": name, "h": h, "error": solver_error(f, x0, h, horizon, beta, *tolerances)}
                for name, f, x0, h, horizon in solver
            ]
        ),
    }


def _order(frame: pd.DataFrame, column: str) -> float:
    return fitted_order(frame["h"], frame[column])


def _started(frame: pd.DataFrame, start: Start) -> pd.DataFrame:
    """The rows of one heavy-ball start."""
    return frame[frame["start"] == start]


def _network_orders(tables: Tables, column: str, start: Start = PROTOCOL) -> dict[int, float]:
    """The fitted order of a distance column for every seed, heavy ball started at `start`."""
    frame = _started(tables["network_distances"], start)
    return {int(seed): _order(rows, column) for seed, rows in frame.groupby("seed")}


def _over_seeds(
    id: str, statement: str, orders: dict[int, float], threshold: float, comparison: Comparison
) -> Claim:
    """A claim on the mean fitted order over seeds, with its bootstrap interval and the orders per seed."""
    return Claim.from_estimate(
        id, statement, bootstrap_mean(list(orders.values())), threshold, comparison, {"per_seed": orders}
    )


def toy_igr_m_order_2(settings: Settings, tables: Tables) -> Claim:
    """On the toy, heavy ball started on its slow manifold is O(h²)-close to the IGR-M flow at the horizon.

    References: Ghosh et al. (ICLR 2023), IGR-M (SPEC §2) — heavy ball is O(h²)-close on a fixed horizon
    to x' = −(1/(1−β))∇[E + (1+β)h/(4(1−β)²)‖∇E‖²]."""
    return Claim(
        "toy-igr-m-order-2",
        f"toy, heavy ball started on its slow manifold: distance at T to the IGR-M flow has order ≥ "
        f"{ORDER_TWO} in h (fitted log–log slope)",
        _order(_started(tables["toy_distances"], PROTOCOL), "igr_m_horizon"),
        ORDER_TWO,
        ">=",
        {"at_rest": _order(_started(tables["toy_distances"], "rest"), "igr_m_horizon")},
    )


def toy_plain_order_1(settings: Settings, tables: Tables) -> Claim:
    """On the toy, heavy ball is only O(h)-close to the plain flow.

    References: Ghosh et al. (ICLR 2023), SPEC §2 (after Kovachki & Stuart) — heavy ball is O(h)-close
    to x' = −∇E/(1−β); SPEC §2's toy distances 7.1e-2, 3.6e-2, 1.8e-2."""
    return Claim(
        "toy-plain-order-1",
        f"toy, slow-manifold start: distance at T to the plain flow −∇E/(1−β) has order ≤ {ORDER_ONE}",
        _order(_started(tables["toy_distances"], PROTOCOL), "plain_horizon"),
        ORDER_ONE,
        "<=",
        {"at_rest": _order(_started(tables["toy_distances"], "rest"), "plain_horizon")},
    )


def network_igr_m_order_2(settings: Settings, tables: Tables) -> Claim:
    """On the network, heavy ball started on its slow manifold is O(h²)-close to the IGR-M flow at T.

    References: Ghosh et al. (ICLR 2023), IGR-M (SPEC §2) — O(h²)-closeness on a fixed horizon, for any
    smooth loss."""
    return _over_seeds(
        "network-igr-m-order-2",
        f"network, slow-manifold start: distance at T to the IGR-M flow has order ≥ {ORDER_TWO} "
        "(mean over seeds, 95% bootstrap interval)",
        _network_orders(tables, "igr_m_horizon"),
        ORDER_TWO,
        ">=",
    )


def network_plain_order_1(settings: Settings, tables: Tables) -> Claim:
    """On the network, heavy ball is only O(h)-close to the plain flow.

    References: Ghosh et al. (ICLR 2023), SPEC §2 — heavy ball is O(h)-close to x' = −∇E/(1−β)."""
    return _over_seeds(
        "network-plain-order-1",
        f"network, slow-manifold start: distance at T to the plain flow has order ≤ {ORDER_ONE} "
        "(mean over seeds, 95% bootstrap interval)",
        _network_orders(tables, "plain_horizon"),
        ORDER_ONE,
        "<=",
    )


def network_igr_m_lagged_order_2(settings: Settings, tables: Tables) -> Claim:
    """On the network, heavy ball started at rest is O(h²)-close to the IGR-M flow once its lag is removed.

    References: Ghosh et al. (ICLR 2023), IGR-M (SPEC §2), with the at-rest start's lag τ = hβ/(1−β)
    (momentumlab.probes.flows) — the distance to the IGR-M flow at T − τ is O(h²)."""
    return _over_seeds(
        "network-igr-m-lagged-order-2",
        f"network, at-rest start (variant): distance to the IGR-M flow at T − τ, τ = hβ/(1−β), has order "
        f"≥ {ORDER_TWO} (mean over seeds, 95% bootstrap interval)",
        _network_orders(tables, "igr_m_lagged", "rest"),
        ORDER_TWO,
        ">=",
    )


def regularizer_closer_to_gdm(settings: Settings, tables: Tables) -> Claim:
    """GD with the explicit IGR-M regularizer ends closer to heavy ball than plain GD.

    References: Ghosh et al. (ICLR 2023), IGR-M (SPEC §2) — heavy ball implicitly minimizes
    E + (1+β)h/(4(1−β)²)‖∇E‖², so adding that term to GD at the effective step h/(1−β) imitates it."""
    regularizer = tables["regularizer"]
    final = regularizer[regularizer["step"] == regularizer["step"].max()].set_index(["seed", "method"])
    ratios = {
        int(seed): float(
            final.loc[(seed, "GD + λ‖∇E‖²"), "distance_to_gdm"] / final.loc[(seed, "GD"), "distance_to_gdm"]
        )
        for seed in settings.seeds
    }
    return _over_seeds(
        "regularizer-closer-to-gdm",
        "network: GD on E + λ_IGR-M‖∇E‖² ends closer to heavy ball than plain GD "
        "at the same effective step (distance ratio < 1, mean over seeds, 95% bootstrap interval)",
        ratios,
        1.0,
        "<",
    )


CLAIMS = (
    toy_igr_m_order_2,
    toy_plain_order_1,
    network_igr_m_order_2,
    network_plain_order_1,
    network_igr_m_lagged_order_2,
    regularizer_closer_to_gdm,
)


def _matches_spec(settings: Settings) -> bool:
    """Whether the toy study is in SPEC §2's setting, so that SPEC's distances can be shown beside ours."""
    toy = SPEC_SETTING["toy"]
    return settings.beta == SPEC_SETTING["beta"] and all(
        getattr(settings.toy, k) == v for k, v in toy.items()
    )


SERIES = {  # column → (label, color, marker, line style)
    "igr_m_horizon": ("IGR-M flow, at T", COLORS["IGR-M"], "o", "-"),
    "plain_horizon": ("plain flow, at T", COLORS["plain"], "s", "-"),
    "igr_m_lagged": ("IGR-M flow, at T − τ", COLORS["IGR-M lagged"], "^", "-"),
    "igr_m_max": ("IGR-M flow, max over k ≤ T/h", COLORS["IGR-M"], "o", ":"),
    "plain_max": ("plain flow, max over k ≤ T/h", COLORS["plain"], "s", ":"),
    "lag_term": ("τ‖x̃′(T)‖ (lag term)", "gray", "", "--"),
}
LAG_COLUMNS = ("igr_m_lagged", "lag_term")  # only the at-rest start has a lag


def _columns(start: Start) -> list[str]:
    """The distance columns that carry information for a start (on the slow manifold τ = 0)."""
    return [column for column in SERIES if start == "rest" or column not in LAG_COLUMNS]


def _plot_orders(settings: Settings, tables: Tables, path: Path) -> Path:
    """Log–log distance against h, each series with its least-squares slope: one row per problem (the toy,
    then the network per seed), one column per start (the protocol's first); SPEC §2's values on the toy
    at rest where the setting is SPEC's."""
    problems = [(f"toy E = ½(y − w1 w2 x)², T = {settings.toy.horizon:g}", tables["toy_distances"])] + [
        (f"tanh network (MSE), seed {seed}, T = {settings.network.horizon:g}", frame)
        for seed, frame in tables["network_distances"].groupby("seed", sort=False)
    ]
    starts = (PROTOCOL, "rest")
    figure, axes = plt.subplots(len(problems), 2, figsize=(12, 6.2 * len(problems)), squeeze=False)
    if _matches_spec(settings):
        spec = sorted(SPEC_DISTANCES.items())
        steps = [h for h, _ in spec]
        axes[0, 1].loglog(steps, [d[0] for _, d in spec], "kx", markersize=10, label="SPEC §2, IGR-M")
        axes[0, 1].loglog(steps, [d[1] for _, d in spec], "k+", markersize=12, label="SPEC §2, plain")
    for row, (title, problem) in enumerate(problems):
        for axis, start in zip(axes[row], starts):
            frame = _started(problem, start)
            for column in _columns(start):
                label, color, marker, style = SERIES[column]
                axis.loglog(
                    frame["h"],
                    frame[column],
                    marker=marker,
                    linestyle=style,
                    color=color,
                    markerfacecolor="none" if style == ":" else color,
                    label=f"{label}: slope {_order(frame, column):.2f}",
                )
            role = "the protocol" if start == PROTOCOL else "variant, lag τ = hβ/(1−β)"
            axis.set_title(
                f"{title}\nheavy ball (β = {settings.beta}) started {START_NAMES[start]} ({role})",
                fontsize=10,
            )
            axis.set_xlabel("step size h")
            axis.set_xticks(list(frame["h"]))
            axis.xaxis.set_major_formatter(FormatStrFormatter("%g"))
            axis.xaxis.set_minor_locator(NullLocator())
            axis.set_ylabel("distance ‖x_k − x̃(kh)‖")
            axis.grid(alpha=0.3, which="both")
            axis.legend(fontsize=7.5, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2)
    return save_figure(figure, path)


def _plot_regularizer(settings: Settings, tables: Tables, path: Path) -> Path:
    """Loss, gradient norm, sharpness and distance to heavy ball against step for the three optimizers,
    on the first seed's network."""
    seed, regularizer = settings.seeds[0], settings.regularizer
    frame = tables["regularizer"][tables["regularizer"]["seed"] == seed]
    h, beta = regularizer.step, regularizer.beta
    figure, axes = plt.subplots(1, 4, figsize=(16, 3.9))
    panels = [
        ("loss", "training loss E", "log"),
        ("gradient_norm", "‖∇E‖", "log"),
        ("sharpness", "sharpness λ_max(∇²E)", "linear"),
        ("distance_to_gdm", "‖x − x_GD+M‖ at the same step", "log"),
    ]
    for axis, (column, quantity, scale) in zip(axes, panels):
        shown = frame[frame[column] > 0] if scale == "log" else frame  # GD+M's distance to itself is 0
        for method, rows in shown.groupby("method", sort=False):
            axis.plot(
                rows["step"], rows[column], marker="o", markersize=3, color=COLORS[method], label=method
            )
        axis.set_title(quantity, fontsize=10)
        axis.set_xlabel("step")
        axis.set_xscale("symlog", linthresh=10)
        axis.set_xlim(left=0)
        axis.set_yscale(scale)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.suptitle(
        f"Network, seed {seed}: heavy ball (h = {h:g}, β = {beta}) vs GD at η = h/(1−β) = "
        f"{h / (1 - beta):g}, with and without λ_IGR-M = {igr_m_strength(h, beta):.3g}"
    )
    return save_figure(figure, path)


def figures(settings: Settings, tables: Tables, out_dir: Path) -> list[Path]:
    """Distance against step size for every problem, and the regularizer study of the first seed."""
    return [
        _plot_orders(settings, tables, out_dir / "distance_vs_step.png"),
        _plot_regularizer(settings, tables, out_dir / "regularizer.png"),
    ]


def _order_table(frame: pd.DataFrame, start: Start, spec: bool) -> str:
    """Markdown table of an order study from one start; with `spec`, SPEC §2's distances beside ours."""

    def cell(h: float, index: int) -> str:
        return f"{SPEC_DISTANCES[h][index]:.1e}" if h in SPEC_DISTANCES else "—"

    frame, columns = _started(frame, start), _columns(start)
    names = {
        "igr_m_horizon": "IGR-M at T",
        "plain_horizon": "plain at T",
        "igr_m_max": "IGR-M max_k",
        "plain_max": "plain max_k",
        "igr_m_lagged": "IGR-M at T − τ",
        "lag_term": "τ‖x̃′(T)‖",
    }
    spec_index = {"igr_m_horizon": 0, "plain_horizon": 1} if spec else {}
    head = ["h", "K = T/h"]
    for column in columns:
        head += [names[column], *(["SPEC"] if column in spec_index else [])]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in frame.itertuples():
        cells = [f"{row.h:g}", f"{row.steps}"]
        for column in columns:
            cells += [f"{getattr(row, column):.2e}"]
            cells += [cell(row.h, spec_index[column])] if column in spec_index else []
        lines.append("| " + " | ".join(cells) + " |")
    cells = ["fitted slope", ""]
    for column in columns:
        cells += [f"{_order(frame, column):.2f}", *([""] if column in spec_index else [])]
    lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _slopes_table(tables: Tables) -> str:
    """The network's fitted orders per seed and start."""
    lines = [
        "| seed | start | IGR-M at T | plain at T | IGR-M at T − τ |",
        "|---|---|---|---|---|",
    ]
    for (seed, start), frame in tables["network_distances"].groupby(["seed", "start"], sort=False):
        lagged = f"{_order(frame, 'igr_m_lagged'):.2f}" if start == "rest" else "— (τ = 0)"
        lines.append(
            f"| {seed} | {START_NAMES[start]} | {_order(frame, 'igr_m_horizon'):.2f} | "
            f"{_order(frame, 'plain_horizon'):.2f} | {lagged} |"
        )
    return "\n".join(lines)


def _network_tables(settings: Settings, tables: Tables) -> str:
    """One heading and order table per seed and start."""
    network = settings.network
    parameters = TanhNetwork(INPUT_DIM, network.width).dim
    return "\n\n".join(
        f"#### Seed {seed}, heavy ball started {START_NAMES[start]}: {network.points} points, width "
        f"{network.width} ({parameters} parameters), β = {settings.beta}, T = {network.horizon}\n\n"
        + _order_table(frame, start, spec=False)
        for seed, frame in tables["network_distances"].groupby("seed", sort=False)
        for start in (PROTOCOL, "rest")
    )


def _regularizer_table(frame: pd.DataFrame) -> str:
    final = frame[frame["step"] == frame["step"].max()]
    lines = [
        "| seed | method | training loss | ‖∇E‖ | sharpness λ_max (HVPs) | ‖x − x_GD+M‖ |",
        "|---|---|---|---|---|---|",
    ]
    for row in final.itertuples():
        lines.append(
            f"| {row.seed} | {row.method} | {row.loss:.4e} | {row.gradient_norm:.3e} | "
            f"{row.sharpness:.4f} ({row.sharpness_hvps}) | {row.distance_to_gdm:.3e} |"
        )
    return "\n".join(lines)


def report(settings: Settings, tables: Tables) -> dict[str, str]:
    """The prose's values: tolerances, solver errors, the order tables and the regularizer table."""
    toy, regularizer = settings.toy, settings.regularizer
    h, beta = regularizer.step, regularizer.beta
    solver = tables["solver_error"].set_index("problem")["error"]
    return {
        "rtol": f"{settings.rtol:g}",
        "atol": f"{settings.atol:g}",
        "toy_solver_error": f"{solver['toy']:.1e}",
        "network_solver_error": f"{solver['network']:.1e}",
        "toy_setting": (
            f"x = {toy.input}, y = {toy.target}, start {toy.start}, β = {settings.beta}, T = {toy.horizon}"
        ),
        "toy_table": _order_table(tables["toy_distances"], PROTOCOL, spec=False),
        "toy_rest_table": _order_table(tables["toy_distances"], "rest", spec=_matches_spec(settings)),
        "slopes_table": _slopes_table(tables),
        "network_tables": _network_tables(settings, tables),
        "regularizer_setting": (
            f"heavy ball h = {h:g}, β = {beta} against GD at η = h/(1−β) = {h / (1 - beta):g}, with and "
            f"without λ_IGR-M = (1+β)h/(4(1−β)²) = {igr_m_strength(h, beta):.4g}, after {regularizer.steps} steps"
        ),
        "regularizer_table": _regularizer_table(tables["regularizer"]),
        "mismatch": f"{(1 - beta) / (1 + beta):.1%}",
    }


REPRODUCTION = Reproduction(
    name="heavy-ball-flow",
    title=(
        "Heavy ball follows its IGR-M modified flow to O(h²) "
        "(Ghosh et al., implicit regularization by momentum)"
    ),
    settings=Settings,
    measure=measure,
    claims=CLAIMS,
    figures=figures,
    report=report,
    prose=read_prose(__file__),
    single_thread=True,
)
