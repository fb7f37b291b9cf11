"""Reproduction `diffusion`: momentum escapes saddles 1/(1−μ) times faster and fluctuates 1/(1−μ) times
more at the optimum (Liu, Chen, Zhou, Zhao; SPEC §4).

Streaming PCA (:mod:`momentumlab.probes.diffusion`, d = 10 by default): MSGD on the sphere at one step η
for every μ, many independent runs in one batched computation per setting.

- *Escape*: every run starts exactly at the saddle e2 with zero velocity; the gradient noise alone
  pushes it off. The escape step is the first k with ⟨θ_k, e1⟩² ≥ ½. Compared with plain SGD at the
  effective step η/(1−μ), with the SDE dθ = −∇F/(1−μ) dt + (√η/(1−μ))Σ_g^{1/2} dW (Euler–Maruyama,
  time t = ηk, so its escape time t is reported as t/η iterations), and with the prediction from the
  linearized SDE and the ODE (median escape step, :meth:`StreamingPCA.median_escape_step`).
- *Mean path*: the alignment over iterations beside the ODE θ' = −∇F/(1−μ) (on the sphere) started
  from the median noise-driven displacement |Z| of the linearized SDE.
- *Stationary spread*: runs start at e1 and E[1 − a] is averaged over the runs and over the steps after
  a burn-in; predicted Σ_{j≥2} ηλ1λj/(2(λ1 − λj)(1 − μ)) (:meth:`StreamingPCA.stationary_spread`).
- *Annealing*: runs start at e1 with the largest μ and, after they reach its stationary spread, either
  keep (η, μ), anneal the step to η(1 − μ), or anneal the momentum to 0; plain SGD at η runs beside
  them. The final E[1 − a] (over the runs and the last stretch of steps) of each is compared with
  SGD's, seed by seed: every variant of one seed draws the same samples x_k (common random numbers),
  so the ratios are paired.

Simulations run in float32: on a CPU float32 normals are drawn ~5× faster than float64 ones, and its
precision (~1e-7) is far finer than every statistic here (E[1 − a] ≥ 1e-3, alignments to ½).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from pydantic import Field, field_validator

from momentumlab.claims import Claim
from momentumlab.experiments.reproduction import Reproduction, ReproductionSettings, Seeds, Tables, read_prose
from momentumlab.probes.diffusion import (
    StreamingPCA,
    Track,
    msgd,
    ode_alignment,
    pool,
    scheduled_msgd,
    sde,
    track,
)
from momentumlab.report import markdown_table, save_figure
from momentumlab.statistics import bootstrap_mean
from momentumlab.store import RunStore

SADDLE = 1  # start at e2: e1 is its only escape direction, with rate (λ1 − λ2)/(1 − μ)
ESCAPE_AGREEMENT = 0.25  # MSGD vs SGD at η/(1−μ)
SDE_AGREEMENT = 0.30
SPREAD_AGREEMENT = 0.30
RESTORED = 1 + SPREAD_AGREEMENT  # annealed final spread at most this many times SGD's
ANNEALING_STREAM = 1_000_000  # the annealing runs of seed s draw from seed s + this (not the others' stream)
# annealing variant → its (η, μ) after the anneal, as factors of (η, μ); SGD runs at (η, 0) throughout
ANNEALED = {"constant": (1.0, 1.0), "step annealed": (None, 1.0), "momentum annealed": (1.0, 0.0)}
ANNEALING_COLORS = {
    "SGD": "black",
    "constant": "#d1495b",
    "step annealed": "#00798c",
    "momentum annealed": "#edae49",
}
KINDS = {"msgd": "MSGD at η", "sgd": "SGD at η/(1−μ)", "sde": "SDE", "ode": "ODE from median |Z|"}
COLORS = ("#d1495b", "#edae49", "#00798c")  # one per μ, repeated beyond three
LINESTYLES = {"msgd": "-", "sgd": "--", "sde": ":"}

Momentum = Annotated[float, Field(ge=0, lt=1)]


class Settings(ReproductionSettings):
    """The streaming-PCA problem, the step and momenta, how many runs and how long each lasts."""

    seeds: Seeds = (0,)  # one generator per seed; every simulation of that seed draws from it in turn
    eigenvalues: tuple[float, ...] = (1.0, 0.5, 0.3, 0.25, 0.2, 0.16, 0.12, 0.09, 0.07, 0.05)  # λ: gap 0.5
    lr: float = Field(1e-3, gt=0)  # η(λ1 − λ2)/(1−μ)² ≤ 0.05: MSGD grows at e2 within ~5% of the SDE rate γ
    momenta: tuple[Momentum, ...] = Field((0.0, 0.5, 0.9), min_length=2)
    runs: int = Field(1000, gt=0)  # per seed and setting, from the saddle
    stationary_runs: int = Field(500, ge=2)  # per seed and setting, from the optimum
    horizon: float = Field(3.0, gt=0)  # escape runs last this many predicted median escape steps
    records: int = Field(200, gt=0)  # alignment rows kept per run (escape steps are checked every step)
    sde_step: float = Field(0.01, gt=0)  # Euler–Maruyama dt/(1 − μ) in t = ηk: γ dt = (λ1 − λ2)·0.01
    burn_in: float = Field(5.0, ge=0)  # in relaxation times (1 − μ)/(2η(λ1 − λ2)) of the slowest E[w_j²]
    stationary_length: float = Field(10.0, gt=0)  # recorded relaxation times after the burn-in
    annealing_seeds: Seeds = (0, 1, 2, 3, 4)  # the annealing runs' seeds, each a paired comparison
    annealing_runs: int = Field(200, ge=1)  # per annealing seed and variant, from the optimum

    @classmethod
    def smoke(cls) -> Settings:
        """η = 0.01 and few runs: seconds. Far from the diffusion limit (η(λ1−λ2)/(1−μ)² = 0.5 at μ = 0.9)."""
        return cls(
            lr=1e-2,
            runs=100,
            stationary_runs=50,
            records=50,
            sde_step=0.02,
            burn_in=3.0,
            stationary_length=4.0,
            annealing_seeds=(0, 1, 2),
            annealing_runs=50,
        )

    @field_validator("eigenvalues")
    @classmethod
    def _distinct_top_eigenvalue(cls, eigenvalues: tuple[float, ...]) -> tuple[float, ...]:
        _problem(eigenvalues)  # raises a ValueError naming the allowed values
        return eigenvalues

    @field_validator("momenta")
    @classmethod
    def _increasing(cls, momenta: tuple[float, ...]) -> tuple[float, ...]:
        if any(b <= a for a, b in itertools.pairwise(momenta)):
            raise ValueError("momenta must increase strictly (the claims compare successive μ)")
        return momenta

    def problem(self) -> StreamingPCA:
        """Streaming PCA with Σ = diag(λ), in float32 like every simulation here."""
        return _problem(self.eigenvalues)


def _problem(eigenvalues: tuple[float, ...]) -> StreamingPCA:
    return StreamingPCA(torch.tensor(eigenvalues, dtype=torch.float32))


def _record_grid(length: float, records: int) -> tuple[int, int]:
    """(steps, record_every): record_every = ⌈length/records⌉, steps = records·record_every ≥ length."""
    record_every = max(1, math.ceil(length / records))
    return record_every * records, record_every


def _quantile_rows(kind: str, mu: float, steps: torch.Tensor, alignment: torch.Tensor) -> pd.DataFrame:
    """Mean and quartiles over runs of the alignment at each recorded step."""
    quartiles = torch.quantile(alignment.double(), torch.tensor([0.25, 0.5, 0.75]).double(), dim=1)
    return pd.DataFrame(
        {
            "kind": kind,
            "momentum": mu,
            "step": steps.double().numpy(),
            "mean_alignment": alignment.double().mean(1).numpy(),
            "lower_quartile": quartiles[0].numpy(),
            "median_alignment": quartiles[1].numpy(),
            "upper_quartile": quartiles[2].numpy(),
        }
    )


def _per_run(kind: str, mu: float, seeds: tuple[int, ...], column: str, values: torch.Tensor) -> pd.DataFrame:
    """One row per run of pooled seeds (equally many runs each, in seed order)."""
    per_seed = len(values) // len(seeds)
    return pd.DataFrame(
        {
            "kind": kind,
            "momentum": mu,
            "seed": [seed for seed in seeds for _ in range(per_seed)],
            "run": list(range(per_seed)) * len(seeds),
            column: values.double().numpy(),
        }
    )


def measure(settings: Settings, store: RunStore) -> Tables:
    """Simulate every escape and stationary run (seconds; no stored runs), every seed's runs pooled."""
    problem, eta = settings.problem(), settings.lr
    gap = float(problem.eigenvalues[0] - problem.eigenvalues[SADDLE])
    saddle, optimum = problem.eigenvector(SADDLE), problem.eigenvector(0)
    escape: dict[tuple[str, float], list[Track]] = {}
    spread: dict[tuple[str, float], list[torch.Tensor]] = {}
    iteration: dict[tuple[str, float], float] = {}  # iterations per simulated step: 1, or dt/η for the SDE
    for seed in settings.seeds:
        generator = torch.Generator().manual_seed(seed)  # every simulation draws from it in turn
        for mu in settings.momenta:
            dt = settings.sde_step * (1 - mu)
            length = settings.horizon * problem.median_escape_step(eta, mu, SADDLE)  # in iterations
            relaxation = (1 - mu) / (2 * eta * gap)  # iterations for E[w_2²] to relax by e
            stationary = (settings.burn_in + settings.stationary_length) * relaxation
            start = saddle.expand(settings.runs, -1)
            runs = {"msgd": msgd(problem, start, eta, mu, generator)}
            if mu > 0:
                runs["sgd"] = msgd(problem, start, eta / (1 - mu), 0.0, generator)
            runs["sde"] = sde(problem, start, eta, mu, dt, generator)
            for kind, iterates in runs.items():
                iteration[kind, mu] = dt / eta if kind == "sde" else 1.0
                steps, every = _record_grid(length / iteration[kind, mu], settings.records)
                escape.setdefault((kind, mu), []).append(track(problem, start, iterates, steps, every))
            start = optimum.expand(settings.stationary_runs, -1)
            for kind, iterates in (
                ("msgd", msgd(problem, start, eta, mu, generator)),
                ("sde", sde(problem, start, eta, mu, dt, generator)),
            ):
                steps, every = _record_grid(stationary / iteration[kind, mu], settings.records)
                burn_in = settings.burn_in * relaxation / iteration[kind, mu]
                tracked = track(problem, start, iterates, steps, every)
                spread.setdefault((kind, mu), []).append(tracked.spread(burn_in))

    escape_rows, escape_runs, paths = [], [], []
    for (kind, mu), tracks in escape.items():
        pooled = pool(tracks)
        steps = pooled.escape * iteration[kind, mu]  # escape steps in iterations (SDE: t/η)
        low, high = torch.quantile(steps.double(), torch.tensor([0.25, 0.75]).double()).tolist()
        escape_rows.append(
            {
                "kind": kind,
                "momentum": mu,
                "median_step": float(steps.median()),  # the lower median; inf if over half never escaped
                "lower_quartile": low,
                "upper_quartile": high,
                "never_escaped": float(torch.isinf(steps).double().mean()),
            }
        )
        escape_runs.append(_per_run(kind, mu, settings.seeds, "escape_step", steps))
        if kind != "sgd":
            paths.append(
                _quantile_rows(kind, mu, pooled.steps.double() * iteration[kind, mu], pooled.alignment)
            )
        if kind == "msgd":
            times = pooled.steps.double() * eta  # t = ηk
            ode = ode_alignment(problem, problem.ode_escape_start(eta, mu, SADDLE), mu, times)
            paths.append(
                pd.DataFrame(
                    {
                        "kind": "ode",
                        "momentum": mu,
                        "step": pooled.steps.double().numpy(),
                        "mean_alignment": ode.numpy(),
                    }
                )
            )
    spread_rows, spread_runs = [], []
    for (kind, mu), parts in spread.items():
        values = torch.cat(parts).double()  # per run: the mean of 1 − a after the burn-in
        spread_rows.append(
            {
                "kind": kind,
                "momentum": mu,
                "mean_spread": float(values.mean()),
                "standard_error": float(values.std()) / math.sqrt(len(values)),
            }
        )
        spread_runs.append(_per_run(kind, mu, settings.seeds, "spread", values))
    return {
        "escape": pd.DataFrame(escape_rows),
        "escape_runs": pd.concat(escape_runs, ignore_index=True),
        "paths": pd.concat(paths, ignore_index=True),
        "spread": pd.DataFrame(spread_rows),
        "spread_runs": pd.concat(spread_runs, ignore_index=True),
        **measure_annealing(settings),
    }


def annealing_schedules(settings: Settings) -> tuple[dict[str, Callable[[int], tuple[float, float]]], int]:
    """{variant: k → (η_k, μ_k)} and the anneal step K1: the variants run (η, μ) with μ the largest momentum
    for K1 = burn_in relaxation times of that μ, then their annealed (η, μ); SGD runs (η, 0) throughout."""
    eta, mu = settings.lr, max(settings.momenta)
    gap = float(settings.problem().eigenvalues[0] - settings.problem().eigenvalues[SADDLE])
    anneal_at = math.ceil(settings.burn_in * (1 - mu) / (2 * eta * gap))
    schedules = {"SGD": lambda step: (eta, 0.0)}
    for variant, (lr_factor, momentum_factor) in ANNEALED.items():
        after = (eta * (1 - mu) if lr_factor is None else eta * lr_factor, mu * momentum_factor)
        schedules[variant] = lambda step, after=after: (eta, mu) if step < anneal_at else after
    return schedules, anneal_at


def measure_annealing(settings: Settings) -> Tables:
    """Every annealing variant and SGD from e1 for each annealing seed: per seed the final E[1 − a] (mean over
    runs and over the last `stationary_length` relaxation times of SGD at η), and the mean path."""
    problem, eta = settings.problem(), settings.lr
    gap = float(problem.eigenvalues[0] - problem.eigenvalues[SADDLE])
    schedules, anneal_at = annealing_schedules(settings)
    relaxation = 1 / (2 * eta * gap)  # SGD at η (and the step-annealed run): the slowest after the anneal
    length = anneal_at + (settings.burn_in + settings.stationary_length) * relaxation
    steps, every = _record_grid(length, settings.records)
    window = steps - settings.stationary_length * relaxation  # the final stretch: steps ≥ window
    start = problem.eigenvector(0).expand(settings.annealing_runs, -1)
    finals, paths = [], []
    for variant, schedule in schedules.items():
        tracks = []
        for seed in settings.annealing_seeds:
            generator = torch.Generator().manual_seed(
                seed + ANNEALING_STREAM
            )  # the same x_k for every variant
            tracks.append(
                track(problem, start, scheduled_msgd(problem, start, schedule, generator), steps, every)
            )
            finals.append(
                {
                    "variant": variant,
                    "seed": seed,
                    "final_spread": float(tracks[-1].spread(window).double().mean()),
                }
            )
        pooled = pool(tracks)
        paths.append(
            pd.DataFrame(
                {
                    "variant": variant,
                    "step": pooled.steps.double().numpy(),
                    "mean_spread": (1 - pooled.alignment.double()).mean(1).numpy(),
                }
            )
        )
    return {"annealing": pd.DataFrame(finals), "annealing_paths": pd.concat(paths, ignore_index=True)}


def _by_momentum(table: pd.DataFrame, kind: str, column: str) -> dict[float, float]:
    """{μ: value} of one kind's rows, in the order of the momenta."""
    rows = table[table["kind"] == kind]
    return dict(zip(rows["momentum"].tolist(), rows[column].tolist()))


def _medians(tables: Tables, kind: str) -> dict[float, float]:
    return _by_momentum(tables["escape"], kind, "median_step")


def _spreads(tables: Tables, kind: str) -> dict[float, float]:
    return _by_momentum(tables["spread"], kind, "mean_spread")


def escape_faster_with_momentum(settings: Settings, tables: Tables) -> Claim:
    """At the same step η, MSGD leaves the saddle sooner as μ grows.

    References: Liu, Chen, Zhou & Zhao (2018), abstract (SPEC §4, constants unverified) — near a saddle
    the rescaled fluctuation follows an Ornstein–Uhlenbeck-type SDE with drift and diffusion scaled by
    1/(1 − μ), so momentum escapes saddles about 1/(1 − μ) times faster."""
    medians = _medians(tables, "msgd")
    return Claim(
        "escape-faster-with-momentum",
        "at equal η, MSGD's median escape step falls as μ grows (max over successive μ of "
        "median(μ_{i+1}) / median(μ_i) < 1)",
        max(b / a for a, b in itertools.pairwise(medians.values())),
        1.0,
        "<",
        {str(mu): value for mu, value in medians.items()},
    )


def msgd_escape_matches_sgd_at_effective_step(settings: Settings, tables: Tables) -> Claim:
    """MSGD at η escapes the saddle like plain SGD at η/(1 − μ).

    References: Liu, Chen, Zhou & Zhao (2018), abstract (SPEC §4) — in the diffusion limit MSGD's drift
    and diffusion are those of SGD scaled by 1/(1 − μ), i.e. SGD at the effective step η/(1 − μ)."""
    msgd_medians, sgd_medians = _medians(tables, "msgd"), _medians(tables, "sgd")
    return Claim(
        "msgd-escape-matches-sgd-at-effective-step",
        f"MSGD's median escape step at η is within {ESCAPE_AGREEMENT:.0%} of SGD's at η/(1−μ) (max over "
        "μ > 0 of the relative difference)",
        max(abs(msgd_medians[mu] / sgd - 1) for mu, sgd in sgd_medians.items()),
        ESCAPE_AGREEMENT,
        "<=",
        {str(mu): {"msgd": msgd_medians[mu], "sgd": sgd} for mu, sgd in sgd_medians.items()},
    )


def sde_escape_matches_msgd(settings: Settings, tables: Tables) -> Claim:
    """The approximating SDE escapes the saddle when MSGD does.

    References: Liu, Chen, Zhou & Zhao (2018), abstract (SPEC §4) — MSGD is approximated by the
    diffusion dθ = −∇F/(1 − μ) dt + (√η/(1 − μ))Σ_g^{1/2} dW, whose escape times should match MSGD's."""
    msgd_medians, sde_medians = _medians(tables, "msgd"), _medians(tables, "sde")
    return Claim(
        "sde-escape-matches-msgd",
        f"the SDE's median escape time (t/η) is within {SDE_AGREEMENT:.0%} of MSGD's median escape step "
        "(max over μ of the relative difference)",
        max(abs(sde_medians[mu] / msgd - 1) for mu, msgd in msgd_medians.items()),
        SDE_AGREEMENT,
        "<=",
        {str(mu): {"msgd": msgd, "sde": sde_medians[mu]} for mu, msgd in msgd_medians.items()},
    )


def stationary_spread_grows_with_momentum(settings: Settings, tables: Tables) -> Claim:
    """Near the optimum, MSGD fluctuates more as μ grows.

    References: Liu, Chen, Zhou & Zhao (2018), abstract (SPEC §4) — near the optimum the stationary
    variance is about 1/(1 − μ) times SGD's, so momentum hurts the final accuracy without annealing."""
    spreads = _spreads(tables, "msgd")
    return Claim(
        "stationary-spread-grows-with-momentum",
        "near the optimum, E[1 − ⟨θ, e1⟩²] grows with μ (min over successive μ of "
        "spread(μ_{i+1}) / spread(μ_i) > 1)",
        min(b / a for a, b in itertools.pairwise(spreads.values())),
        1.0,
        ">",
        {str(mu): value for mu, value in spreads.items()},
    )


def stationary_spread_matches_prediction(settings: Settings, tables: Tables) -> Claim:
    """Near the optimum, MSGD's spread is the Ornstein–Uhlenbeck prediction.

    References: Liu, Chen, Zhou & Zhao (2018), abstract (SPEC §4) — the stationary variance
    ησ²/(2λ(1 − μ)) of a quadratic of curvature λ; summed over the directions e_j (j ≥ 2), with
    σ² = λ1λj and λ = λ1 − λj, it is Σ_j ηλ1λj/(2(λ1 − λj)(1 − μ))."""
    problem = settings.problem()
    spreads, sde_spreads = _spreads(tables, "msgd"), _spreads(tables, "sde")
    predicted = {mu: problem.stationary_spread(settings.lr, mu) for mu in spreads}
    return Claim(
        "stationary-spread-matches-prediction",
        f"near the optimum, E[1 − ⟨θ, e1⟩²] is within {SPREAD_AGREEMENT:.0%} of "
        "Σ_j ηλ1λj/(2(λ1 − λj)(1 − μ)) (max over μ of the relative difference)",
        max(abs(spreads[mu] / predicted[mu] - 1) for mu in spreads),
        SPREAD_AGREEMENT,
        "<=",
        {
            str(mu): {"measured": value, "predicted": predicted[mu], "sde": sde_spreads[mu]}
            for mu, value in spreads.items()
        },
    )


def _final_ratio(tables: Tables, variant: str) -> pd.Series:
    """Per annealing seed: the variant's final E[1 − a] over SGD's (the same samples x_k)."""
    finals = tables["annealing"].pivot(index="seed", columns="variant", values="final_spread")
    return finals[variant] / finals["SGD"]


def _annealing_detail(settings: Settings, tables: Tables, variant: str) -> dict:
    problem, eta, mu = settings.problem(), settings.lr, max(settings.momenta)
    return {
        "per seed": {str(seed): value for seed, value in _final_ratio(tables, variant).items()},
        "momentum": mu,
        "predicted ratio (constant: 1/(1−μ); annealed: 1)": (
            problem.stationary_spread(eta, mu if variant == "constant" else 0.0)
            / problem.stationary_spread(eta, 0.0)
        ),
    }


def _annealing_restores(variant: str, change: str):
    def annealing_restores(settings: Settings, tables: Tables) -> Claim:
        """Annealing MSGD near the optimum brings its final accuracy back to plain SGD's.

        References: Liu, Chen, Zhou & Zhao (2018), abstract — "the momentum helps escape from saddle
        points, but hurts the convergence within the neighborhood of optima (if without the step size
        annealing or momentum annealing)"; annealed, the 1/(1 − μ) excess of the stationary variance
        (SPEC §4) goes."""
        return Claim.from_estimate(
            f"{variant.replace(' ', '-')}-restores-final-accuracy",
            f"with {change} near the optimum, MSGD's final E[1 − ⟨θ, e1⟩²] is at most {RESTORED:g}× plain SGD's "
            "at η (mean over seeds of the paired ratio)",
            bootstrap_mean(_final_ratio(tables, variant).tolist()),
            RESTORED,
            "<=",
            _annealing_detail(settings, tables, variant),
        )

    return annealing_restores


def constant_momentum_hurts_final_accuracy(settings: Settings, tables: Tables) -> Claim:
    """Without annealing, MSGD ends farther from the optimum than plain SGD at the same step.

    References: Liu, Chen, Zhou & Zhao (2018), abstract — momentum "hurts the convergence within the
    neighborhood of optima (if without the step size annealing or momentum annealing)": the stationary
    variance is 1/(1 − μ) times SGD's (SPEC §4)."""
    return Claim.from_estimate(
        "constant-momentum-hurts-final-accuracy",
        f"with constant μ, MSGD's final E[1 − ⟨θ, e1⟩²] exceeds {RESTORED:g}× plain SGD's at η (mean over seeds "
        "of the paired ratio)",
        bootstrap_mean(_final_ratio(tables, "constant").tolist()),
        RESTORED,
        ">",
        _annealing_detail(settings, tables, "constant"),
    )


CLAIMS = (
    escape_faster_with_momentum,
    msgd_escape_matches_sgd_at_effective_step,
    sde_escape_matches_msgd,
    stationary_spread_grows_with_momentum,
    stationary_spread_matches_prediction,
    constant_momentum_hurts_final_accuracy,
    _annealing_restores("step annealed", "the step annealed to η(1 − μ)"),
    _annealing_restores("momentum annealed", "the momentum annealed to 0"),
)


def _momentum_ticks(axis: plt.Axes, momenta: tuple[float, ...]) -> None:
    axis.set_xscale("log")
    axis.set_xticks([1 - mu for mu in momenta], [f"{1 - mu:g}\n(μ = {mu})" for mu in momenta])
    axis.set_xlabel("1 − μ")


def _plot_escape(settings: Settings, tables: Tables, path: Path) -> Path:
    """ECDFs of the escape steps, and the medians against μ beside the prediction."""
    problem, momenta = settings.problem(), settings.momenta
    colors = dict(zip(momenta, itertools.cycle(COLORS)))
    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.6))
    for (kind, mu), rows in tables["escape_runs"].groupby(["kind", "momentum"], sort=False):
        steps = rows["escape_step"].to_numpy()
        ordered = np.sort(steps[np.isfinite(steps)])
        fraction = np.arange(1, len(ordered) + 1) / len(steps)
        left.step(
            ordered, fraction, where="post", color=colors[mu], linestyle=LINESTYLES[kind], linewidth=1.4
        )
    for mu in momenta:
        left.plot([], [], color=colors[mu], linewidth=6, label=f"μ = {mu}")
    for kind, style in LINESTYLES.items():
        label = f"{KINDS[kind]} (μ > 0)" if kind == "sgd" else KINDS[kind]
        left.plot([], [], color="black", linestyle=style, label=label)
    left.axhline(0.5, color="gray", linewidth=0.8)
    left.set_xscale("log")
    left.set_xlabel("escape step k (first ⟨θ_k, e1⟩² ≥ ½; SDE: t/η)")
    left.set_ylabel("fraction of runs escaped")
    left.set_title(f"escape from the saddle e2, η = {settings.lr:g}", fontsize=10)
    left.legend(fontsize=8, loc="upper left")
    left.grid(alpha=0.3)

    grid = torch.linspace(0, 0.95, 100).tolist()
    right.plot(
        [1 - mu for mu in grid],
        [problem.median_escape_step(settings.lr, mu, SADDLE) for mu in grid],
        color="black",
        linewidth=1,
        label="prediction (ODE from median |Z|)",
    )
    markers = {"msgd": ("o", 0.92, "#d1495b"), "sgd": ("s", 1.0, "#30638e"), "sde": ("^", 1.08, "#00798c")}
    for kind, (marker, offset, color) in markers.items():
        medians = _medians(tables, kind)
        right.plot(
            [(1 - mu) * offset for mu in medians],
            list(medians.values()),
            marker=marker,
            linestyle="none",
            markersize=8,
            markerfacecolor="none" if kind != "msgd" else None,
            color=color,
            label=KINDS[kind],
        )
    right.set_yscale("log")
    _momentum_ticks(right, momenta)
    right.set_ylabel("median escape step")
    right.set_title("median escape step: MSGD at η, SGD at η/(1−μ), SDE", fontsize=10)
    right.legend(fontsize=8)
    right.grid(alpha=0.3, which="both")
    return save_figure(figure, path)


def _plot_paths(settings: Settings, tables: Tables, path: Path) -> Path:
    """Mean and quartiles of the alignment from the saddle, the SDE's mean and the ODE path, per μ."""
    momenta = settings.momenta
    figure, axes = plt.subplots(1, len(momenta), figsize=(4.4 * len(momenta), 4.2), squeeze=False)
    paths = tables["paths"]
    for axis, mu in zip(axes[0], momenta):
        of_mu = paths[paths["momentum"] == mu]
        msgd_path, sde_path, ode_path = (of_mu[of_mu["kind"] == kind] for kind in ("msgd", "sde", "ode"))
        steps = msgd_path["step"]
        axis.fill_between(
            steps,
            msgd_path["lower_quartile"],
            msgd_path["upper_quartile"],
            color="#d1495b",
            alpha=0.2,
            label="MSGD quartiles",
        )
        axis.plot(steps, msgd_path["mean_alignment"], color="#d1495b", label="MSGD mean")
        axis.plot(
            steps,
            msgd_path["median_alignment"],
            color="#d1495b",
            linewidth=0.8,
            linestyle="-.",
            label="MSGD median",
        )
        axis.plot(
            sde_path["step"],
            sde_path["mean_alignment"],
            color="#00798c",
            linestyle=":",
            linewidth=2,
            label="SDE mean",
        )
        axis.plot(
            ode_path["step"],
            ode_path["mean_alignment"],
            color="black",
            linestyle="--",
            linewidth=1.2,
            label=KINDS["ode"],
        )
        axis.axhline(0.5, color="gray", linewidth=0.8)
        axis.set_title(f"μ = {mu}", fontsize=10)
        axis.set_xlabel("iteration k (SDE: t/η)")
        axis.set_ylim(-0.02, 1.02)
        axis.grid(alpha=0.3)
    axes[0, 0].set_ylabel("alignment ⟨θ_k, e1⟩²")
    axes[0, 0].legend(fontsize=8, loc="lower right")
    figure.suptitle(f"From the saddle e2 at η = {settings.lr:g}: alignment paths and the ODE θ' = −∇F/(1−μ)")
    return save_figure(figure, path)


def _plot_spread(settings: Settings, tables: Tables, path: Path) -> Path:
    """E[1 − a] near the optimum against 1 − μ with the prediction, and the relative deviation."""
    problem, momenta = settings.problem(), settings.momenta
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.3))
    grid = torch.logspace(math.log10(0.05), 0, 100).tolist()  # 1 − μ
    left.plot(
        grid,
        [problem.stationary_spread(settings.lr, 1 - g) for g in grid],
        color="black",
        linewidth=1.2,
        label="prediction Σ ηλ1λj/(2(λ1−λj)(1−μ))",
    )
    right.axhspan(-SPREAD_AGREEMENT, SPREAD_AGREEMENT, color="0.9", label=f"±{SPREAD_AGREEMENT:.0%} (claim)")
    right.axhline(0, color="black", linewidth=1)
    predicted = pd.Series([problem.stationary_spread(settings.lr, mu) for mu in momenta], index=momenta)
    for kind, color, marker, offset in (("msgd", "#d1495b", "o", 0.95), ("sde", "#00798c", "^", 1.05)):
        rows = tables["spread"][tables["spread"]["kind"] == kind].set_index("momentum")
        one_minus = (1 - rows.index.to_series()) * offset
        error = 2 * rows["standard_error"]
        reference = predicted[rows.index]
        options = {"color": color, "marker": marker, "linestyle": "none", "markersize": 7, "capsize": 3}
        left.errorbar(one_minus, rows["mean_spread"], yerr=error, label=KINDS[kind], **options)
        deviation = rows["mean_spread"] / reference - 1
        right.errorbar(one_minus, deviation, yerr=error / reference, label=KINDS[kind], **options)
    left.set_yscale("log")
    left.set_ylabel("E[1 − ⟨θ, e1⟩²] at stationarity")
    left.set_title("spread near the optimum e1 (error bars ±2 SE)", fontsize=10)
    right.set_ylabel("measured / predicted − 1")
    right.set_title("relative deviation from the prediction", fontsize=10)
    for axis in (left, right):
        _momentum_ticks(axis, momenta)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    return save_figure(figure, path)


def _plot_annealing(settings: Settings, tables: Tables, path: Path) -> Path:
    """Mean E[1 − a] against the step for every variant (pooled seeds), with the predicted levels, and the
    per-seed final ratios to SGD."""
    problem, eta, mu = settings.problem(), settings.lr, max(settings.momenta)
    _, anneal_at = annealing_schedules(settings)
    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.4))
    for variant, rows in tables["annealing_paths"].groupby("variant", sort=False):
        left.plot(
            rows["step"], rows["mean_spread"], color=ANNEALING_COLORS[variant], linewidth=1.2, label=variant
        )
    for level, label in (
        (problem.stationary_spread(eta, mu), f"prediction at μ = {mu}"),
        (problem.stationary_spread(eta, 0.0), "prediction at μ = 0 (and annealed)"),
    ):
        left.axhline(level, color="gray", linestyle="--", linewidth=0.8)
        left.annotate(label, (0, level), fontsize=7, va="bottom")
    left.axvline(anneal_at, color="gray", linewidth=0.8)
    left.set_xscale("symlog", linthresh=max(anneal_at, 1))
    left.set_xlim(left=0)
    left.set_yscale("log")
    left.set_xlabel("step k (annealed at the grey line)")
    left.set_ylabel("E[1 − ⟨θ_k, e1⟩²] (mean over runs and seeds)")
    left.set_title(f"from e1 at η = {eta:g}, μ = {mu}: constant vs annealed vs SGD", fontsize=10)
    left.legend(fontsize=8)
    left.grid(alpha=0.3)
    for position, variant in enumerate(ANNEALED):
        ratios = _final_ratio(tables, variant)
        right.plot([position] * len(ratios), ratios, "o", color=ANNEALING_COLORS[variant], alpha=0.7)
        estimate = bootstrap_mean(ratios.tolist())
        right.errorbar(
            position + 0.15,
            estimate.mean,
            yerr=[[estimate.mean - estimate.low], [estimate.high - estimate.mean]],
            color="black",
            marker="s",
            capsize=4,
        )
    right.axhline(RESTORED, color="gray", linestyle="--", linewidth=1, label=f"{RESTORED:g} (claims)")
    right.axhline(1 / (1 - mu), color="#d1495b", linestyle=":", linewidth=1, label="1/(1−μ)")
    right.set_xticks(range(len(ANNEALED)), list(ANNEALED))
    right.set_yscale("log")
    right.set_ylabel("final E[1 − a] / SGD's")
    right.set_title("final spread over plain SGD's, per seed (square: mean, 95% interval)", fontsize=10)
    right.legend(fontsize=8)
    right.grid(alpha=0.3, which="both")
    return save_figure(figure, path)


def figures(settings: Settings, tables: Tables, out_dir: Path) -> list[Path]:
    """Escape times, alignment paths from the saddle, the stationary spread against 1 − μ, and annealing."""
    return [
        _plot_escape(settings, tables, out_dir / "escape_times.png"),
        _plot_paths(settings, tables, out_dir / "alignment_paths.png"),
        _plot_spread(settings, tables, out_dir / "stationary_spread.png"),
        _plot_annealing(settings, tables, out_dir / "annealing.png"),
    ]


def _escape_table(settings: Settings, tables: Tables) -> str:
    """Median [quartiles] escape step per μ and kind, beside the prediction and SPEC's scale."""
    problem, eta = settings.problem(), settings.lr
    gap = float(problem.eigenvalues[0] - problem.eigenvalues[SADDLE])
    cells = {
        (
            row.kind,
            row.momentum,
        ): f"{row.median_step:.0f} [{row.lower_quartile:.0f}, {row.upper_quartile:.0f}]"
        + (f", {row.never_escaped:.1%} never" if row.never_escaped else "")
        for row in tables["escape"].itertuples()
    }
    rows = [
        {
            "μ": mu,
            KINDS["msgd"]: cells["msgd", mu],
            KINDS["sgd"]: cells.get(("sgd", mu), "= MSGD"),
            "SDE (t/η)": cells["sde", mu],
            "prediction": f"{problem.median_escape_step(eta, mu, SADDLE):.0f}",
            "SPEC scale (1−μ)log(1/η)/(η(λ1−λ2))": f"{(1 - mu) * math.log(1 / eta) / (eta * gap):.0f}",
        }
        for mu in settings.momenta
    ]
    return markdown_table(pd.DataFrame(rows))


def _spread_table(settings: Settings, tables: Tables) -> str:
    """Mean ± standard error of E[1 − a] per μ, MSGD and SDE, beside the prediction."""
    problem, momenta = settings.problem(), settings.momenta
    cells = {
        (row.kind, row.momentum): f"{row.mean_spread:.3e} ± {row.standard_error:.1e}"
        for row in tables["spread"].itertuples()
    }
    spreads = _spreads(tables, "msgd")
    rows = []
    for mu in momenta:
        predicted = problem.stationary_spread(settings.lr, mu)
        rows.append(
            {
                "μ": mu,
                "MSGD": cells["msgd", mu],
                "SDE": cells["sde", mu],
                "prediction": f"{predicted:.3e}",
                "MSGD / prediction − 1": f"{spreads[mu] / predicted - 1:+.1%}",
                f"MSGD spread(μ) / spread({momenta[0]})": f"{spreads[mu] / spreads[momenta[0]]:.3f}",
                "1/(1−μ)": f"{1 / (1 - mu):.3f}",
            }
        )
    return markdown_table(pd.DataFrame(rows))


def _annealing_table(settings: Settings, tables: Tables) -> str:
    """Final E[1 − a] per variant (mean over seeds) and its ratio to SGD's with the 95% interval."""
    finals = tables["annealing"].groupby("variant", sort=False)["final_spread"].mean()
    problem, eta, mu = settings.problem(), settings.lr, max(settings.momenta)
    _, anneal_at = annealing_schedules(settings)
    rows = []
    for variant, (lr_factor, momentum_factor) in {"SGD": (1.0, 0.0), **ANNEALED}.items():
        after_lr = eta * (1 - mu) if lr_factor is None else eta * lr_factor
        after_mu = mu * momentum_factor
        ratio = bootstrap_mean(_final_ratio(tables, variant).tolist())
        rows.append(
            {
                "variant": variant,
                "(η, μ) before → after step " + str(anneal_at): (
                    f"({eta:g}, 0)" if variant == "SGD" else f"({eta:g}, {mu}) → ({after_lr:g}, {after_mu:g})"
                ),
                "final E[1 − a]": f"{finals[variant]:.3e}",
                "predicted": f"{problem.stationary_spread(after_lr, after_mu):.3e}",
                "ratio to SGD [95% interval]": f"{ratio.mean:.3f} [{ratio.low:.3f}, {ratio.high:.3f}]",
            }
        )
    return markdown_table(pd.DataFrame(rows))


def report(settings: Settings, tables: Tables) -> dict[str, str]:
    _, anneal_at = annealing_schedules(settings)
    return {
        "annealing_table": _annealing_table(settings, tables),
        "annealing_seeds": str(list(settings.annealing_seeds)),
        "annealing_runs": str(settings.annealing_runs),
        "anneal_at": str(anneal_at),
        "top_momentum": str(max(settings.momenta)),
        "dimension": str(len(settings.eigenvalues)),
        "eigenvalues": str(list(settings.eigenvalues)),
        "lr": f"{settings.lr:g}",
        "momenta": ", ".join(map(str, settings.momenta)),
        "runs": str(settings.runs),
        "horizon": f"{settings.horizon:g}",
        "stationary_runs": str(settings.stationary_runs),
        "burn_in": f"{settings.burn_in:g}",
        "stationary_length": f"{settings.stationary_length:g}",
        "seeds": str(list(settings.seeds)),
        "total_runs": str(len(settings.seeds) * settings.runs),
        "sde_step": f"{settings.sde_step:g}",
        "escape_table": _escape_table(settings, tables),
        "spread_table": _spread_table(settings, tables),
    }


REPRODUCTION = Reproduction(
    name="diffusion",
    title="Momentum SGD's diffusion limit: faster saddle escape, larger spread at the optimum (Liu et al.)",
    settings=Settings,
    measure=measure,
    claims=CLAIMS,
    figures=figures,
    report=report,
    prose=read_prose(__file__),
    single_thread=True,  # (runs, d) tensors with d = 10: one thread is faster than a pool
)
