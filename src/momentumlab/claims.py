"""A reproduction's claims: a statement, the measured value, the threshold and the verdict."""

from __future__ import annotations

import math
import operator
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from momentumlab.statistics import Estimate

Comparison = Literal[">=", "<=", ">", "<"]
Verdict = Literal["passed", "failed", "not resolved"]
_COMPARE = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt}


@dataclass(frozen=True)
class Claim:
    """`measured <comparison> threshold`; a NaN measurement never passes.

    With an `interval` (a 95% bootstrap interval of the measured value over seeds) the verdict is
    "passed" or "failed" only when the whole interval is on one side of the threshold, and
    "not resolved" when it straddles it.
    """

    id: str
    statement: str
    measured: float
    threshold: float
    comparison: Comparison = ">="
    detail: dict[str, Any] = field(default_factory=dict)
    reference: str = ""  # the paper and the equation, theorem or figure the claim tests
    interval: tuple[float, float] | None = None

    @classmethod
    def from_estimate(
        cls,
        id: str,
        statement: str,
        estimate: Estimate,
        threshold: float,
        comparison: Comparison = ">=",
        detail: dict[str, Any] | None = None,
    ) -> Claim:
        """A claim on a mean over seeds (e.g. a paired difference) with its bootstrap interval."""
        detail = {**(detail or {}), "seeds": estimate.n, "confidence": estimate.confidence}
        return cls(
            id,
            statement,
            estimate.mean,
            threshold,
            comparison,
            detail,
            interval=(estimate.low, estimate.high),
        )

    @property
    def verdict(self) -> Verdict:
        holds = _COMPARE[self.comparison]
        point = not math.isnan(self.measured) and holds(self.measured, self.threshold)
        if self.interval is None or any(math.isnan(end) for end in self.interval):
            return "passed" if point else "failed"
        ends = [holds(end, self.threshold) for end in self.interval]
        if all(ends) and point:
            return "passed"
        if not any(ends) and not point:
            return "failed"
        return "not resolved"

    @property
    def passed(self) -> bool:
        return self.verdict == "passed"

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed, "verdict": self.verdict}
