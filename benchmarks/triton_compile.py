"""Compile the Triton kernels of the fused PDE evolution for a GPU without having one.

    PYTHONPATH=src python benchmarks/triton_compile.py            # every variant, sm_90
    PYTHONPATH=src python benchmarks/triton_compile.py --quick    # the four CI compiles
    PYTHONPATH=src python benchmarks/triton_compile.py --m2       # the M2 kernels, every stage
    PYTHONPATH=src python benchmarks/triton_compile.py --m2 --quick   # the four M2 CI compiles

Triton's interpreter (the CPU tests) accepts code that the compiler rejects, and shows nothing
of register pressure; this compiles each kernel variant with the installed Triton for a target
architecture (default sm_90, the H100/H200) down to a cubin, and prints the registers per thread
and the local-memory stack (spills) read from the cubin by the ``cuobjdump`` Triton ships.
Needs no GPU; ``TRITON_INTERPRET`` must be unset. Images 28 x 28 (the shapes are compile-time
constants of the kernels). With ``--m2``, the kernels of :mod:`eqpdenet.kernels.triton_m2` at
the shapes of the default LiftedPDENet's stages (N = 8 orientations, sigma = 1 pixel: 9 taps;
28 x 28 with 8 channels, 14 x 14 with 16, 7 x 7 with 24; as many hidden channels), with the
launch configuration the launchers would choose (``--quick``: the first stage in float32).

Prints one line per variant: registers per thread, stack bytes and the compile seconds. Every
compile is timed in a fresh Triton cache (``TRITON_CACHE_DIR`` set to a temporary folder for the
run, removed afterwards): with the user's cache a second run would time cache hits (0.0 s), and
fill ``~/.triton/cache``.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import re
import subprocess
import sys
import tempfile
import time

if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
    sys.exit("unset TRITON_INTERPRET: interpreted kernels cannot be compiled")

import torch  # noqa: E402
import triton  # noqa: E402
from _args import power_of_two, run  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from eqpdenet.kernels import triton_euler, triton_m2  # noqa: E402

POINTERS = {"first_bad_ptr": "*i32", "recipe_ptr": "*i64", "stencil_ptr": "*fp64",
            "ipar_ptr": "*i32", "partial_ptr": "*fp64"}


#: The largest ``--block`` (a power of 2: ``tl.arange`` takes no other) tried: it compiles,
#: spilling registers as from 1024 (sm_90); larger blocks were never tried.
LARGEST_BLOCK = 4096
#: CUDA's limit of 1024 threads per block.
MOST_WARPS = 32


@contextlib.contextmanager
def fresh_cache():
    """``TRITON_CACHE_DIR`` set to a new temporary folder (removed on leaving, also on an error);
    the variable as it was restored."""
    saved = os.environ.get("TRITON_CACHE_DIR")
    with tempfile.TemporaryDirectory(prefix="triton-compile-") as folder:
        os.environ["TRITON_CACHE_DIR"] = folder
        try:
            yield folder
        finally:
            if saved is None:
                os.environ.pop("TRITON_CACHE_DIR", None)
            else:
                os.environ["TRITON_CACHE_DIR"] = saved


def compile_kernel(kernel, dtype: str, constexprs: dict, arch: int, num_warps: int,
                   pointers: dict | None = None) -> dict:
    """Compile one variant; returns its registers, stack bytes and compile seconds."""
    pointers = POINTERS if pointers is None else pointers
    signature = {}
    for name in kernel.arg_names:
        if name in constexprs:
            signature[name] = "constexpr"
        elif name.endswith("_ptr"):
            signature[name] = pointers.get(name, "*" + dtype)
        else:
            signature[name] = "i32"
    start = time.perf_counter()
    options = {"num_warps": num_warps, "num_stages": 1, "enable_fp_fusion": True}  # as launched
    compiled = triton.compile(ASTSource(fn=kernel, signature=signature, constexprs=constexprs),
                              target=GPUTarget("cuda", arch, 32), options=options)
    seconds = time.perf_counter() - start
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    usage = ""
    if os.path.exists(tool):
        with tempfile.NamedTemporaryFile(suffix=".cubin") as cubin:
            cubin.write(compiled.asm["cubin"])
            cubin.flush()
            usage = subprocess.run([tool, "--dump-resource-usage", cubin.name],
                                   capture_output=True, text=True).stdout
    registers = re.search(r"REG:(\d+)", usage)
    stack = re.search(r"STACK:(\d+)", usage)
    return {"seconds": seconds, "registers": int(registers.group(1)) if registers else None,
            "stack": int(stack.group(1)) if stack else None}


def m2_variants(size: int, channels: int, orientations: int = 8, taps: int = 9):
    """(name, kernel, constexprs, num_warps) of the four M2 kernels at one stage's shape, as the
    launchers of :mod:`eqpdenet.kernels.triton_m2` configure them (boundary replicate)."""
    m2 = triton_m2
    rows, lanes = m2._bands(size, size, None, None)
    radius = taps // 2
    cuda = torch.device("cuda")
    band_wide = m2._wide(3 * (rows + 2 * radius) * size, lanes, cuda)
    common = {"N": orientations, "H": size, "W": size, "KT": taps, "BOUNDARY": 0}
    forward = {**common, "TR": rows, "BL": lanes, "XBL": band_wide,
               "OB": m2._out_block(channels, lanes, m2.OUT_BLOCK, None)}
    back_lanes = min(m2.BLOCK, triton.next_power_of_2(size * size))
    padded = size + 2 * radius
    backward = {**common, "BL": back_lanes,
                "XBL": m2._wide(max(3 * padded * size, size * padded), back_lanes, cuda),
                "OB": m2._out_block(channels, back_lanes, m2.GRAD_BLOCK, None), "ADD": True,
                "XWS": max(9 * padded * size, size * padded)}
    return [("mix forward", m2._forward_kernel, {**forward, "STEP": False}, m2._warps(lanes)),
            ("step forward", m2._forward_kernel, {**forward, "STEP": True}, m2._warps(lanes)),
            ("step hidden", m2._hidden_backward_kernel, forward, m2._warps(lanes)),
            ("backward", m2._mix_backward_kernel, backward, m2._warps(back_lanes))]


def main_m2(args) -> int:
    stages = [(28, 8)] if args.quick else [(28, 8), (14, 16), (7, 24)]
    dtypes = ("fp32",) if args.quick else ("fp32", "fp64")
    print(f"triton {triton.__version__}, sm_{args.arch}, M2 kernels (N = 8, 9 taps)")
    for (size, channels), dtype in itertools.product(stages, dtypes):
        for name, kernel, constexprs, warps in m2_variants(size, channels):
            result = compile_kernel(kernel, dtype, constexprs, args.arch, warps,
                                    {"partial_ptr": "*fp64"})
            print(f"sm_{args.arch} m2 {name:12s} {dtype} {size:2d}x{size:<2d} C=O={channels:<2d} "
                  f"{warps} warps  registers {result['registers']} stack {result['stack']} B  "
                  f"({result['seconds']:.1f} s)")
    return 0


#: NVIDIA compute capabilities (x 10) from Volta on that this Triton compiles the kernels for
#: (each tried with this script and Triton 3.9; its ptxas refuses sm_101). Any other value reached
#: LLVM, which aborted the process ("LLVM ERROR: Cannot select: intrinsic ...").
ARCHITECTURES = (70, 72, 75, 80, 86, 87, 89, 90, 100, 103, 120, 121)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, default=90, choices=ARCHITECTURES, metavar="ARCH",
                        help=f"compute capability x 10, one of {', '.join(map(str, ARCHITECTURES))}")
    parser.add_argument("--quick", action="store_true",
                        help="linear F recomputed and polynomial F stored, float32 only")
    parser.add_argument("--block", type=power_of_two(1, LARGEST_BLOCK), default=triton_euler.MAX_BLOCK,
                        help=f"pixels per block, a power of 2 up to {LARGEST_BLOCK}")
    parser.add_argument("--num-warps", type=power_of_two(1, MOST_WARPS), default=4,
                        help=f"a power of 2 up to {MOST_WARPS}")
    parser.add_argument("--m2", action="store_true", help="the M2 kernels instead")
    args = parser.parse_args()
    with fresh_cache():
        return main_m2(args) if args.m2 else main_euler(args)


def main_euler(args) -> int:
    shape = {"H": 28, "W": 28, "BLOCK": args.block}
    if args.quick:
        variants = [("fp32", True, False), ("fp32", False, True)]
    else:
        variants = list(itertools.product(("fp32", "fp64"), (True, False), (False, True)))
    print(f"triton {triton.__version__}, sm_{args.arch}, block {args.block}, "
          f"{args.num_warps} warps")
    for dtype, linear, stored in variants:
        for name, kernel, flags in (
                ("forward", triton_euler._forward_kernel,
                 {"LINEAR": linear, "STORE": stored, "CHECK": True}),
                ("backward", triton_euler._backward_kernel, {"LINEAR": linear, "STORED": stored})):
            result = compile_kernel(kernel, dtype, {**shape, **flags}, args.arch, args.num_warps)
            print(f"sm_{args.arch} {name:8s} {dtype} {'linear' if linear else 'polynomial':10s} "
                  f"{'stored' if stored else 'recomputed':10s} registers {result['registers']} "
                  f"stack {result['stack']} B  ({result['seconds']:.1f} s)")
    return 0


if __name__ == "__main__":
    run(main)
