"""``m2_update``'s per-thread buffers (round 13): a buffer that cannot be allocated is a
RuntimeError naming the operator, as for the other fused kernels (std::bad_alloc inside an OpenMP
region called std::terminate: exit 134, the user's interpreter gone)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from eqpdenet.kernels import cpu

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or cpu._M2.unavailable() is not None,
    reason="RLIMIT_AS and /proc: Linux; the M2 kernel must build here")

#: One point per channel and 4 million channels in z: z and w2 take 16 MB each, the buffer of
#: one thread (64 lanes per channel) 1 GB, more than the 600 MB left to the process.
_LIMITED = textwrap.dedent("""
    import os, resource, torch
    from eqpdenet.kernels import cpu
    import eqpdenet.kernels.m2_op  # registers the operators
    torch.set_num_threads(1)
    cpu.load_m2_extension()
    O = 4 * 2**20
    u, z = torch.rand(1, 1, 1, 1, 1), torch.rand(1, O, 1, 1, 1)
    scale, shift, w2, b2 = torch.ones(O), torch.zeros(O), torch.rand(1, O), torch.zeros(1)
    with open("/proc/self/statm") as handle:
        used = int(handle.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    resource.setrlimit(resource.RLIMIT_AS, (used + 600 * 2**20, resource.RLIM_INFINITY))
    for name, call in [
            ("forward", lambda: torch.ops.eqpdenet.m2_update(u, z, scale, shift, w2, b2, 0.1)),
            ("backward", lambda: torch.ops.eqpdenet.m2_update_backward(u, z, scale, shift, w2,
                                                                      b2, 0.1))]:
        try:
            call()
            print(name, "NO ERROR")
        except RuntimeError as error:
            print(name, "RAISED", " ".join(str(error).split())[:200])
""")


def test_m2_update_buffers_that_cannot_be_allocated_are_a_runtime_error():
    source = str(Path(__file__).resolve().parents[2] / "src")  # this checkout's package
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": source + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run([sys.executable, "-c", _LIMITED], capture_output=True, text=True,
                          timeout=600, env=env)
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    assert "terminate called" not in done.stderr
    lines = done.stdout.strip().splitlines()
    assert [line.split(" ", 2)[:2] for line in lines] == [["forward", "RAISED"],
                                                          ["backward", "RAISED"]], lines
    for line in lines:
        assert line.split(" ", 2)[2].startswith(
            "m2_update: cannot allocate the per-thread working memory"), line
