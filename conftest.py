"""pytest set-up that must happen before any test or source module is imported.

``--doctest-modules`` imports every module of ``src/eqpdenet``, and Triton decides when a module
of kernels is imported whether they are compiled or interpreted. So the choice is made here,
first: without a CUDA GPU, ``TRITON_INTERPRET=1`` (unless set otherwise), and the Triton kernels
run on CPU tensors in Triton's interpreter (``tests/kernels/test_triton_kernel.py``). Triton is
an optional dependency: without it, its kernel module is left out of the doctest collection.
"""

from __future__ import annotations

import importlib.util
import os

import torch

if importlib.util.find_spec("triton") is None:
    collect_ignore = ["src/eqpdenet/kernels/triton_euler.py", "src/eqpdenet/kernels/triton_m2.py"]
elif not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
