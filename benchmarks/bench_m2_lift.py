"""The lifted model's lift (:class:`eqpdenet.models.M2Lift`) two ways, side by side: by the jet's
moments (``backend="auto"``: the batch norms' statistics from the mean and covariance of the
Cartesian jet, then one matrix per orientation) and as its modules composed (``"reference"``:
the steered jet written out, batch norm, pointwise mix, batch norm).

Two measurements, interleaved, one thread, CPU time, best of ``--repeats`` after one untimed
call of each:

* the lift alone, forward and backward, batch 64, 28x28 images, at the benchmark models'
  options (8 orientations, 8 channels; plain, and relative as with ``boundary = "background"``);
* a whole training step (forward, cross-entropy, backward, Adam) of benchmark entries of
  ``--recipe``, the same model with its lift switched between the two, the fused kernels of the
  blocks unchanged.

Prints the times and the ratios (moments : composed)::

    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_m2_lift.py
    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_m2_lift.py --models lifted-centered lifted
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from _args import positive_int, run

from eqpdenet.app.config import BenchmarkConfig, build_model, load_toml
from eqpdenet.errors import ConfigError
from eqpdenet.models import M2Lift

BACKENDS = ("auto", "reference")


def lift_seconds(lift: M2Lift, images: torch.Tensor, probe: torch.Tensor) -> float:
    start = time.process_time()
    out = lift(images)
    torch.autograd.grad((out * probe).sum(), [images, *lift.parameters()])
    return time.process_time() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["lifted-centered"],
                        help="benchmark entries of --recipe")
    parser.add_argument("--recipe", type=Path, default=Path("configs/benchmark-full.toml"))
    parser.add_argument("--batch", type=positive_int, default=64)
    parser.add_argument("--repeats", type=positive_int, default=5)
    args = parser.parse_args()
    if not args.recipe.is_file():
        parser.error(f"--recipe {args.recipe}: no such file")
    try:
        config = load_toml(BenchmarkConfig, args.recipe)
        experiments = {name: config.experiment(name, 0) for name in args.models}
    except ConfigError as error:
        parser.error(str(error))
    without_lift = [name for name, e in experiments.items() if e.model.kind != "lifted_pde"]
    if without_lift:
        parser.error(f"--models {', '.join(without_lift)}: not lifted models (no M2 lift)")
    torch.set_num_threads(1)
    torch.manual_seed(0)
    images = torch.rand(args.batch, 1, 28, 28, requires_grad=True)
    probe = torch.randn(args.batch, 8, 8, 28, 28)
    lifts = {(relative, backend): M2Lift(1, 8, 8, 1.0, "zeros" if relative else "replicate",
                                         relative=relative, backend=backend)
             for relative in (False, True) for backend in BACKENDS}
    models = {name: build_model(experiment.model) for name, experiment in experiments.items()}
    optimizers = {name: torch.optim.Adam(model.parameters()) for name, model in models.items()}
    labels = torch.randint(0, 10, (args.batch,))
    steps_images = torch.rand(args.batch, 1, 28, 28)

    def train_step(name: str, backend: str) -> float:
        model, optimizer = models[name], optimizers[name]
        model.lift.backend = backend
        start = time.process_time()
        loss = F.cross_entropy(model(steps_images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return time.process_time() - start

    # untimed: the kernels' first build and call, and every lift's first-call costs (allocations,
    # lazy initialisation), which made ratios of up to 100 with one repeat
    for lift in lifts.values():
        lift_seconds(lift, images, probe)
    for name in models:
        for backend in BACKENDS:
            train_step(name, backend)
    times: dict = {}
    for _ in range(args.repeats):
        for key, lift in lifts.items():
            times.setdefault(("lift", *key), []).append(lift_seconds(lift, images, probe))
        for name in models:
            for backend in BACKENDS:
                times.setdefault(("step", name, backend), []).append(train_step(name, backend))
    print(f"ms of CPU time, one thread, batch {args.batch}, best of {args.repeats}")
    for relative in (False, True):
        best = {b: min(times[("lift", relative, b)]) for b in BACKENDS}
        print(f"lift {'relative' if relative else 'plain':8s} forward + backward: moments "
              f"{1e3 * best['auto']:6.1f}  composed {1e3 * best['reference']:6.1f}  ratio "
              f"{best['auto'] / best['reference']:.2f}")
    for name in models:
        best = {b: min(times[("step", name, b)]) for b in BACKENDS}
        print(f"training step {name}: lift by moments {1e3 * best['auto']:6.1f}  composed "
              f"{1e3 * best['reference']:6.1f}  ratio {best['auto'] / best['reference']:.2f}")


if __name__ == "__main__":
    run(main)
