"""What the reliability checks cost, and the memory factors the preflight check uses.

Run by hand (not in CI)::

    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_reliability.py [--checks-only]

1. The entry checks of a model's ``forward`` (shape, one ``aminmax`` pass and one host read for
   NaN/inf and the input range, dtype): EqPdeNet h=256 on a batch of 128, a training step
   (forward + backward) with the checks against the same step through the unchecked internals,
   interleaved over ``--rounds`` rounds in one process; the ratio of medians is reported, and
   the entry check alone (:func:`eqpdenet.models.check_model_input`, what ``forward`` calls)
   timed over 1,000 calls.
2. ``STATE_FACTORS`` of :mod:`eqpdenet.app.preflight`: the peak memory of one training step of
   the paper's model (batch 128) at 20 and 40 Euler steps, per backend and ``recompute``, in
   fresh subprocesses; the factor is the growth per step in units of one state
   (batch x PDEs x pixels x 4 bytes).
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from _args import positive_int, run  # noqa: E402

from eqpdenet import EqPdeNet  # noqa: E402
from eqpdenet.app.preflight import STATE_FACTORS  # noqa: E402
from eqpdenet.models import check_model_input  # noqa: E402


def check_overhead(rounds: int = 15) -> None:
    torch.manual_seed(0)
    model = EqPdeNet(256, input_mean=0.1307, input_std=0.3081)
    x, y = torch.rand(128, 1, 28, 28), torch.randint(0, 10, (128,))

    def checked():
        F.cross_entropy(model(x), y).backward()

    def unchecked():  # the same computation without the entry checks
        states = model.pde_layer._evolve_unchecked(model.standardize(x))
        F.cross_entropy(model.mlp(model.pde_layer.reduction(states).flatten(1)), y).backward()

    times = {"checked": [], "unchecked": []}
    for step in (checked, unchecked):
        step()  # warm up (and build the kernel)
    for _ in range(rounds):
        for name, step in (("checked", checked), ("unchecked", unchecked)):
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    a, b = (statistics.median(times[k]) for k in ("checked", "unchecked"))
    print(f"training step, EqPdeNet h=256, batch 128, {torch.get_num_threads()} threads: "
          f"checked {a * 1e3:.1f} ms, unchecked {b * 1e3:.1f} ms, ratio {a / b:.3f} "
          f"(median of {rounds} interleaved rounds)")
    repeats = 1000
    start = time.perf_counter()
    for _ in range(repeats):
        check_model_input(model, x)
    check = (time.perf_counter() - start) / repeats
    print(f"the entry checks alone: {check * 1e6:.0f} us per call, {check / b:.2%} of the step")


STEP = """
import resource, sys, warnings, torch
warnings.simplefilter("ignore")
from eqpdenet import EqPdeNet, LayerConfig
backend, steps, recompute = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
torch.set_num_threads(1)
torch.manual_seed(0)
layer = LayerConfig(backend=backend, T=steps * 0.01, dt=0.01, recompute=recompute)
model = EqPdeNet(16, layer=layer)
x, y = torch.rand(128, 1, 28, 28), torch.randint(0, 10, (128,))
torch.nn.functional.cross_entropy(model(x[:2]), y[:2]).backward()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
torch.nn.functional.cross_entropy(model(x), y).backward()
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024)
"""


def state_factors() -> None:
    state = 128 * 4 * 784 * 4  # batch x PDEs x pixels x float32
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1] / "src"))
    print("backend    recompute  peak MB at 20 / 40 steps  factor per step  used by preflight")
    for (backend, recompute), used in STATE_FACTORS.items():
        peaks = []
        for steps in (20, 40):
            out = subprocess.run([sys.executable, "-c", STEP, backend, str(steps),
                                  str(int(recompute))], capture_output=True, text=True,
                                 env=env, check=True).stdout
            peaks.append(int(out.split()[-1]))
        factor = (peaks[1] - peaks[0]) / (20 * state)
        print(f"{backend:<10} {recompute!s:<10} {peaks[0] / 2**20:8.0f} / {peaks[1] / 2**20:<8.0f}"
              f"     {factor:8.2f}         {used}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checks-only", action="store_true",
                        help="only part 1 (the entry checks), not the memory factors")
    parser.add_argument("--rounds", type=positive_int, default=15,
                        help="interleaved rounds of part 1")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    check_overhead(args.rounds)
    if not args.checks_only:
        state_factors()
    print(f"(peak RSS of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss >> 10}"
          f" MB)")


if __name__ == "__main__":
    run(main)
