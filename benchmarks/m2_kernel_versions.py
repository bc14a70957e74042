"""The fused M2 kernel of a git revision against the working tree's, side by side in one process.

Both sources of ``csrc/m2_invariants.cpp`` are built as separate extensions (the file registers
no operator itself, so two builds can be loaded at once), then the forward and backward passes
of ``m2_mix_invariants`` and the backwards of ``m2_euler_step`` and ``m2_update`` are timed,
interleaved, at the default lifted model's stage shapes (batch 64, 8 orientations: 8 channels on
28x28, 16 on 14x14, 24 on 7x7), one thread, CPU time (robust to other jobs on a shared machine).
Prints the best of ``--repeats`` rounds, the ratio new/old, and the largest relative difference
of the results::

    OMP_WAIT_POLICY=PASSIVE python benchmarks/m2_kernel_versions.py HEAD~1

The first run builds both extensions (a few minutes) into ``--build``. ``--new-cflags`` adds
compiler flags to the new build only, so that one source can be compared with itself under other
flags (``HEAD`` as the revision)::

    OMP_WAIT_POLICY=PASSIVE python benchmarks/m2_kernel_versions.py HEAD \
        --new-cflags=-mprefer-vector-width=512
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import time
from pathlib import Path

import torch
from _args import positive_int, run
from torch.utils import cpp_extension

from eqpdenet.kernels.cpu import CFLAGS, M2_SOURCE
from eqpdenet.pde.m2 import orientation_frame, separable_stencils

SHAPES = [(8, 28), (16, 14), (24, 7)]


def stage_fields(channels: int, size: int, generator: torch.Generator, count: int) -> list:
    """``count`` random fields ``(64, channels, 8, size, size)`` at one stage shape (batch 64,
    8 orientations), drawn in order from ``generator``."""
    return [torch.randn(64, channels, 8, size, size, generator=generator) for _ in range(count)]


def build(name: str, source: str, root: Path, cflags: list[str]):
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "m2_invariants.cpp"
    if not path.exists() or path.read_text() != source:
        path.write_text(source)
    return cpp_extension.load(name=name, sources=[str(path)], extra_cflags=[*CFLAGS, *cflags],
                              extra_ldflags=["-fopenmp"], build_directory=str(folder))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("revision", help="git revision of the old kernel, e.g. HEAD~1")
    parser.add_argument("--repeats", type=positive_int, default=3)
    parser.add_argument("--build", type=Path, default=Path("/tmp/eqpdenet-m2-versions"))
    parser.add_argument("--new-cflags", default="", help="extra compiler flags of the new build, "
                        "separated by spaces")
    args = parser.parse_args()
    torch.set_num_threads(1)
    root = M2_SOURCE.resolve().parents[0]
    shown = subprocess.run(["git", "-C", str(root), "show", f"{args.revision}:./{M2_SOURCE.name}"],
                           capture_output=True, text=True)
    if shown.returncode != 0:
        parser.error(f"revision {args.revision!r}: git show failed: "
                     f"{(shown.stderr.strip().splitlines() or ['?'])[-1]}")
    old_source = shown.stdout
    new_source = M2_SOURCE.read_text()
    new_flags = args.new_cflags.split()
    versions = {}
    for label, text, flags in (("old", old_source, []), ("new", new_source, new_flags)):
        digest = hashlib.sha256((text + " ".join(flags)).encode()).hexdigest()[:12]
        versions[label] = build(f"m2_{label}_{digest}", text, args.build, flags)
    stencils, frame = separable_stencils((1.0,)), orientation_frame(8)
    generator = torch.Generator().manual_seed(0)
    times: dict = {}
    results: dict = {}
    for _ in range(args.repeats):
        for channels, size in SHAPES:
            u, grad = stage_fields(channels, size, generator, 2)
            weight = torch.randn(channels, channels, 10, generator=generator)
            w1 = 0.1 * torch.randn(channels, channels, 10, generator=generator)
            b1, b2 = torch.randn(channels, generator=generator), torch.randn(channels,
                                                                             generator=generator)
            scale, shift = torch.rand(channels, generator=generator), torch.randn(
                channels, generator=generator)
            w2 = torch.randn(channels, channels, generator=generator)
            for name, ext in versions.items():
                start = time.process_time()
                forward = ext.forward(u, weight, stencils, frame, "replicate")
                begin = time.process_time()
                mix = ext.backward(grad, u, weight, stencils, frame, "replicate")
                middle = time.process_time()
                step = ext.step_backward(grad, u, w1, b1, w2, b2, stencils, frame, "replicate",
                                         0.5)
                end = time.process_time()
                update = ext.update_backward(grad, forward, scale, shift, w2, b2, 0.5)
                last = time.process_time()
                times.setdefault((channels, size, name), []).append(
                    (middle - begin, end - middle, begin - start, last - end))
                results[(channels, size, name)] = [forward, *mix, *step, *update]
    print(f"old: {args.revision}, new: the working tree; best of {args.repeats}, ms of CPU time")
    for channels, size in SHAPES:
        old, new = times[(channels, size, "old")], times[(channels, size, "new")]
        mix_old, mix_new = min(t[0] for t in old), min(t[0] for t in new)
        step_old, step_new = min(t[1] for t in old), min(t[1] for t in new)
        forward_old, forward_new = min(t[2] for t in old), min(t[2] for t in new)
        update_old, update_new = min(t[3] for t in old), min(t[3] for t in new)
        difference = max(float((a - b).abs().max() / a.abs().max()) for a, b in zip(
            results[(channels, size, "old")], results[(channels, size, "new")], strict=True))
        print(f"C={channels:2d} {size:2d}x{size:<2d} mix forward {1e3 * forward_old:6.1f} -> "
              f"{1e3 * forward_new:6.1f} ({forward_new / forward_old:.2f}x)  "
              f"backward {1e3 * mix_old:6.1f} -> "
              f"{1e3 * mix_new:6.1f} ({mix_new / mix_old:.2f}x)  step backward "
              f"{1e3 * step_old:6.1f} -> {1e3 * step_new:6.1f} ({step_new / step_old:.2f}x)  "
              f"update backward {1e3 * update_old:5.1f} -> {1e3 * update_new:5.1f} "
              f"({update_new / update_old:.2f}x)  "
              f"largest relative difference {difference:.1e}")


if __name__ == "__main__":
    run(main)
