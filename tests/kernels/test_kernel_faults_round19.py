"""Four faults of the fused PDE kernels an outside probe found (round 19).

* F1: the fused path's caches (``op._metadata``, the cached ``stencil_is_supported``,
  ``check_stencil_form``'s, the M2 device copies) were keyed on the stencil tensor's identity
  and version counter, which a ``.data =`` assignment or an edit through numpy leaves as they
  were: the fused layer kept computing with the old stencil (or one it cannot handle), silently.
* F2: a ``ratio_eps`` of 0, negative, inf or NaN reached the C++ and Triton kernels (NaN on flat
  images, a negative one taken as its absolute value), where the reference refuses it.
* F3: a reflect layer on an image of one row or column warned that it took the reference ("on
  images of 1 pixel", for 1 x 5 too), which then refused the image.
* F4: a monomial recipe with real rows after a padding row ``(-1, -1)`` was taken, those rows
  dropped, silently.

The Triton checks run before any launch: they need Triton, neither a GPU nor its interpreter.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from eqpdenet.errors import ConfigError, InputError
from eqpdenet.kernels import cpu, m2_op, op
from eqpdenet.pde import PDELayer

needs_cpp = pytest.mark.skipif(not cpu.is_available(), reason="no C++ toolchain")

EPS_MESSAGE = "ratio regularisation eps must be positive and finite, got {}"


def layer(invariants=("se2",), **options) -> PDELayer:
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return PDELayer.build(list(invariants), T=0.2, dt=0.1, init="normal", init_scale=0.05,
                              init_noise=0.0, **options).double()


def image(height: int = 6, width: int = 6) -> torch.Tensor:
    return torch.rand(1, 1, height, width, dtype=torch.float64,
                      generator=torch.Generator().manual_seed(1))


def fused_and_reference(model: PDELayer, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    model.backend = "fused"
    fused = model(u)
    model.backend = "reference"
    return fused, model(u)


def arguments(invariants=("se2", "scaling")) -> dict:
    """The operator's named arguments for one PDE per set (absolute ratios), 2 images 5 x 5."""
    model = layer(invariants, rhs="linear", ratio_regularisation="absolute").float()
    u = torch.rand(2, 1, 5, 5, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return op.operator_arguments(u, model.kernel_specs(), False)


def triton_euler():
    pytest.importorskip("triton")
    from eqpdenet.kernels import triton_euler

    return triton_euler


def first_line(error: pytest.ExceptionInfo) -> str:
    return str(error.value).splitlines()[0]


# ----------------------------------------------------------------------------- F1: stale caches

# The jet weight (a buffer) changed without a new version: the values through .data, the
# storage through a .data assignment.
EDITS = {
    "data_assignment": lambda w: setattr(w, "data", w.data * 2.0),
    "numpy": lambda w: w.numpy().__setitem__(1, w.numpy()[1] * 2.0),
    "data_in_place": lambda w: w.data[3].mul_(2.0),
}


@needs_cpp
@pytest.mark.parametrize("edit", EDITS)
def test_the_fused_layer_computes_with_a_stencil_changed_without_a_new_version(edit):
    model = layer()
    u = image()
    weight = model.pdes[0].step.rhs.jet.weight
    before, _ = fused_and_reference(model, u)
    version = weight._version
    EDITS[edit](weight)
    assert weight._version == version  # unseen by the version counter
    fused, reference = fused_and_reference(model, u)
    assert not torch.equal(fused, before)  # the old stencil's result, before
    assert (fused - reference).abs().max().item() < 1e-12


def test_a_stencil_assigned_through_data_is_judged_again():
    weight = layer().pdes[0].step.rhs.jet.weight
    assert op.stencil_is_supported(weight) is True
    changed = weight.data.clone()
    changed[1, 0, 1, 1] = 0.5  # a centre tap on u_x: not the kernels' form
    weight.data = changed
    assert op.stencil_is_supported(weight) is False
    weight.numpy()[1, 0, 1, 1] = 0.0  # back to the form, through numpy
    assert op.stencil_is_supported(weight) is True


def test_stencils_edited_through_numpy_are_refused_by_the_form_check():
    stencils = arguments()["stencils"].clone()
    op.check_stencil_form("euler_evolve", stencils)  # judged and remembered
    stencils.numpy()[0, 1, 1, 1] = 0.5  # no new version
    with pytest.raises(InputError) as caught:
        op.check_stencil_form("euler_evolve", stencils)
    assert str(caught.value).startswith(
        "euler_evolve: stencils[0] is not of the form the fused kernels compute with (")


def test_the_metadata_follows_a_stencil_edited_through_numpy():
    stencil = torch.zeros(6, 1, 3, 3)
    stencil[0, 0, 1, 1] = 1.0
    spec = op.PDESpec("p", "se2", "replicate", stencil, 1e-2, "absolute", ((-1, 0),),
                      torch.zeros(1), torch.zeros(1), 0.1, 1, True)
    cpu_device = torch.device("cpu")
    _, first = op._metadata([spec], cpu_device)
    assert first[0, 0, 1, 1].item() == 1.0
    _, again = op._metadata([spec], cpu_device)
    assert again is first  # unchanged: the same entry, bit for bit
    stencil.numpy()[0, 0, 1, 1] = 3.0
    _, edited = op._metadata([spec], cpu_device)
    assert edited[0, 0, 1, 1].item() == 3.0
    stencil.data = torch.full((6, 1, 3, 3), 0.25)
    _, assigned = op._metadata([spec], cpu_device)
    assert torch.equal(assigned, torch.full((1, 6, 3, 3), 0.25, dtype=torch.float64))


def test_the_m2_device_copy_follows_a_table_edited_through_numpy():
    # the meta device stands for a GPU: the copy is made once per device and change
    meta = torch.device("meta")
    table = torch.ones(2, 3)
    copy = m2_op._on_device(table, meta)
    assert m2_op._on_device(table, meta) is copy
    table.numpy()[0, 0] = 5.0
    assert m2_op._on_device(table, meta) is not copy
    copy = m2_op._on_device(table, meta)
    table.data = torch.ones(2, 3)
    assert m2_op._on_device(table, meta) is not copy


# ----------------------------------------------------------------------------- F2: ratio_eps

BAD_EPS = [0.0, -0.5, math.inf, math.nan]


@needs_cpp
@pytest.mark.parametrize("invariants", ["scaling", "se2"])
@pytest.mark.parametrize("eps", BAD_EPS)
def test_the_fused_layer_refuses_a_ratio_eps_as_the_reference_does(invariants, eps):
    model = layer([invariants], ratio_regularisation="absolute")
    model.pdes[0].step.rhs.ratio_eps = eps
    u = torch.ones(1, 1, 5, 5, dtype=torch.float64)
    messages = []
    for backend in ("fused", "reference"):
        model.backend = backend
        with pytest.raises(ConfigError) as caught:
            model(u)
        messages.append(str(caught.value))
    assert messages == [EPS_MESSAGE.format(repr(eps))] * 2


def test_operator_arguments_refuse_a_ratio_eps_before_anything_runs():
    specs = layer(["scaling"]).kernel_specs()
    u = image()
    for eps in (*BAD_EPS, True):
        spec = op.PDESpec(**dict(vars(specs[0]), ratio_eps=eps))
        with pytest.raises(ConfigError) as caught:
            op.operator_arguments(u, [spec], False)
        assert str(caught.value) == EPS_MESSAGE.format(repr(eps))


@needs_cpp
@pytest.mark.parametrize("eps, shown", [(0.0, "0"), (-0.5, "-0.5"), (math.inf, "inf"),
                                        (math.nan, "nan")])
def test_the_cpp_operator_refuses_a_ratio_eps(eps, shown):
    args = dict(arguments(), ratio_eps=[0.1, eps])
    with pytest.raises(RuntimeError) as caught:
        torch.ops.eqpdenet.euler_evolve(**args)
    assert first_line(caught) == (f"fused_euler: ratio regularisation eps must be positive and "
                                  f"finite, got {shown} for PDE 1")


@pytest.mark.parametrize("eps", BAD_EPS)
def test_the_triton_launchers_refuse_a_ratio_eps(eps):
    kernels = triton_euler()
    args = dict(arguments(), ratio_eps=[0.1, eps])
    message = f"ratio regularisation eps must be positive and finite, got {eps!r} for PDE 1"
    with pytest.raises(ConfigError) as caught:
        kernels.forward(**args)
    assert str(caught.value) == f"euler_evolve: {message}"
    rest = {k: v for k, v in args.items() if k not in ("check_finite", "store_states")}
    with pytest.raises(ConfigError) as caught:
        kernels.backward(**rest, grad_out=torch.ones(2, 2, 1, 5, 5), states=torch.empty(0))
    assert str(caught.value) == f"euler_evolve_backward: {message}"


# ----------------------------------------------------------------------------- F3: reflect 1 x W


@pytest.mark.parametrize("shape", [(1, 5), (5, 1)])
def test_a_reflect_image_of_one_row_is_refused_without_a_warning(monkeypatch, shape):
    monkeypatch.setattr(op, "_warned", set())  # a warning said once per process: said again
    model = layer(boundary="reflect")
    model.backend = "auto"
    with warnings.catch_warnings(record=True) as caught_warnings:
        warnings.simplefilter("always")
        with pytest.raises(InputError) as caught:
            model(torch.rand(1, 1, *shape, dtype=torch.float64))
    assert str(caught.value) == (f"the 'reflect' boundary of a stencil of radius 1 needs images "
                                 f"of at least 2x2 pixels, got {shape[0]}x{shape[1]}")
    assert [str(w.message) for w in caught_warnings] == []


def test_the_reflect_reason_names_the_image_size():
    specs = layer(boundary="reflect").kernel_specs()
    reason = op.unsupported_reason(torch.rand(1, 1, 1, 5, dtype=torch.float64), specs)
    assert reason == "the reflect boundary needs images of at least 2x2 pixels, got 1x5"


# ----------------------------------------------------------------------------- F4: padding rows

SE2_LINEAR = ((-1, 0), (-1, 1), (-1, 2), (-1, 3), (-1, 4))


def test_operator_arguments_refuse_a_real_row_after_a_padding_row():
    spec = layer().kernel_specs()[0]
    assert spec.monomials == SE2_LINEAR
    u = image()
    for recipe, row, got in [
            (((-1, 0), (-1, -1), (-1, 2), (-1, 3), (-1, 4)), 2, (-1, 2)),
            (((-1, 0), (-1, 1), (-1, 2), (-1, 3), (2, -1)), 4, (2, -1))]:
        bad = op.PDESpec(**dict(vars(spec), monomials=recipe))
        with pytest.raises(InputError) as caught:
            op.operator_arguments(u, [bad], False)
        assert str(caught.value) == (
            f"operator_arguments: monomial {row} of PDE 'pde0:se2' must be the padding (-1, -1), "
            f"as every row from F's first padding row on, got {got}")
    padded = op.PDESpec(**dict(vars(spec), monomials=(*SE2_LINEAR, (-1, -1))))
    assert op.operator_arguments(u, [padded], False)["monomials"].shape == (1, 6, 2)


def cut_recipe() -> dict:
    """se2 (linear) and scaling with the se2 recipe's row 1 made padding: rows 2-4 real."""
    args = arguments()
    args["monomials"] = args["monomials"].clone()
    args["monomials"][0, 1] = -1
    return args


@needs_cpp
def test_the_cpp_operator_refuses_a_real_row_after_a_padding_row():
    with pytest.raises(RuntimeError) as caught:
        torch.ops.eqpdenet.euler_evolve(**cut_recipe())
    assert first_line(caught) == (
        "fused_euler: monomial 2 of a 'se2' PDE must be the padding (-1, -1), as every row from "
        "F's first padding row on, got (-1, 2)")


def test_the_triton_recipes_refuse_a_real_row_after_a_padding_row():
    kernels = triton_euler()
    args = cut_recipe()
    with pytest.raises(InputError) as caught:
        kernels._recipes(args["monomials"], args["invariant_sets"])
    assert str(caught.value) == (
        "euler_evolve: monomial 2 of a 'se2' PDE must be the padding (-1, -1), as every row from "
        "F's first padding row on, got (-1, 2)")
    # the layer's own linear recipes, se2's padded to scaling's 6 rows, are taken
    assert kernels._recipes(arguments()["monomials"], ("se2", "scaling")) == ((5, 6), True)
