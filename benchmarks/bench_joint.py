"""Cost of joint invariants (all pairs vs mixtures) and of Gaussian jets (vs central), measured.

Run by hand (not in CI)::

    python benchmarks/bench_joint.py            # about a minute on 2 cores
    python benchmarks/bench_joint.py --quick    # fewer rounds

For each channel count ``C`` the variants are timed in the same process, interleaved over
``--rounds`` rounds (forward + backward of a batch of 28x28 order-2 jets); the median of each is
reported with the ratio to the ``mixtures=4`` form, next to the maps and operations per pixel of
:meth:`eqpdenet.pde.joint.JointInvariants.cost`. The second table times the jet of ``C`` channels
with the ``central`` stencil (3x3) and the ``gaussian`` one (sigma = 1 and 2: 9x9 and 17x17).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from _args import positive_int, run  # noqa: E402

from eqpdenet.pde import jet  # noqa: E402
from eqpdenet.pde.joint import JointInvariants  # noqa: E402


def median_seconds(functions: dict, rounds: int) -> dict[str, float]:
    """Median seconds per function over ``rounds`` interleaved rounds, after one untimed call of
    each: first-call costs (allocations, lazy initialisation) made ratios of up to 100 with one
    round."""
    times = {name: [] for name in functions}
    for function in functions.values():
        function()
    for _ in range(rounds):
        for name, function in functions.items():
            start = time.perf_counter()
            function()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def joint_table(channel_counts, batch: int, rounds: int) -> list[str]:
    lines = ["| C | form | maps | operations / pixel | ms (fwd+bwd) | time / mixtures=4 |",
             "|---|---|---|---|---|---|"]
    for channels in channel_counts:
        torch.manual_seed(0)
        jets = torch.randn(batch, channels, 6, 28, 28, requires_grad=True)
        modules = {f"se2, mixtures={k}": JointInvariants(channels, mixtures=k) for k in (2, 4)}
        modules["se2, all pairs"] = JointInvariants(channels)
        modules["sim2, mixtures=4"] = JointInvariants(channels, "sim2", mixtures=4)
        modules["sim2, all pairs"] = JointInvariants(channels, "sim2")

        def step(module, jets=jets):
            return lambda: module(jets).square().mean().backward()

        seconds = median_seconds({name: step(m) for name, m in modules.items()}, rounds)
        reference = seconds["se2, mixtures=4"]
        for name, module in modules.items():
            cost = module.cost()
            lines.append(f"| {channels} | {name} | {cost['maps']} | {cost['operations']:g} | "
                         f"{1000 * seconds[name]:.1f} | {seconds[name] / reference:.2f} |")
    return lines


def jet_table(channel_counts, batch: int, rounds: int) -> list[str]:
    lines = ["| C | stencil | kernel | ms (jet, fwd) | time / central |", "|---|---|---|---|---|"]
    for channels in channel_counts:
        images = torch.rand(batch, channels, 28, 28, generator=torch.Generator().manual_seed(0))
        variants = {"central": {}, "gaussian σ=1": {"stencil": "gaussian", "sigma": 1.0},
                    "gaussian σ=2": {"stencil": "gaussian", "sigma": 2.0}}
        functions = {name: (lambda o=options, u=images: jet(u, **o))
                     for name, options in variants.items()}
        seconds = median_seconds(functions, rounds)
        for name, options in variants.items():
            size = 3 if name == "central" else 2 * (4 * int(options["sigma"])) + 1
            lines.append(f"| {channels} | {name} | {size}x{size} | {1000 * seconds[name]:.1f} | "
                         f"{seconds[name] / seconds['central']:.2f} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=positive_int, default=None,
                        help="interleaved rounds (default 7, with --quick 3)")
    parser.add_argument("--batch", type=positive_int, default=8)
    args = parser.parse_args()
    rounds = args.rounds or (3 if args.quick else 7)
    start = time.perf_counter()
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, batch {args.batch}, 28x28, {rounds} rounds, "
          f"medians\n")
    print("\n".join(joint_table((4, 8, 16), args.batch, rounds)))
    print()
    print("\n".join(jet_table((1, 16), args.batch, rounds)))
    print(f"\n{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    run(main)
