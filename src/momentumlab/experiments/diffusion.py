"""Reproduction `diffusion`: momentum escapes saddles 1/(1−μ) times faster and fluctuates 1/(1−μ) times
more at the optimum (Liu, Chen, Zhou, Zhao; SPEC §4).

Streaming PCA in d = 10 (:mod:`momentumlab.probes.diffusion`): MSGD on the sphere at one step η for
μ ∈ {0, 0.5, 0.9}, many independent runs in one batched computation per setting.

- *Escape*: every run starts exactly at the saddle e2 with zero velocity; the gradient noise alone
  pushes it off. The escape step is the first k with ⟨θ_k, e1⟩² ≥ ½. Compared with plain SGD at the
  effective step η/(1−μ), with the SDE dθ = −∇F/(1−μ) dt + (√η/(1−μ))Σ_g^{1/2} dW (Euler–Maruyama,
  time t = ηk, so its escape time t is reported as t/η iterations), and with the prediction from the
  linearized SDE and the ODE (median escape step, :meth:`StreamingPCA.median_escape_step`).
- *Mean path*: the alignment over iterations beside the ODE θ' = −∇F/(1−μ) (on the sphere) started
  from the median noise-driven displacement |Z| of the linearized SDE.
- *Stationary spread*: runs start at e1 and E[1 − a] is averaged over the runs and over the steps after
  a burn-in; predicted Σ_{j≥2} ηλ1λj/(2(λ1 − λj)(1 − μ)) (:meth:`StreamingPCA.stationary_spread`).

Simulations run in float32: on a CPU float32 normals are drawn ~5× faster than float64 ones, and its
precision (~1e-7) is far finer than every statistic here (E[1 − a] ≥ 1e-3, alignments to ½).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
from torch import Tensor

from momentumlab import atomic
from momentumlab.claims import Claim
from momentumlab.experiments.base import ReproductionOptions, ReproductionResult, ignored_overrides_note
from momentumlab.probes.diffusion import (
    MEDIAN_ABS_NORMAL,
    StreamingPCA,
    Track,
    msgd,
    ode_alignment,
    sde,
    track,
)
from momentumlab.report import claims_table, save_figure
from momentumlab.store import RunStore
from momentumlab.threads import single_thread

NAME = "diffusion"
TITLE = "Momentum SGD's diffusion limit: faster saddle escape, larger spread at the optimum (Liu et al.)"
EIGENVALUES = (1.0, 0.5, 0.3, 0.25, 0.2, 0.16, 0.12, 0.09, 0.07, 0.05)  # λ: one gap λ1 − λ2 = 0.5 to e2
SADDLE = 1  # start at e2: e1 is its only escape direction, with rate (λ1 − λ2)/(1 − μ)
DEFAULT_SEEDS = (0,)
ESCAPE_AGREEMENT = 0.25  # MSGD vs SGD at η/(1−μ)
SDE_AGREEMENT = 0.30
SPREAD_AGREEMENT = 0.30
MSGD, SGD, SDE = "MSGD at η", "SGD at η/(1−μ)", "SDE"
COLORS = ("#d1495b", "#edae49", "#00798c")  # one per μ
LINESTYLES = {MSGD: "-", SGD: "--", SDE: ":"}


@dataclass(frozen=True)
class Settings:
    """Every size the reproduction uses; tests pass a smaller one as `run(..., settings=...)`."""

    lr: float = 1e-3  # η(λ1 − λ2)/(1−μ)² ≤ 0.05: MSGD grows at e2 within ~5% of the SDE rate γ
    momenta: tuple[float, ...] = (0.0, 0.5, 0.9)
    runs: int = 1000  # per seed and setting, from the saddle
    stationary_runs: int = 500  # per seed and setting, from the optimum
    horizon: float = 3.0  # escape runs last this many predicted median escape steps
    records: int = 200  # alignment rows kept per escape run (escape steps are checked every step)
    sde_step: float = 0.01  # Euler–Maruyama dt/(1 − μ) in t = ηk: γ dt = (λ1 − λ2)·0.01 = 0.005
    burn_in: float = 5.0  # in relaxation times (1 − μ)/(2η(λ1 − λ2)) of the slowest E[w_j²]
    stationary_length: float = 10.0  # recorded relaxation times after the burn-in


def streaming_pca() -> StreamingPCA:
    return StreamingPCA(torch.tensor(EIGENVALUES, dtype=torch.float32))


def _steps(length: float, records: int) -> tuple[int, int]:
    """(steps, record_every): record_every = ⌈length/records⌉, steps = records·record_every ≥ length."""
    record_every = max(1, math.ceil(length / records))
    return record_every * records, record_every


def _pool(tracks: list[Track]) -> Track:
    """Tracks of independent runs on the same record grid, as one."""
    return Track(
        torch.cat([t.alignment for t in tracks], 1),
        torch.cat([t.escape for t in tracks]),
        tracks[0].record_every,
    )


@dataclass(frozen=True)
class Measured:
    escape: dict[tuple[str, float], Track]  # (MSGD | SGD | SDE, μ) → runs from the saddle
    spread: dict[tuple[str, float], Tensor]  # (MSGD | SDE, μ) → per-run mean of 1 − a at stationarity
    iteration: dict[tuple[str, float], float]  # iterations per simulated step: 1, or dt/η for the SDE


def _simulate(problem: StreamingPCA, seeds: tuple[int, ...], settings: Settings) -> Measured:
    """All escape and stationary runs, every seed's runs pooled."""
    eta = settings.lr
    gap = float(problem.eigenvalues[0] - problem.eigenvalues[SADDLE])
    saddle, optimum = problem.eigenvector(SADDLE), problem.eigenvector(0)
    escape: dict[tuple[str, float], list[Track]] = {}
    spread: dict[tuple[str, float], list[Tensor]] = {}
    iteration: dict[tuple[str, float], float] = {}
    for seed in seeds:
        generator = torch.Generator().manual_seed(seed)  # every simulation draws from it in turn
        for mu in settings.momenta:
            dt = settings.sde_step * (1 - mu)
            length = settings.horizon * problem.median_escape_step(eta, mu, SADDLE)  # in iterations
            relaxation = (1 - mu) / (2 * eta * gap)  # iterations for E[w_2²] to relax by e
            stationary = (settings.burn_in + settings.stationary_length) * relaxation
            start = saddle.expand(settings.runs, -1)
            runs = {MSGD: msgd(problem, start, eta, mu, generator)}
            if mu > 0:
                runs[SGD] = msgd(problem, start, eta / (1 - mu), 0.0, generator)
            runs[SDE] = sde(problem, start, eta, mu, dt, generator)
            for kind, iterates in runs.items():
                iteration[kind, mu] = dt / eta if kind == SDE else 1.0
                steps, every = _steps(length / iteration[kind, mu], settings.records)
                escape.setdefault((kind, mu), []).append(track(problem, start, iterates, steps, every))
            start = optimum.expand(settings.stationary_runs, -1)
            for kind, iterates in (
                (MSGD, msgd(problem, start, eta, mu, generator)),
                (SDE, sde(problem, start, eta, mu, dt, generator)),
            ):
                steps, every = _steps(stationary / iteration[kind, mu], settings.records)
                burn_in = settings.burn_in * relaxation / iteration[kind, mu]
                tracked = track(problem, start, iterates, steps, every)
                spread.setdefault((kind, mu), []).append(tracked.spread(burn_in))
    return Measured(
        {key: _pool(tracks) for key, tracks in escape.items()},
        {key: torch.cat(parts).double() for key, parts in spread.items()},
        iteration,
    )


def _median(measured: Measured, kind: str, mu: float) -> float:
    """Lower median escape step (iterations; inf if over half the runs never escaped)."""
    return float(measured.escape[kind, mu].escape.median()) * measured.iteration[kind, mu]


def _ode_start(problem: StreamingPCA, lr: float, mu: float) -> Tensor:
    """cos·e2 + u0·e1 with u0 = median |Z|: the ODE's start that the linearized SDE calls typical."""
    u0 = MEDIAN_ABS_NORMAL * problem.escape_scale(lr, mu, SADDLE)
    return math.sqrt(1 - u0**2) * problem.eigenvector(SADDLE).double() + u0 * problem.eigenvector(0).double()


def _plot_escape(problem: StreamingPCA, measured: Measured, settings: Settings, path: Path) -> Path:
    """ECDFs of the escape steps, and the medians against μ beside the prediction."""
    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.6))
    for mu, color in zip(settings.momenta, COLORS):
        for kind in (MSGD, SGD, SDE):
            if (kind, mu) not in measured.escape:
                continue
            steps = measured.escape[kind, mu].escape * measured.iteration[kind, mu]
            ordered = steps[torch.isfinite(steps)].sort().values
            fraction = torch.arange(1, len(ordered) + 1) / len(steps)
            left.step(ordered, fraction, where="post", color=color, linestyle=LINESTYLES[kind], linewidth=1.4)
    for mu, color in zip(settings.momenta, COLORS):
        left.plot([], [], color=color, linewidth=6, label=f"μ = {mu}")
    for kind, style in LINESTYLES.items():
        label = f"{kind} (μ > 0)" if kind == SGD else kind
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
        [1 - m for m in grid],
        [problem.median_escape_step(settings.lr, m, SADDLE) for m in grid],
        color="black",
        linewidth=1,
        label="prediction (ODE from median |Z|)",
    )
    markers = {MSGD: ("o", 0.92), SGD: ("s", 1.0), SDE: ("^", 1.08)}
    for kind, (marker, offset) in markers.items():
        momenta = [m for m in settings.momenta if (kind, m) in measured.escape]
        right.plot(
            [(1 - m) * offset for m in momenta],
            [_median(measured, kind, m) for m in momenta],
            marker=marker,
            linestyle="none",
            markersize=8,
            markerfacecolor="none" if kind != MSGD else None,
            color={MSGD: "#d1495b", SGD: "#30638e", SDE: "#00798c"}[kind],
            label=kind,
        )
    right.set_xscale("log")
    right.set_yscale("log")
    right.set_xticks([1 - m for m in settings.momenta], [f"{1 - m:g}\n(μ = {m})" for m in settings.momenta])
    right.set_xlabel("1 − μ")
    right.set_ylabel("median escape step")
    right.set_title("median escape step: MSGD at η, SGD at η/(1−μ), SDE", fontsize=10)
    right.legend(fontsize=8)
    right.grid(alpha=0.3, which="both")
    return save_figure(figure, path)


def _plot_paths(problem: StreamingPCA, measured: Measured, settings: Settings, path: Path) -> Path:
    """Mean and quartiles of the alignment from the saddle, the SDE's mean and the ODE path, per μ."""
    figure, axes = plt.subplots(1, len(settings.momenta), figsize=(4.4 * len(settings.momenta), 4.2))
    for axis, mu in zip(axes, settings.momenta):
        tracked = measured.escape[MSGD, mu]
        steps = tracked.steps.double()
        quartiles = torch.quantile(
            tracked.alignment.double(), torch.tensor([0.25, 0.5, 0.75]).double(), dim=1
        )
        axis.fill_between(
            steps, quartiles[0], quartiles[2], color="#d1495b", alpha=0.2, label="MSGD quartiles"
        )
        axis.plot(steps, tracked.alignment.double().mean(1), color="#d1495b", label="MSGD mean")
        axis.plot(steps, quartiles[1], color="#d1495b", linewidth=0.8, linestyle="-.", label="MSGD median")
        stochastic = measured.escape[SDE, mu]
        axis.plot(
            stochastic.steps * measured.iteration[SDE, mu],
            stochastic.alignment.double().mean(1),
            color="#00798c",
            linestyle=":",
            linewidth=2,
            label="SDE mean",
        )
        ode = ode_alignment(problem, _ode_start(problem, settings.lr, mu), mu, steps * settings.lr)
        axis.plot(steps, ode, color="black", linestyle="--", linewidth=1.2, label="ODE from median |Z|")
        axis.axhline(0.5, color="gray", linewidth=0.8)
        axis.set_title(f"μ = {mu}", fontsize=10)
        axis.set_xlabel("iteration k (SDE: t/η)")
        axis.set_ylim(-0.02, 1.02)
        axis.grid(alpha=0.3)
    axes[0].set_ylabel("alignment ⟨θ_k, e1⟩²")
    axes[0].legend(fontsize=8, loc="lower right")
    figure.suptitle(f"From the saddle e2 at η = {settings.lr:g}: alignment paths and the ODE θ' = −∇F/(1−μ)")
    return save_figure(figure, path)


def _plot_spread(
    problem: StreamingPCA, measured: Measured, settings: Settings, predicted: list[float], path: Path
) -> Path:
    """E[1 − a] near the optimum against 1 − μ with the prediction, and the relative deviation."""
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
    one_minus = torch.tensor([1 - m for m in settings.momenta])
    for kind, color, marker, offset in ((MSGD, "#d1495b", "o", 0.95), (SDE, "#00798c", "^", 1.05)):
        values = [measured.spread[kind, m] for m in settings.momenta]
        mean = torch.tensor([float(v.mean()) for v in values])
        error = torch.tensor([2 * float(v.std()) / math.sqrt(len(v)) for v in values])
        reference = torch.tensor(predicted)
        options = {"color": color, "marker": marker, "linestyle": "none", "markersize": 7, "capsize": 3}
        left.errorbar(one_minus * offset, mean, yerr=error, label=kind, **options)
        right.errorbar(
            one_minus * offset, mean / reference - 1, yerr=error / reference, label=kind, **options
        )
    left.set_yscale("log")
    left.set_ylabel("E[1 − ⟨θ, e1⟩²] at stationarity")
    left.set_title("spread near the optimum e1 (error bars ±2 SE)", fontsize=10)
    right.set_ylabel("measured / predicted − 1")
    right.set_title("relative deviation from the prediction", fontsize=10)
    for axis in (left, right):
        axis.set_xscale("log")
        axis.set_xlabel("1 − μ")
        axis.set_xticks(one_minus.tolist(), [f"{1 - m:g}\n(μ = {m})" for m in settings.momenta])
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    return save_figure(figure, path)


def run(
    store: RunStore, out_dir: Path, options: ReproductionOptions, settings: Settings = Settings()
) -> ReproductionResult:
    """Simulate (seconds; `store` is unused), then write the figures, claims.json and the report section."""
    seeds = options.seeds or DEFAULT_SEEDS
    problem = streaming_pca()
    momenta, eta = settings.momenta, settings.lr
    with single_thread():
        measured = _simulate(problem, seeds, settings)
    medians = {
        kind: {m: _median(measured, kind, m) for m in momenta if (kind, m) in measured.escape}
        for kind in (MSGD, SGD, SDE)
    }
    predicted_escape = {m: problem.median_escape_step(eta, m, SADDLE) for m in momenta}
    spread = {kind: {m: float(measured.spread[kind, m].mean()) for m in momenta} for kind in (MSGD, SDE)}
    spread_error = {
        kind: {
            m: float(measured.spread[kind, m].std()) / math.sqrt(len(measured.spread[kind, m]))
            for m in momenta
        }
        for kind in (MSGD, SDE)
    }
    predicted_spread = [problem.stationary_spread(eta, m) for m in momenta]
    msgd_vs_sgd = {m: medians[MSGD][m] / medians[SGD][m] - 1 for m in medians[SGD]}
    sde_vs_msgd = {m: medians[SDE][m] / medians[MSGD][m] - 1 for m in momenta}
    spread_vs_prediction = {m: spread[MSGD][m] / p - 1 for m, p in zip(momenta, predicted_spread)}

    def by_mu(values: dict[float, float]) -> dict[str, float]:
        return {str(m): v for m, v in values.items()}

    claims = [
        Claim(
            "escape-faster-with-momentum",
            "at equal η, MSGD's median escape step falls as μ grows (max over successive μ of "
            "median(μ_{i+1}) / median(μ_i) < 1)",
            max(b / a for a, b in itertools.pairwise(medians[MSGD].values())),
            1.0,
            "<",
            by_mu(medians[MSGD]),
        ),
        Claim(
            "msgd-escape-matches-sgd-at-effective-step",
            f"MSGD's median escape step at η is within {ESCAPE_AGREEMENT:.0%} of SGD's at η/(1−μ) (max over "
            "μ > 0 of the relative difference)",
            max(abs(v) for v in msgd_vs_sgd.values()),
            ESCAPE_AGREEMENT,
            "<=",
            {str(m): {"msgd": medians[MSGD][m], "sgd": medians[SGD][m]} for m in medians[SGD]},
        ),
        Claim(
            "sde-escape-matches-msgd",
            f"the SDE's median escape time (t/η) is within {SDE_AGREEMENT:.0%} of MSGD's median escape step "
            "(max over μ of the relative difference)",
            max(abs(v) for v in sde_vs_msgd.values()),
            SDE_AGREEMENT,
            "<=",
            {str(m): {"msgd": medians[MSGD][m], "sde": medians[SDE][m]} for m in momenta},
        ),
        Claim(
            "stationary-spread-grows-with-momentum",
            "near the optimum, E[1 − ⟨θ, e1⟩²] grows with μ (min over successive μ of "
            "spread(μ_{i+1}) / spread(μ_i) > 1)",
            min(b / a for a, b in itertools.pairwise(spread[MSGD].values())),
            1.0,
            ">",
            by_mu(spread[MSGD]),
        ),
        Claim(
            "stationary-spread-matches-prediction",
            f"near the optimum, E[1 − ⟨θ, e1⟩²] is within {SPREAD_AGREEMENT:.0%} of "
            "Σ_j ηλ1λj/(2(λ1 − λj)(1 − μ)) (max over μ of the relative difference)",
            max(abs(v) for v in spread_vs_prediction.values()),
            SPREAD_AGREEMENT,
            "<=",
            {
                str(m): {"measured": spread[MSGD][m], "predicted": p, "sde": spread[SDE][m]}
                for m, p in zip(momenta, predicted_spread)
            },
        ),
    ]

    out_dir.mkdir(parents=True, exist_ok=True)
    figures = [
        _plot_escape(problem, measured, settings, out_dir / "escape_times.png"),
        _plot_paths(problem, measured, settings, out_dir / "alignment_paths.png"),
        _plot_spread(problem, measured, settings, predicted_spread, out_dir / "stationary_spread.png"),
    ]
    atomic.write_json(out_dir / "claims.json", [claim.to_json() for claim in claims])

    gap = EIGENVALUES[0] - EIGENVALUES[SADDLE]

    def quartiles(kind: str, mu: float) -> str:
        steps = measured.escape[kind, mu].escape * measured.iteration[kind, mu]
        low, high = torch.quantile(steps.double(), torch.tensor([0.25, 0.75]).double()).tolist()
        never = float(torch.isinf(steps).double().mean())
        return f"{_median(measured, kind, mu):.0f} [{low:.0f}, {high:.0f}]" + (
            f", {never:.1%} never" if never else ""
        )

    escape_rows = [
        "| μ | MSGD at η | SGD at η/(1−μ) | SDE (t/η) | prediction | SPEC scale (1−μ)log(1/η)/(η(λ1−λ2)) |",
        "|---|---|---|---|---|---|",
    ]
    for m in momenta:
        sgd = quartiles(SGD, m) if (SGD, m) in measured.escape else "= MSGD"
        escape_rows.append(
            f"| {m} | {quartiles(MSGD, m)} | {sgd} | {quartiles(SDE, m)} | {predicted_escape[m]:.0f} "
            f"| {(1 - m) * math.log(1 / eta) / (eta * gap):.0f} |"
        )
    spread_rows = [
        "| μ | MSGD | SDE | prediction | MSGD / prediction − 1 | MSGD spread(μ) / spread(0) | 1/(1−μ) |",
        "|---|---|---|---|---|---|---|",
    ]
    for m, p in zip(momenta, predicted_spread):
        spread_rows.append(
            f"| {m} | {spread[MSGD][m]:.3e} ± {spread_error[MSGD][m]:.1e} "
            f"| {spread[SDE][m]:.3e} ± {spread_error[SDE][m]:.1e} | {p:.3e} | {spread_vs_prediction[m]:+.1%} "
            f"| {spread[MSGD][m] / spread[MSGD][momenta[0]]:.3f} | {1 / (1 - m):.3f} |"
        )
    runs = len(seeds) * settings.runs
    command = f"momentumlab reproduce {NAME} --seeds {','.join(map(str, seeds))}"
    ignored = ignored_overrides_note(options)
    section = "\n\n".join(
        [
            f"## {TITLE}\n\nCommand: `{command}`.{ignored}",
            (
                f"Streaming PCA in d = {problem.dim}: x ~ N(0, Σ), Σ = diag(λ), λ = {list(EIGENVALUES)}; "
                "minimize F(θ) = −θᵀΣθ/2 on the unit sphere with ℓ(θ; x) = −(xᵀθ)²/2. MSGD with the "
                "retraction Π(v) = v/‖v‖: θ_{k+1} = Π(θ_k − η∇ℓ(θ_k; x_k) + μ(θ_k − θ_{k−1})), θ_{−1} = θ_0, "
                f"η = {eta:g}, μ ∈ {{{', '.join(map(str, momenta))}}}. Per seed and setting, {settings.runs} "
                f"runs from the saddle e2 (escape step: first k with ⟨θ_k, e1⟩² ≥ ½, checked at every step; "
                f"runs last {settings.horizon:g}× the predicted median) and {settings.stationary_runs} runs "
                f"from e1 (E[1 − ⟨θ, e1⟩²] after {settings.burn_in:g} relaxation times (1−μ)/(2η(λ1−λ2)), "
                f"averaged over the next {settings.stationary_length:g}); seeds {list(seeds)} "
                f"({runs} escape runs per setting in all). Each setting is one batched computation of shape "
                "(runs, d), in float32."
            ),
            (
                "Theory. Heavy ball's velocity sums the last ~1/(1−μ) gradients, so in time t = ηk MSGD "
                "follows dθ = −∇F/(1−μ) dt + (√η/(1−μ))Σ_g^{1/2} dW with Σ_g(θ) = (θᵀΣθ)Σ + ΣθθᵀΣ "
                "(Gaussian x); the SDE is integrated by Euler–Maruyama with "
                f"dt = {settings.sde_step:g}(1−μ) and Π after each step. At e2, u = ⟨θ, e1⟩ grows like "
                "e^{γt}Z, γ = (λ1−λ2)/(1−μ), Z ~ N(0, ηλ1λ2/(2(λ1−λ2)(1−μ))): "
                "the prediction is the step at which the ODE θ' = −∇F/(1−μ) from u0 = median |Z| reaches "
                "alignment ½, i.e. (1−μ)log((1−u0²)/u0²)/(2η(λ1−λ2)). SGD at η/(1−μ) has the same drift and "
                "diffusion per iteration, hence the same prediction. Near e1 each w_j = ⟨θ, e_j⟩ is an "
                "Ornstein–Uhlenbeck process of curvature λ1−λj and noise variance λ1λj, so "
                "E[1 − ⟨θ, e1⟩²] = Σ_j ηλ1λj/(2(λ1−λj)(1−μ)) — SPEC's ησ²/(2λ(1−μ)) per direction, "
                "1/(1−μ) times SGD's at the same η."
            ),
            "### Claims\n\n" + claims_table(claims),
            "### Escape from the saddle e2 (median [quartiles] escape step)\n\n" + "\n".join(escape_rows),
            ("### Stationary spread near e1 (mean ± standard error over runs)\n\n" + "\n".join(spread_rows)),
            (
                f"![escape times]({NAME}/escape_times.png)\n\n![alignment paths]({NAME}/alignment_paths.png)"
                f"\n\n![stationary spread]({NAME}/stationary_spread.png)"
            ),
        ]
    )
    return ReproductionResult(NAME, TITLE, claims, section, figures)
