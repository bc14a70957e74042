"""The public warps read the host once per call, their parameters' checks included.

``rotate``, ``rotate_about_mass``, ``scale`` and ``translate`` checked their own parameter (a
host read: one synchronisation on a GPU) and then ``affine_warp`` read again; ``scale`` read a
third time for a zero factor. Each now reads once where the parameters are good, and works out
the message naming its own parameter only where that read finds a fault. Counted here by the
tensors turned into Python values (``bool``, ``item``, ``tolist``, ``int``, ``float``): the ways
a host read happens in this code.
"""

from __future__ import annotations

import contextlib

import pytest
import torch

from eqpdenet.errors import InputError
from eqpdenet.geometry import affine_warp, rotate, rotate_about_mass, scale, translate


@contextlib.contextmanager
def counted_reads():
    counts = {"reads": 0}
    names = ("__bool__", "item", "tolist", "__int__", "__float__", "__index__")
    originals = {name: getattr(torch.Tensor, name) for name in names}

    def counting(original):
        def read(self, *args, **kwargs):
            counts["reads"] += 1
            return original(self, *args, **kwargs)
        return read

    for name, original in originals.items():
        setattr(torch.Tensor, name, counting(original))
    try:
        yield counts
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)


def images(batch=3, size=9):
    return torch.rand(batch, 1, size, size, generator=torch.Generator().manual_seed(1))


WARPS = {
    "rotate, a float": lambda u: rotate(u, 0.3),
    "rotate, one angle per image": lambda u: rotate(u, torch.tensor([0.1, 0.2, 0.3])),
    "rotate_about_mass": lambda u: rotate_about_mass(u, torch.tensor([0.1, 0.2, 0.3])),
    "scale, a float": lambda u: scale(u, 1.2),
    "scale, one factor per image": lambda u: scale(u, torch.tensor([0.9, 1.1, -1.2])),
    "translate": lambda u: translate(u, torch.tensor([1.5, -0.5])),
    "affine_warp": lambda u: affine_warp(u, torch.tensor([[1.0, 0.2], [0.0, 1.0]]),
                                         torch.tensor([0.5, 0.0])),
}


@pytest.mark.parametrize("name", list(WARPS))
def test_one_host_read_per_warp(name):
    u = images()
    with counted_reads() as counts:
        WARPS[name](u)
    # rotate_about_mass has no host read of its own: its centres stay on the device
    assert counts["reads"] == 1, f"{name}: {counts['reads']} host reads"


BAD = {
    "angle NaN": (lambda u: rotate(u, float("nan")), r"^angle must be finite, got nan$"),
    "angle inf for image 1": (lambda u: rotate(u, torch.tensor([0.0, float("inf"), 0.0])),
                              r"^angle must be finite, got inf for image 1 \(1 of 3 images\)$"),
    "angle about the mass": (lambda u: rotate_about_mass(u, float("-inf")),
                             r"^angle must be finite, got -inf$"),
    "factor 0": (lambda u: scale(u, 0.0), r"^factor must be non-zero .*got 0$"),
    "factor 0 for image 2": (lambda u: scale(u, torch.tensor([1.0, 2.0, 0.0])),
                             r"^factor must be non-zero .*got 0 for image 2$"),
    "factor below float32": (lambda u: scale(u, 1e-50),
                             r"got 0 \(in float32, the images' working dtype\)$"),
    "factor NaN": (lambda u: scale(u, float("nan")), r"^factor must be finite, got nan$"),
    "factor beyond float32": (lambda u: scale(u, 1e39),
                              r"^factor must be finite, got inf \(in float32, the images' "
                              r"working dtype\)$"),
    "shift NaN": (lambda u: translate(u, torch.tensor([0.0, float("nan")])),
                  r"^shift must be finite, got \[0\.0, nan\]$"),
}


@pytest.mark.parametrize("name", list(BAD))
def test_the_fault_is_named_by_the_callers_parameter(name):
    call, message = BAD[name]
    with pytest.raises(InputError, match=message):
        call(images())



def test_a_map_without_inverse_is_its_own_error_type(monkeypatch):
    import eqpdenet.data.scenarios as sc
    from eqpdenet.errors import ConfigError, SingularMapError

    with pytest.raises(SingularMapError, match="^factor must be non-zero"):
        scale(images(), 0.0)
    with pytest.raises(SingularMapError, match="^matrix must be invertible"):
        affine_warp(images(), torch.tensor([[1.0, 2.0], [0.5, 1.0]]))
    # apply_scenario tells a singular draw from an overflowing one by the error's type (it
    # compared the text); a draw invertible in float64, where it is checked, rounds to 0 here
    monkeypatch.setattr(sc.SCENARIOS, "_items", dict(sc.SCENARIOS._items))

    def tiny(num, generator):
        return sc.AffineDraw(torch.eye(2, dtype=torch.float64).expand(num, 2, 2) * 1e-50,
                             torch.zeros(num, 2, dtype=torch.float64))

    sc.register_scenario("tiny-host-reads", tiny)
    with pytest.raises(ConfigError, match=r"^scenario 'tiny-host-reads' \(seed 0\): a matrix of "
                                          r"its draw cannot be inverted in torch\.float32"):
        sc.apply_scenario("tiny-host-reads", images(), 0)
