"""A row of scalars as every adapter receives it, checked once: an integer step and real values."""

from __future__ import annotations

import operator
from collections.abc import Mapping


def scalar_row(step: int, values: Mapping[str, float]) -> tuple[int, dict[str, float]]:
    """`step` as an int ≥ 0 and `values` as {name: float}; NaN and ±inf pass (a diverged run is data)."""
    try:
        step = operator.index(step)
    except TypeError:
        raise TypeError(f"step = {step!r}: allowed: an integer ≥ 0") from None
    if step < 0:
        raise ValueError(f"step = {step}: allowed: an integer ≥ 0")
    row = {}
    for name, value in values.items():
        try:
            row[str(name)] = float(value)  # also a 0-d tensor or a NumPy scalar
        except (TypeError, ValueError):
            raise TypeError(f"{name} = {value!r}: a logged value must be a real number") from None
    return step, row
