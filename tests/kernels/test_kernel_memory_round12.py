"""The fused C++ kernel's memory (probe round 12): a per-thread work area that cannot be
allocated is a RuntimeError, not the end of the process (std::bad_alloc inside an OpenMP region
called std::terminate: exit 134, the user's interpreter gone); the states' gradient, which no
loss uses, is not filled with zeros as large as all the states."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

from eqpdenet.kernels import cpu
from eqpdenet.pde import PDELayer

pytestmark = pytest.mark.skipif(not cpu.is_available(), reason="the C++ kernel is not built here")

#: A process whose address space is limited to what it holds plus 600 MB: the 3000 x 3000 image
#: and its output fit, the kernel's work area (about 160 bytes per pixel and thread) does not.
_LIMITED = textwrap.dedent("""
    import os, resource, torch
    from eqpdenet.kernels import cpu
    from eqpdenet.pde import PDELayer
    torch.set_num_threads(1)
    cpu.load_extension()
    layer = PDELayer.build(["se2"], backend="fused").eval()
    u = torch.rand(1, 1, 3000, 3000)
    with open("/proc/self/statm") as handle:
        used = int(handle.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    resource.setrlimit(resource.RLIMIT_AS, (used + 600 * 2**20, resource.RLIM_INFINITY))
    try:
        with torch.no_grad():
            layer(u)
        print("NO ERROR")
    except RuntimeError as error:
        print("RAISED", " ".join(str(error).split())[:300])
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS and /proc: Linux")
def test_a_work_area_that_cannot_be_allocated_is_a_runtime_error():
    done = subprocess.run([sys.executable, "-c", _LIMITED], capture_output=True, text=True,
                          timeout=600, env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    assert "terminate called" not in done.stderr
    assert done.stdout.strip().startswith("RAISED euler_evolve: cannot allocate the per-thread "
                                          "working memory"), done.stdout


def test_a_loss_of_the_states_alone_gives_no_gradient_and_no_zero_fill():
    """The backward gets None for outputs no loss uses (set_materialize_grads(False)): before, a
    zero gradient as large as all the stored states was allocated for it to ignore, and a loss
    of the states alone (which carry no gradient) ran the whole backward on zeros."""
    from eqpdenet.kernels.op import operator_arguments  # the layer's own call of the operator

    layer = PDELayer.build(["se2"], T=0.3, dt=0.1, backend="fused")
    specs = layer.kernel_specs()
    u = torch.rand(2, 1, 12, 12, requires_grad=True)
    out, states, _ = torch.ops.eqpdenet.euler_evolve(**operator_arguments(u, specs, True))
    assert states.shape == (2, len(specs), 1, 3, 12, 12)
    assert states.requires_grad
    states.sum().backward(retain_graph=True)
    assert u.grad is None  # zeros before: the backward ran on a zero-filled gradient
    out.sum().backward()
    reference = u.detach().clone().requires_grad_(True)
    torch.ops.eqpdenet.euler_evolve(**operator_arguments(reference, specs, True))  # warm
    layer.evolve_reference(reference).sum().backward()
    torch.testing.assert_close(u.grad, reference.grad, rtol=1e-4, atol=1e-5)
