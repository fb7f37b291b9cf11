import json
import math

import pytest

from momentumlab.claims import Claim
from momentumlab.report import claims_table
from momentumlab.statistics import Estimate


@pytest.mark.parametrize(
    ("measured", "interval", "comparison", "verdict"),
    [
        (0.5, None, ">=", "passed"),
        (-0.1, None, ">=", "failed"),
        (float("nan"), None, ">=", "failed"),
        (0.5, (0.2, 0.8), ">=", "passed"),
        (0.5, (-0.1, 0.8), ">=", "not resolved"),
        (-0.5, (-0.8, 0.1), ">=", "not resolved"),
        (-0.5, (-0.8, -0.2), ">=", "failed"),
        (-0.5, (-0.8, -0.2), "<", "passed"),
        (0.0, (0.0, 0.3), ">", "not resolved"),
        (0.5, (float("nan"), float("nan")), ">=", "passed"),
    ],
)
def test_verdict_from_the_point_value_and_the_interval(measured, interval, comparison, verdict):
    claim = Claim("c", "s", measured, 0.0, comparison, interval=interval)
    assert claim.verdict == verdict
    assert claim.passed == (verdict == "passed")


def test_claim_from_an_estimate_keeps_its_interval_and_seed_count():
    claim = Claim.from_estimate("gap", "GD+M beats GD", Estimate(0.3, 0.1, 0.5, 5, 0.95), 0.0, ">")
    record = json.loads(json.dumps(claim.to_json()))
    assert record["interval"] == [0.1, 0.5] and record["verdict"] == "passed"
    assert record["detail"] == {"seeds": 5, "confidence": 0.95}
    assert "[0.1, 0.5]" in claims_table([claim]) and "PASSED" in claims_table([claim])
    straddling = Claim.from_estimate("gap", "s", Estimate(0.3, -0.1, 0.5, 5, 0.95), 0.0, ">")
    assert "*not resolved*" in claims_table([straddling])
    assert not math.isnan(straddling.measured)
