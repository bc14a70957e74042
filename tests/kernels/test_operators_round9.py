"""The paper operator's metadata cache shared by threads (round 9): two threads serving models
of many configurations looked an entry up while another evicted it (KeyError). A guard, not a
proof: without the lock the interleaving that fails is likely under a tiny switch interval, but
not certain; with it no interleaving can fail."""

from __future__ import annotations

import sys
import threading

import torch

from eqpdenet.kernels.op import _METADATA_SIZE, PDESpec, _metadata


def spec(i: int) -> PDESpec:
    stencil = torch.zeros(6, 3, 3)
    stencil[0, 1, 1] = 1.0
    return PDESpec("p", "se2", "replicate", stencil, 1e-2, "absolute", ((i % 7, 0),),
                   torch.zeros(1), torch.zeros(1), 0.1, 1, True)


def test_threads_evicting_each_others_entries_get_their_own_metadata():
    specs = [spec(i) for i in range(3 * _METADATA_SIZE)]  # more than the cache holds
    errors, wrong = [], []

    def work(offset: int) -> None:
        try:
            for _ in range(10):
                for i in range(len(specs)):
                    index = (i + offset) % len(specs)
                    monomials, stencils = _metadata([specs[index]], torch.device("cpu"))
                    if monomials[0, 0, 0] != index % 7 or stencils[0, 0, 1, 1] != 1.0:
                        wrong.append(index)
        except Exception as error:  # noqa: BLE001 - reported by the test
            errors.append(repr(error))

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        threads = [threading.Thread(target=work, args=(k * 37,)) for k in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
    finally:
        sys.setswitchinterval(interval)
    assert errors == [] and wrong == []
