"""The diffusion view of momentum SGD on streaming PCA (Liu, Chen, Zhou, Zhao; SPEC §4).

Problem: the top eigenvector of Σ = diag(λ) (λ1 > λ2 ≥ … ≥ λd > 0) from samples x ~ N(0, Σ),
i.e. minimize F(θ) = −θᵀΣθ/2 on the unit sphere, with per-sample loss ℓ(θ; x) = −(xᵀθ)²/2, so
∇ℓ = −x xᵀθ and ∇F = −Σθ. The eigenvectors e_j are the critical points: ±e1 the minima, e_j (j ≥ 2)
saddles with e1 (and every e_i, i < j) as escape directions. A diagonal Σ loses nothing: MSGD, the
SDE and the ODE are equivariant under θ → Uθ, x → Ux, so Σ = U diag(λ) Uᵀ gives the same law of a.

MSGD (SPEC §4) followed by the retraction Π(v) = v/‖v‖ onto the sphere, with zero initial velocity:

    θ_{k+1} = Π(θ_k − η∇ℓ(θ_k; x_k) + μ(θ_k − θ_{k−1})),  θ_{−1} = θ_0.

Diffusion limit, time t = ηk. Heavy ball's velocity v_k = θ_{k+1} − θ_k obeys v_k = μv_{k−1} − ηg_k,
so over n ≫ 1/(1−μ) steps θ moves by −η/(1−μ)·Σ g_k: a drift −∇F/(1−μ) per unit time and, the
gradient noises being independent with covariance Σ_g, a covariance (η²/(1−μ)²)·(t/η)·Σ_g = ηtΣ_g/(1−μ)².
The SDE is therefore dθ = −∇F(θ)/(1−μ) dt + (√η/(1−μ)) Σ_g(θ)^{1/2} dW, kept on the sphere by Π after
every Euler–Maruyama step, as MSGD is. For Gaussian x (Isserlis),
Σ_g(θ) = Cov(x xᵀθ) = (θᵀΣθ)Σ + ΣθθᵀΣ. Its noise-free part is the ODE θ' = (Σθ − (θᵀΣθ)θ)/(1−μ)
(−∇F/(1−μ) projected on the sphere), solved by Π(exp(Σt/(1−μ))θ0): the mean path from any start
off the critical points. From a saddle the noise decides when a run leaves; after that it follows
the ODE (:meth:`StreamingPCA.median_escape_step`).

Alignment a = ⟨θ, e1⟩²/‖θ‖² ∈ [0, 1]; a run *escapes* at the first step k with a_k ≥ 1/2
(θ within 45° of ±e1; :data:`ESCAPE_ALIGNMENT`).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from itertools import islice

import torch
from torch import Tensor

from momentumlab.probes.flows import integrate_flow

ESCAPE_ALIGNMENT = 0.5
MEDIAN_ABS_NORMAL = 0.6744897501960817  # median of |N(0, 1)|


def normalize(vectors: Tensor) -> Tensor:
    """Π(v) = v/‖v‖ along the last dimension."""
    return vectors / vectors.norm(dim=-1, keepdim=True)


@dataclass(frozen=True)
class StreamingPCA:
    """Samples x ~ N(0, Σ) with Σ = diag(λ), so e_j is the j-th coordinate vector."""

    eigenvalues: Tensor  # λ, (d,): λ1 > λ2 ≥ … ≥ λd > 0; its dtype is every tensor's dtype

    def __post_init__(self):
        values = self.eigenvalues
        if values.ndim != 1 or len(values) < 2:
            raise ValueError(
                f"eigenvalues must be a 1-d tensor of length ≥ 2, got shape {tuple(values.shape)}"
            )
        if not (values[0] > values[1] and bool((values[1:-1] >= values[2:]).all()) and values[-1] > 0):
            raise ValueError(f"eigenvalues must satisfy λ1 > λ2 ≥ … ≥ λd > 0, got {values.tolist()}")

    @property
    def dim(self) -> int:
        return len(self.eigenvalues)

    def eigenvector(self, index: int) -> Tensor:
        """e_{index+1} (index 0 is the top eigenvector e1)."""
        return torch.eye(self.dim, dtype=self.eigenvalues.dtype)[index]

    def sample(self, runs: int, generator: torch.Generator) -> Tensor:
        """x ~ N(0, Σ), one row per run: (runs, d)."""
        standard = torch.randn(runs, self.dim, generator=generator, dtype=self.eigenvalues.dtype)
        return standard * self.eigenvalues.sqrt()  # x = Λ^{1/2}z

    def stochastic_gradient(self, theta: Tensor, x: Tensor) -> Tensor:
        """∇ℓ(θ; x) = −x xᵀθ, row by row."""
        return -x * (x * theta).sum(-1, keepdim=True)

    def gradient(self, theta: Tensor) -> Tensor:
        """∇F(θ) = −Σθ, row by row."""
        return -theta * self.eigenvalues

    def gradient_noise(self, theta: Tensor, generator: torch.Generator) -> Tensor:
        """A draw of N(0, Σ_g(θ)), Σ_g = (θᵀΣθ)Σ + ΣθθᵀΣ: √(θᵀΣθ)·x + Σθ·ζ with x ~ N(0, Σ), ζ ~ N(0, 1)."""
        sigma_theta = theta * self.eigenvalues  # Σθ
        quadratic = (theta * sigma_theta).sum(-1, keepdim=True)  # θᵀΣθ
        scalar = torch.randn(len(theta), 1, generator=generator, dtype=theta.dtype)  # ζ
        return quadratic.sqrt() * self.sample(len(theta), generator) + sigma_theta * scalar

    def alignment(self, theta: Tensor) -> Tensor:
        """a = ⟨θ, e1⟩²/‖θ‖², row by row."""
        return theta[..., 0] ** 2 / (theta**2).sum(-1)

    def stationary_spread(self, lr: float, momentum: float) -> float:
        """E[1 − a] at stationarity near ±e1, to first order in η: Σ_{j≥2} ηλ1λj / (2(λ1 − λj)(1 − μ)).

        Near e1 the coordinates w_j = ⟨θ, e_j⟩ (j ≥ 2) follow heavy ball on a quadratic of curvature
        λ1 − λj (the Hessian of F on the sphere) driven by the noise −x1 xj of variance λ1λj, so each is an
        Ornstein–Uhlenbeck process of variance ησ²/(2λ(1−μ)) with σ² = λ1λj, λ = λ1 − λj; 1 − a = Σ w_j².
        """
        top, rest = self.eigenvalues[0], self.eigenvalues[1:]
        return float((lr * top * rest / (2 * (top - rest) * (1 - momentum))).sum())

    def escape_scale(self, lr: float, momentum: float, saddle: int = 1) -> float:
        """sd of Z in u(t) ≈ e^{γt}Z, u = ⟨θ, e1⟩, for runs started exactly at the saddle e_{saddle+1}.

        Near the saddle e_s, du = γu dt + (√(ηλ1λs)/(1−μ)) dW with γ = (λ1 − λs)/(1−μ), so
        e^{−γt}u(t) → Z = ∫ e^{−γr}(√(ηλ1λs)/(1−μ)) dW_r ~ N(0, ηλ1λs/(2(λ1 − λs)(1 − μ))).
        """
        top, low = float(self.eigenvalues[0]), float(self.eigenvalues[saddle])
        return math.sqrt(lr * top * low / (2 * (top - low) * (1 - momentum)))

    def median_escape_displacement(self, lr: float, momentum: float, saddle: int = 1) -> float:
        """u0 = median |Z| (:meth:`escape_scale`): the median run's ⟨θ, e1⟩ as the ODE takes it over."""
        return MEDIAN_ABS_NORMAL * self.escape_scale(lr, momentum, saddle)

    def ode_escape_start(self, lr: float, momentum: float, saddle: int = 1) -> Tensor:
        """√(1 − u0²)·e_s + u0·e1 (u0 from :meth:`median_escape_displacement`): the unit vector from which
        the ODE follows the median run out of the saddle e_{saddle+1}."""
        start = self.median_escape_displacement(lr, momentum, saddle)  # u0
        return math.sqrt(1 - start**2) * self.eigenvector(saddle) + start * self.eigenvector(0)

    def median_escape_step(self, lr: float, momentum: float, saddle: int = 1) -> float:
        """Predicted median escape step from the saddle e_{saddle+1} (exactly at it, zero velocity).

        From u0 = |Z| (:meth:`escape_scale`) the ODE, which stays in the (e1, e_s) plane, reaches a = ½ at
        t = log((1 − u0²)/u0²)/(2γ); t falls as |Z| grows, so the median step takes u0 = median |Z|.
        """
        gap = float(self.eigenvalues[0] - self.eigenvalues[saddle])  # λ1 − λs
        start = self.median_escape_displacement(lr, momentum, saddle)  # u0
        time = (1 - momentum) * math.log((1 - start**2) / start**2) / (2 * gap)  # t = log(·)/(2γ)
        return time / lr  # k = t/η


Schedule = Callable[[int], tuple[float, float]]  # step k → (η_k, μ_k) used to compute θ_{k+1}


def msgd(
    problem: StreamingPCA, start: Tensor, lr: float, momentum: float, generator: torch.Generator
) -> Iterator[Tensor]:
    """θ_1, θ_2, … of MSGD on the sphere for every row of `start` (runs, d) at once, without end."""
    return scheduled_msgd(problem, start, lambda step: (lr, momentum), generator)


def scheduled_msgd(
    problem: StreamingPCA, start: Tensor, schedule: Schedule, generator: torch.Generator
) -> Iterator[Tensor]:
    """MSGD whose step and momentum at step k are `schedule(k)` (k = 0, 1, …): annealing either one.

    The velocity θ_k − θ_{k−1} is kept across a change of (η, μ); with μ_k = 0 it is dropped.
    """
    previous = current = normalize(start)
    for step in itertools.count():
        lr, momentum = schedule(step)
        x = problem.sample(len(current), generator)
        # θ_{k+1} = Π(θ_k − η∇ℓ(θ_k; x_k) + μ(θ_k − θ_{k−1}))
        update = current - lr * problem.stochastic_gradient(current, x) + momentum * (current - previous)
        previous, current = current, normalize(update)
        yield current


Drift = Callable[[Tensor], Tensor]
Noise = Callable[[Tensor, torch.Generator], Tensor]  # state → a draw of σ(X)Z, Z ~ N(0, I)


def euler_maruyama(
    drift: Drift,
    noise: Noise,
    start: Tensor,
    dt: float,
    generator: torch.Generator,
    retract: Callable[[Tensor], Tensor] | None = None,
) -> Iterator[Tensor]:
    """X_1, X_2, … of dX = b(X)dt + σ(X)dW: X_{n+1} = X_n + b(X_n)dt + √dt·σ(X_n)Z_n, then `retract`."""
    state = start
    while True:
        state = state + drift(state) * dt + math.sqrt(dt) * noise(state, generator)
        if retract is not None:
            state = retract(state)
        yield state


def sde(
    problem: StreamingPCA, start: Tensor, lr: float, momentum: float, dt: float, generator: torch.Generator
) -> Iterator[Tensor]:
    """Euler–Maruyama states of dθ = −∇F/(1−μ) dt + (√η/(1−μ))Σ_g^{1/2} dW on the sphere; dt in t = ηk."""
    return euler_maruyama(
        lambda theta: -problem.gradient(theta) / (1 - momentum),
        lambda theta, g: math.sqrt(lr) / (1 - momentum) * problem.gradient_noise(theta, g),
        normalize(start),
        dt,
        generator,
        normalize,
    )


def mean_flow(problem: StreamingPCA, momentum: float) -> Callable[[Tensor], Tensor]:
    """θ' = (Σθ − (θᵀΣθ)θ)/(1 − μ): −∇F/(1 − μ) projected on the sphere's tangent space."""

    def field(theta: Tensor) -> Tensor:
        sigma_theta = theta * problem.eigenvalues  # Σθ
        return (sigma_theta - (theta @ sigma_theta) * theta) / (1 - momentum)

    return field


def ode_alignment(problem: StreamingPCA, start: Tensor, momentum: float, times: Tensor) -> Tensor:
    """a(t) along the ODE path from normalize(start) (d,), at increasing `times` ≥ 0 (t = ηk)."""
    path = integrate_flow(mean_flow(problem, momentum), normalize(start), times.tolist())
    return problem.alignment(path)


def first_passage(alignment: Tensor, threshold: float = ESCAPE_ALIGNMENT) -> Tensor:
    """First index along dim 0 where alignment ≥ threshold, per trailing index; inf where there is none."""
    passed = alignment >= threshold
    index = torch.arange(len(alignment), dtype=torch.float64).reshape(-1, *[1] * (alignment.ndim - 1))
    return torch.where(passed, index, torch.inf).amin(0)


@dataclass(frozen=True)
class Track:
    """Alignments every `record_every` steps (row i is step i·record_every) and exact escape steps."""

    alignment: Tensor  # (records, runs)
    escape: Tensor  # (runs,): first step k with a_k ≥ ½, checked at every step; inf if none
    record_every: int

    @property
    def steps(self) -> Tensor:
        """The step of each alignment row."""
        return torch.arange(len(self.alignment)) * self.record_every

    def spread(self, burn_in: int) -> Tensor:
        """Per run, the mean of 1 − a over the recorded steps ≥ burn_in: (runs,)."""
        return (1 - self.alignment[self.steps >= burn_in]).mean(0)


def pool(tracks: Sequence[Track]) -> Track:
    """Tracks of independent runs on the same record grid, as one track of all their runs (in order)."""
    grids = {(len(t.alignment), t.record_every) for t in tracks}
    if len(grids) != 1:
        raise ValueError(f"tracks must share one record grid (records, record_every), got {sorted(grids)}")
    return Track(
        torch.cat([t.alignment for t in tracks], 1),
        torch.cat([t.escape for t in tracks]),
        tracks[0].record_every,
    )


def track(
    problem: StreamingPCA,
    start: Tensor,
    iterates: Iterator[Tensor],
    steps: int,
    record_every: int = 1,
    threshold: float = ESCAPE_ALIGNMENT,
) -> Track:
    """Consume `steps` states of `iterates` (started at `start`), recording every `record_every`-th
    alignment and the first step at which each run's alignment reaches `threshold`."""
    if steps % record_every:
        raise ValueError(f"steps = {steps} must be a multiple of record_every = {record_every}")
    initial = problem.alignment(start)
    records, escape = [initial], first_passage(initial[None], threshold)
    for first in range(1, steps + 1, record_every):  # one block: steps first … first + record_every − 1
        block = torch.stack([problem.alignment(theta) for theta in islice(iterates, record_every)])
        escape = torch.minimum(escape, first + first_passage(block, threshold))
        records.append(block[-1])
    return Track(torch.stack(records), escape, record_every)
