"""The quantities Jelassi & Li's analysis tracks, measured on the cubic CNN (SPEC §1, seed 001 §3–5).

- signal c_r(t) = ⟨w_r, w*⟩ and c(t) = max_r c_r(t);
- noise Ξ_{i,j,r} = ⟨w_r, X_i[j]⟩ for j ≠ p(X_i), total noise Ξ_i = Σ_r Σ_{j≠p} Ξ_{i,j,r}³;
- gradient and momentum projections G_r = ⟨∇_{w_r} L, w*⟩, Ĝ_r = ⟨g_r, w*⟩ (the trainers log the
  optimizer's own buffer; :func:`in_ema_scale` puts every rule's Ĝ on the paper's EMA scale);
- loss derivatives ℓ_i = σ(−y_i f(X_i)), ν_k = (1/N) Σ_{i∈Z_k} ℓ_i for Z_1 (large) and Z_2 (small margin).
"""

from __future__ import annotations

import pandas as pd
import torch

from momentumlab.data.feature_margin import FeatureMarginData, FeatureMarginSet
from momentumlab.optim.momentum import OptimizerConfig

MEMORIZATION_THRESHOLD = 1.0  # y_i Ξ_i ≥ Ω(1) counts as "memorized by noise" (Theorem 3.1)


def _mean_or_nan(values: torch.Tensor) -> float:
    return values.double().mean().item() if values.numel() else float("nan")


def group_accuracies(outputs: torch.Tensor, data: FeatureMarginSet, prefix: str) -> dict[str, float]:
    """Accuracy of sign(f) overall and on the large- and small-margin examples."""
    correct = (outputs * data.labels) > 0
    return {
        f"{prefix}_accuracy": _mean_or_nan(correct),
        f"{prefix}_accuracy_large": _mean_or_nan(correct[~data.is_small_margin]),
        f"{prefix}_accuracy_small": _mean_or_nan(correct[data.is_small_margin]),
    }


def total_noise(weight: torch.Tensor, data: FeatureMarginSet) -> tuple[torch.Tensor, torch.Tensor]:
    """(Ξ_i for each example, max_{i, j≠p, r} |Ξ_{i,j,r}|)."""
    noise_correlations = (data.inputs @ weight.T) * data.noise_patch_mask()[..., None]  # Ξ_{i,j,r}
    return noise_correlations.pow(3).sum(dim=(1, 2)), noise_correlations.abs().max()


def feature_margin_measurements(
    weight: torch.Tensor,
    data: FeatureMarginData,
    gradient: torch.Tensor,
    momentum_buffer: torch.Tensor | None,
) -> dict[str, float]:
    """One row of the theory's quantities at the current weights W(t).

    `gradient` is the full-batch ∇L(W(t)); `momentum_buffer` is the optimizer's buffer before the
    update at t (zero at t = 0, None for GD).
    """
    feature = data.feature
    train_outputs = (data.train.inputs @ weight.T).pow(3).sum(dim=(1, 2))
    test_outputs = (data.test.inputs @ weight.T).pow(3).sum(dim=(1, 2))
    validation_outputs = (data.validation.inputs @ weight.T).pow(3).sum(dim=(1, 2))
    signal = weight @ feature  # c_r
    best = int(signal.argmax())  # r_max
    gradient_signal = gradient @ feature  # G_r
    buffer_signal = momentum_buffer @ feature if momentum_buffer is not None else torch.zeros_like(signal)
    loss_derivative = torch.sigmoid(-data.train.labels * train_outputs)  # ℓ_i
    n = len(data.train)
    small = data.train.is_small_margin
    noise, noise_max = total_noise(weight, data.train)
    memorization = (data.train.labels * noise)[small]  # y_i Ξ_i on Z_2

    row = {
        **group_accuracies(train_outputs, data.train, "train"),
        **group_accuracies(test_outputs, data.test, "test"),
        **group_accuracies(validation_outputs, data.validation, "val"),
        "signal_max": signal[best].item(),  # c(t)
        "gradient_signal": gradient_signal[best].item(),  # G(t) at r_max
        "momentum_signal": buffer_signal[best].item(),  # Ĝ(t) at r_max
        "gradient_norm": gradient.norm().item(),
        "nu_large": (loss_derivative[~small].sum() / n).item(),  # ν_1
        "nu_small": (loss_derivative[small].sum() / n).item(),  # ν_2
        "noise_memorization_small": _mean_or_nan(memorization),  # mean of y_i Ξ_i over Z_2
        "memorized_fraction_small": _mean_or_nan(memorization >= MEMORIZATION_THRESHOLD),
        "noise_correlation_max": noise_max.item(),  # max |Ξ_{i,j,r}|
    }
    for r in range(weight.shape[0]):
        row[f"signal_r{r}"] = signal[r].item()
        row[f"gradient_signal_r{r}"] = gradient_signal[r].item()
        row[f"momentum_signal_r{r}"] = buffer_signal[r].item()
    return row


def ema_scale(optimizer: OptimizerConfig) -> float:
    """The factor that turns the rule's momentum buffer into the paper's EMA buffer g.

    EMA momentum's g ← γg + (1−γ)∇ is already g; heavy ball's and Nesterov's b ← μb + ∇ is
    Σ_k μ^k ∇_{t−k} = g/(1−μ), so g = (1−μ)·b. GD has no buffer (its logged Ĝ is 0).
    """
    return {"gd": 1.0, "ema_momentum": 1.0}.get(optimizer.name, 1.0 - optimizer.momentum)


def in_ema_scale(metrics: pd.DataFrame, optimizer: OptimizerConfig) -> pd.DataFrame:
    """A run's logged rows with every momentum projection (`momentum_signal`, `momentum_signal_r*`)
    multiplied by :func:`ema_scale`, so that Ĝ is comparable across update rules."""
    columns = [c for c in metrics.columns if c == "momentum_signal" or c.startswith("momentum_signal_r")]
    return metrics.assign(**{column: metrics[column] * ema_scale(optimizer) for column in columns})


def largest_signal(rows: pd.DataFrame) -> pd.Series:
    """max_r |c_r| of each logged row (from its `signal_r*` columns): c(1) on the step-1 rows, the
    size of GD's first step along the feature."""
    columns = [column for column in rows.columns if column.startswith("signal_r")]
    return rows[columns].abs().max(axis=1)
