"""Round 17: the GPU benchmarks' agreement step computed relative differences and tested none,
and a fused path that never ran (kernels that did not load: every call on the reference) was
reported as perfect agreement and timed under the fused name (an outside probe). A difference
above ``AGREEMENT_TOLERANCE`` or a fallback warning now fails the check before any timing."""

from __future__ import annotations

import torch

from eqpdenet import kernels
from test_benchmark_scripts import _load


def test_agreement_failures_name_each_difference_and_fallback():
    bench_gpu = _load("bench_gpu")
    tolerance = bench_gpu.AGREEMENT_TOLERANCE
    assert bench_gpu.agreement_failures({"states": tolerance, "grad u": 0.0}, []) == []
    assert bench_gpu.agreement_failures(
        {"states": 2 * tolerance, "grad u": float("nan")}, ["eqpdenet: no kernel"]) == [
        f"states: relative difference {2 * tolerance:.2e} above {tolerance:g}",
        f"grad u: relative difference nan above {tolerance:g}",
        "the fused path was not taken: eqpdenet: no kernel"]


def test_a_fused_path_that_never_ran_fails_the_agreement(monkeypatch):
    bench_gpu = _load("bench_gpu")
    monkeypatch.setattr(kernels, "unsupported_reason",
                        lambda u, specs: "simulated: the kernels could not be loaded")
    given = "simulated: the kernels could not be loaded; using the reference PDE layer"
    monkeypatch.setattr(kernels.op, "_warned", {given})
    differences, failures = bench_gpu.agreement(torch.device("cpu"), batch=2)
    assert set(differences.values()) == {0.0}  # the reference against itself
    assert failures == ["the fused path was not taken: eqpdenet: simulated: the kernels could "
                        "not be loaded; using the reference PDE layer"]
    # warned before in this process, and again after the check
    assert kernels.op._warned == {given}
