"""Compile the Triton kernels of the fused PDE evolution for a GPU without having one.

    PYTHONPATH=src python benchmarks/triton_compile.py            # every variant, sm_90
    PYTHONPATH=src python benchmarks/triton_compile.py --quick    # the four CI compiles

Triton's interpreter (the CPU tests) accepts code that the compiler rejects, and shows nothing
of register pressure; this compiles each kernel variant with the installed Triton for a target
architecture (default sm_90, the H100/H200) down to a cubin, and prints the registers per thread
and the local-memory stack (spills) read from the cubin by the ``cuobjdump`` Triton ships.
Needs no GPU; ``TRITON_INTERPRET`` must be unset. Images 28 x 28 (the shapes are compile-time
constants of the kernels).
"""

from __future__ import annotations

import argparse
import itertools
import os
import re
import subprocess
import sys
import tempfile
import time

if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
    sys.exit("unset TRITON_INTERPRET: interpreted kernels cannot be compiled")

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from eqpdenet.kernels import triton_euler  # noqa: E402

POINTERS = {"first_bad_ptr": "*i32", "recipe_ptr": "*i64", "stencil_ptr": "*fp64",
            "ipar_ptr": "*i32", "partial_ptr": "*fp64"}


def compile_kernel(kernel, dtype: str, constexprs: dict, arch: int, num_warps: int) -> dict:
    """Compile one variant; returns its registers, stack bytes and compile seconds."""
    signature = {}
    for name in kernel.arg_names:
        if name in constexprs:
            signature[name] = "constexpr"
        elif name.endswith("_ptr"):
            signature[name] = POINTERS.get(name, "*" + dtype)
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, default=90, help="compute capability x 10")
    parser.add_argument("--quick", action="store_true",
                        help="linear F recomputed and polynomial F stored, float32 only")
    parser.add_argument("--block", type=int, default=triton_euler.MAX_BLOCK)
    parser.add_argument("--num-warps", type=int, default=4)
    args = parser.parse_args()
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
    sys.exit(main())
