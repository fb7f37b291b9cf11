"""Graduated-optimization schedules against the closed forms of SPEC §3."""

from __future__ import annotations

import itertools

import pytest

from momentumlab.optim.graduated import (
    GraduatedSchedule,
    decay_factor,
    epoch_settings,
    nshb_momentum,
    shb_momentum,
    smoothing_targets,
)
from momentumlab.probes.noise import momentum_factor, smoothing_degree

CONSTANTS = {"variance": 16.0, "gradient_bound": 3.0}  # C², K


def test_decay_factor_and_targets():
    """M = 4, p = 0.9: γ_1 = (3/4)^0.9, γ_4 = 0; δ_m = δ_1((M − m + 1)/M)^p."""
    assert decay_factor(1, 4) == pytest.approx(0.75**0.9)
    assert decay_factor(3, 4) == pytest.approx(0.5**0.9)
    assert decay_factor(4, 4) == 0.0
    assert decay_factor(2, 4, power=1.0) == pytest.approx(2 / 3)
    deltas = smoothing_targets(2.0, 4)
    assert deltas == pytest.approx([2.0 * ((4 - m + 1) / 4) ** 0.9 for m in range(1, 5)])
    assert deltas[-1] == pytest.approx(2.0 / 4**0.9)
    with pytest.raises(ValueError, match="epoch=0"):
        decay_factor(0, 4)


def test_nshb_closed_form_by_hand():
    """η = 0.1, b = 4, C² = 16, K = 3, δ = 0.5: δ²/η² − C²/b = 21, 4(C²/b + K²) = 52, β = √(21/52)."""
    beta = nshb_momentum(0.5, 0.1, 4, **CONSTANTS)
    assert beta == pytest.approx((21 / 52) ** 0.5)
    assert smoothing_degree("nshb", 0.1, 4, beta, **CONSTANTS) == pytest.approx(0.5)
    assert nshb_momentum(0.1, 0.1, 4, **CONSTANTS) == 0.0  # below the floor ηC/√b = 0.2


@pytest.mark.parametrize("delta", [0.25, 0.5, 1.0, 3.0, 30.0])
def test_shb_root_solves_the_cubic_in_the_unit_interval(delta):
    beta = shb_momentum(delta, 0.1, 4, **CONSTANTS)
    u = (delta**2 / 0.01 - 4) / 13  # (δ²/η² − C²/b)/(C²/b + K²)
    assert 0 <= beta < 1
    assert beta**3 - (1 + u) * beta**2 + (1 + 2 * u) * beta - u == pytest.approx(0, abs=1e-9 * (1 + u))
    assert momentum_factor(beta) == pytest.approx(u, rel=1e-9)  # β̂(β) = u
    assert smoothing_degree("shb", 0.1, 4, beta, **CONSTANTS) == pytest.approx(delta, rel=1e-9)


def _assert_follows_targets(settings, rel: float) -> None:
    for previous, current in itertools.pairwise(settings):
        gamma = decay_factor(previous.epoch, len(settings))
        assert current.target_delta == pytest.approx(gamma * previous.target_delta, rel=1e-12)
        assert current.delta == pytest.approx(current.target_delta, rel=rel)  # δ_{m+1} = γ_m δ_m


@pytest.mark.parametrize("method", ["sgd", "shb", "nshb"])
def test_lr_schedule_reproduces_the_deltas(method):
    momentum = 0.0 if method == "sgd" else 0.9
    schedule = GraduatedSchedule(method, "lr", 10, lr=0.1, batch_size=32, momentum=momentum, **CONSTANTS)
    settings = epoch_settings(schedule)
    assert len(settings) == 10 and settings[0].lr == pytest.approx(0.1)
    assert settings[-1].lr == pytest.approx(0.1 / 10**0.9)
    assert all(s.batch_size == 32 and s.momentum == momentum for s in settings)
    _assert_follows_targets(settings, rel=1e-12)


def test_batch_size_schedule_for_sgd_is_b1_over_the_squared_ratio():
    """SGD: b_m = b_1 (δ_1/δ_m)² = b_1 (M/(M − m + 1))^{2p}, rounded."""
    schedule = GraduatedSchedule("sgd", "batch_size", 5, lr=0.1, batch_size=64, **CONSTANTS)
    settings = epoch_settings(schedule)
    assert [s.batch_size for s in settings] == [round(64 * (5 / (5 - m + 1)) ** 1.8) for m in range(1, 6)]
    _assert_follows_targets(settings, rel=1 / 64)


@pytest.mark.parametrize("method", ["shb", "nshb"])
def test_batch_size_schedule_with_momentum(method):
    """Small K, so that the batch size can reach every target; rounding costs at most ~1/(2b) of δ."""
    schedule = GraduatedSchedule(method, "batch_size", 4, 0.1, 128, 100.0, 0.01, momentum=0.5)
    settings = epoch_settings(schedule)
    assert [s.batch_size for s in settings] == sorted(s.batch_size for s in settings)
    _assert_follows_targets(settings, rel=1 / 128)
    too_far = GraduatedSchedule(method, "batch_size", 4, 0.1, 128, 1.0, 3.0, momentum=0.9)
    with pytest.raises(ValueError, match="no batch size reaches it"):
        epoch_settings(too_far)


@pytest.mark.parametrize("method", ["shb", "nshb"])
def test_momentum_schedule_reproduces_the_deltas_and_decays_beta(method):
    schedule = GraduatedSchedule(method, "momentum", 6, lr=0.1, batch_size=64, momentum=0.9, **CONSTANTS)
    settings = epoch_settings(schedule)
    betas = [s.momentum for s in settings]
    assert betas[0] == pytest.approx(0.9, rel=1e-9)
    assert betas == sorted(betas, reverse=True)
    _assert_follows_targets(settings, rel=1e-9)


def test_momentum_below_the_floor_records_the_achieved_delta():
    """NSHB, β_1 = 0.1: the last targets fall below ηC/√b = 0.2; there β = 0 and δ is the floor."""
    schedule = GraduatedSchedule("nshb", "momentum", 8, lr=0.1, batch_size=4, momentum=0.1, **CONSTANTS)
    last = epoch_settings(schedule)[-1]
    assert last.target_delta < 0.2
    assert last.momentum == 0.0 and last.delta == pytest.approx(0.2)


def test_schedule_rejects_momentum_control_for_sgd():
    with pytest.raises(ValueError, match="control='momentum'"):
        GraduatedSchedule("sgd", "momentum", 5, lr=0.1, batch_size=4, **CONSTANTS)
