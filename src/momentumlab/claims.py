"""A reproduction's claims: a statement, the measured value, the threshold and the verdict."""

from __future__ import annotations

import math
import operator
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Comparison = Literal[">=", "<=", ">", "<"]
_COMPARE = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt}


@dataclass(frozen=True)
class Claim:
    """`measured <comparison> threshold`; a NaN measurement never passes."""

    id: str
    statement: str
    measured: float
    threshold: float
    comparison: Comparison = ">="
    detail: dict[str, Any] = field(default_factory=dict)
    reference: str = ""  # the paper and the equation, theorem or figure the claim tests

    @property
    def passed(self) -> bool:
        return not math.isnan(self.measured) and _COMPARE[self.comparison](self.measured, self.threshold)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed}
