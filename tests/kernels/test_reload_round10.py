"""Round 10: the modules that register operators with PyTorch refuse ``importlib.reload`` in one
clear error, before anything of them is defined again, and keep working."""

from __future__ import annotations

import importlib
import sys

import pytest

MODULES = ["eqpdenet.kernels.op", "eqpdenet.kernels.m2_op", "eqpdenet.kernels.cpu",
           "eqpdenet.kernels.cuda"]
# What a refused reload may rebind: the attributes importlib sets, the docstring, the guard itself.
REBOUND = {"__spec__", "__loader__", "__file__", "__cached__", "__package__", "__doc__",
           "__builtins__", "refuse_reload"}


@pytest.mark.parametrize("name", MODULES)
def test_a_kernel_module_refuses_a_reload_and_is_left_as_it_was(name):
    module = importlib.import_module(name)
    before = dict(vars(module))
    with pytest.raises(ImportError, match=r"cannot be reloaded.*[Rr]estart the Python process"):
        importlib.reload(module)
    assert sys.modules[name] is module
    after = vars(module)
    changed = sorted(key for key, value in before.items()
                     if key not in REBOUND and after.get(key) is not value)
    assert changed == [], f"a refused reload redefined {changed}"
    # (pytest's assertion rewriting, where it loads the module, adds its helpers, named "@...")
    assert {key for key in set(after) - set(before) if not key.startswith("@")} <= REBOUND


def test_the_registrations_survive_a_refused_reload():
    import torch

    from eqpdenet.kernels import m2_op, op

    implementations = op.IMPLEMENTATIONS
    for name in MODULES:
        with pytest.raises(ImportError):
            importlib.reload(importlib.import_module(name))
    assert op.IMPLEMENTATIONS is implementations and "cpu" in op.IMPLEMENTATIONS
    assert "cpu" in m2_op.M2_IMPLEMENTATIONS and "cpu" in m2_op.M2_UPDATE_IMPLEMENTATIONS
    assert hasattr(torch.ops.eqpdenet, "euler_evolve")
    assert hasattr(torch.ops.eqpdenet, "m2_mix_invariants")
