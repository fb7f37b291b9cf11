"""Update rules: GD, EMA momentum (GD+M), heavy ball, Nesterov."""

from momentumlab.optim.momentum import (
    GD,
    EMAMomentum,
    HeavyBall,
    Nesterov,
    build_optimizer,
    ema_to_heavy_ball,
    heavy_ball_to_ema,
)

__all__ = [
    "GD",
    "EMAMomentum",
    "HeavyBall",
    "Nesterov",
    "build_optimizer",
    "ema_to_heavy_ball",
    "heavy_ball_to_ema",
]
