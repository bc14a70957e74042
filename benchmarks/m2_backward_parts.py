"""Where the fused M2 operator's backward pass spends its time: the working tree's
``csrc/m2_invariants.cpp`` built as it is and three times with one part of ``backward_image``
left out (the weight gradient's outer products, the product ``W^T gZ``, the adjoint
convolutions of the Gaussian jet), each variant timed against the whole, interleaved, at the
default lifted model's stage shapes (batch 64, 8 orientations: 8 channels on 28x28, 16 on 14x14,
24 on 7x7), one thread, CPU time. A part's cost is the whole's time less the variant's; the
variants compute wrong gradients and serve only this measurement::

    OMP_WAIT_POLICY=PASSIVE python benchmarks/m2_backward_parts.py

The first run builds the four extensions (a minute or two each) into ``--build``.
"""

from __future__ import annotations

import argparse
import hashlib
import time
from pathlib import Path

import torch
from _args import positive_int, run
from torch.utils import cpp_extension

from eqpdenet.kernels.cpu import CFLAGS, M2_SOURCE
from eqpdenet.pde.m2 import orientation_frame, separable_stencils

SHAPES = [(8, 28), (16, 14), (24, 7)]

#: Each part of the backward pass: the text of the source that computes it (left out).
PARTS = {
    "outer products (weight gradient)": "    outer<T>(gZrow, Irow, O, CJ, L, lanes);\n",
    "W^T gZ (invariants' gradient)":
        "    gemm<T>(weight, 1, CJ, gZrow, CJ, O, L, gIrow);  // W^T gZ\n",
    "adjoint convolutions (jet)": (
        "  M2_OVER_MAPS(y_pass_adjoint_chunks, N, gJ, taps, s, X);  // X reused as gX\n"
        "  fold_padded_rows(s, X);\n"
        "  M2_OVER_MAPS(x_pass_adjoint_chunks, N, X, taps, s, P);   // P reused as gP\n"
        "  pad_transpose_adjoint(P, s, gu);\n"),
}


def build(label: str, source: str, root: Path):
    digest = hashlib.sha256(source.encode()).hexdigest()[:10]
    folder = root / f"{label}_{digest}"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "m2_invariants.cpp"
    if not path.exists() or path.read_text(encoding="utf-8") != source:
        path.write_text(source, encoding="utf-8")
    return cpp_extension.load(name=f"m2_part_{label}_{digest}", sources=[str(path)],
                              extra_cflags=CFLAGS, extra_ldflags=["-fopenmp"],
                              build_directory=str(folder))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=positive_int, default=5)
    parser.add_argument("--build", type=Path, default=Path("/tmp/eqpdenet-m2-parts"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    source = M2_SOURCE.read_text(encoding="utf-8")
    versions = {"whole": build("whole", source, args.build)}
    for index, (part, text) in enumerate(PARTS.items()):
        if source.count(text) != 1:
            parser.error(f"the source no longer holds the part {part!r} as this script knows "
                         f"it; update PARTS")
        versions[part] = build(f"without{index}", source.replace(text, ""), args.build)
    stencils, frame = separable_stencils((1.0,)), orientation_frame(8)
    generator = torch.Generator().manual_seed(0)
    times: dict = {}
    for _ in range(args.repeats):
        for channels, size in SHAPES:
            u = torch.randn(64, channels, 8, size, size, generator=generator)
            grad = torch.randn(64, channels, 8, size, size, generator=generator)
            weight = torch.randn(channels, channels, 10, generator=generator)
            for label, ext in versions.items():
                start = time.process_time()
                ext.backward(grad, u, weight, stencils, frame, "replicate")
                times.setdefault((channels, label), []).append(time.process_time() - start)
    print(f"m2_mix_invariants backward, best of {args.repeats}, ms of CPU time, one thread")
    for channels, size in SHAPES:
        whole = min(times[(channels, "whole")])
        parts = ", ".join(f"{part} {1e3 * (whole - min(times[(channels, part)])):.1f} "
                          f"({(whole - min(times[(channels, part)])) / whole:.0%})"
                          for part in PARTS)
        print(f"C={channels:2d} {size:2d}x{size:<2d} whole {1e3 * whole:6.1f}: {parts}")


if __name__ == "__main__":
    run(main)
