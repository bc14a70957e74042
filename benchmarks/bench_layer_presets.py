"""Training-step throughput of the fused kernel per layer: the paper's (absolute ratios), the
paper's with covariant ratios, and the se2_sim2 preset.

    OMP_NUM_THREADS=1 python benchmarks/bench_layer_presets.py [--rounds 5]

One forward and backward of the PDE layer (28x28 images, batch 128), the variants interleaved
over ``--rounds`` rounds in one process; median images/s and the ratio to the paper's layer.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import warnings

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
from _args import positive_int, run  # noqa: E402

from eqpdenet.pde import LayerConfig, PDELayer  # noqa: E402

VARIANTS = {
    "paper (absolute)": LayerConfig.paper(),
    "paper, covariant ratios": LayerConfig.paper(ratio_regularisation="covariant"),
    "se2_sim2 (covariant)": LayerConfig.preset("se2_sim2"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=positive_int, default=5)
    parser.add_argument("--batch", type=positive_int, default=128)
    args = parser.parse_args()
    images = torch.rand(args.batch, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    steps = {}
    for name, config in VARIANTS.items():
        torch.manual_seed(0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            layer = PDELayer.from_config(LayerConfig(**{**vars(config), "init": "normal",
                                                        "init_scale": 0.01,
                                                        "backend": "fused"}))

        def step(layer=layer):
            layer(images).square().mean().backward()

        step()  # build/load the kernel, warm up
        steps[name] = step
    rates = {name: [] for name in steps}
    for _ in range(args.rounds):
        for name, step in steps.items():
            start, count = time.perf_counter(), 0
            while time.perf_counter() - start < 0.5:
                step()
                count += 1
            rates[name].append(count * args.batch / (time.perf_counter() - start))
    base = statistics.median(rates["paper (absolute)"])
    print(f"{torch.get_num_threads()} thread(s), batch {args.batch}, {args.rounds} rounds")
    print("| layer | images/s (median) | ratio to paper |")
    print("|---|---:|---:|")
    for name, values in rates.items():
        median = statistics.median(values)
        print(f"| {name} | {median:.0f} | {median / base:.2f} |")


if __name__ == "__main__":
    run(main)
