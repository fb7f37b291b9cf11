"""Freed memory kept for reuse: under glibc's initial thresholds a 1-CNN's forwards over 5 000 examples
page-fault on every call, and not at all once the thresholds are set, directly or by a trainer."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from helpers import TINY_RAW

from momentumlab.memory import reuse_freed_memory

# prints the page faults of one call of outputs_in_chunks (the logged row's forward), after warm calls; the
# thresholds start at glibc's initial values, held fixed: how much else a process freed before raises them
FORWARDS = """
import ctypes, json, resource, sys, torch
from momentumlab.memory import M_MMAP_THRESHOLD, M_TRIM_THRESHOLD
mallopt = ctypes.CDLL(None).mallopt
assert mallopt(M_MMAP_THRESHOLD, 128 << 10) and mallopt(M_TRIM_THRESHOLD, 128 << 10)  # glibc's first ones
from momentumlab.models.mlp import build_network
from momentumlab.train.teacher_student import outputs_in_chunks
{setup}
model = build_network("cnn1", 30, 16, 5, torch.Generator().manual_seed(0))
inputs = torch.randn(5000, 30, generator=torch.Generator().manual_seed(1))
with torch.no_grad():
    for _ in range(3):
        outputs_in_chunks(model, inputs)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        outputs_in_chunks(model, inputs)
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 10)
"""
SETUPS = {
    "nothing": "",
    "reuse_freed_memory": "from momentumlab.memory import reuse_freed_memory; assert reuse_freed_memory()",
    "a trainer": (
        "from momentumlab.runs.feature_margin import FeatureMarginRunConfig\n"
        "from momentumlab.train.feature_margin import train_feature_margin\n"
        "train_feature_margin(FeatureMarginRunConfig.model_validate(json.loads(sys.argv[1])))"
    ),
}

pytestmark = pytest.mark.skipif(not reuse_freed_memory(), reason="the C library has no mallopt (not glibc)")


def faults_per_forward(setup: str) -> float:
    script = FORWARDS.format(setup=SETUPS[setup])
    result = subprocess.run(
        [sys.executable, "-c", script, json.dumps(TINY_RAW)], capture_output=True, text=True, check=True
    )
    return float(result.stdout.split()[-1])


def test_forwards_fault_under_glibcs_initial_thresholds():
    """The premise: glibc's thresholds hand these tensors back and fault them in again."""
    assert faults_per_forward("nothing") > 1000


@pytest.mark.parametrize("setup", ["reuse_freed_memory", "a trainer"])
def test_forwards_do_not_fault_once_the_thresholds_are_set(setup):
    assert faults_per_forward(setup) == 0
