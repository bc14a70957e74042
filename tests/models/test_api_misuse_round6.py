"""Misuse of the Python API found by the sixth probe (p3), each held fixed here: a NaN image that
poisoned M2Lift's running statistics, constructor arguments that failed later with a raw
AttributeError or TypeError (``EqPdeNet(layer=...)``, ``EulerFlow(rhs, 3)``, ``EulerStep(None)``,
``jet(u, "central")``, ``M2Lift(sigma=0)``, ``OrientationMaxPool``'s plain ValueErrors,
``safe_ratio``, ``count_parameters``, ``LinearF``), keywords ignored without a word
(``build_model("fcnn", hiden=16)``, ``PDELayer.build(degree=2)`` with a linear ``F``), and an
input on another device than the module, which gave PyTorch's wording."""

from __future__ import annotations

import warnings

import pytest
import torch

from eqpdenet.app.config import ModelConfig
from eqpdenet.app.config import build_model as build_from_config
from eqpdenet.errors import ConfigError, EqPdeNetError, InputError, InputTypeError
from eqpdenet.models import (
    CNN,
    FCNN,
    AntiAliasedDownsample,
    EqPdeNet,
    InvariantPDEConfig,
    InvariantPDENet,
    LiftedPDEConfig,
    LiftedPDENet,
    M2Lift,
    OrientationMaxPool,
    build_model,
    count_parameters,
)
from eqpdenet.pde import (
    EulerFlow,
    EulerStep,
    InvariantRHS,
    InvariantSystemRHS,
    LayerConfig,
    LinearF,
    M2Jet,
    M2SystemRHS,
    PDELayer,
    PolynomialF,
    jet,
    safe_ratio,
)
from eqpdenet.pde.invariants import register_invariant_set
from eqpdenet.pde.stencils import (
    STENCILS,
    derivative_multi_indices,
    derivative_names,
    register_stencil,
    stencil_kernels,
)

META = torch.device("meta")


def _images(batch=4, size=16, channels=1, seed=0):
    return torch.rand(batch, channels, size, size, generator=torch.Generator().manual_seed(seed))


def _statistics(module):
    return {name: buffer.clone() for name, buffer in module.named_buffers()
            if "running" in name or "num_batches" in name}


# ----------------------------------------------------------------------------- NaN and statistics


@pytest.mark.parametrize("backend", ["auto", "reference"])
@pytest.mark.parametrize("relative", [False, True])
def test_m2lift_refuses_a_nan_image_before_any_statistic_is_updated(backend, relative):
    torch.manual_seed(0)
    lift = M2Lift(1, 3, 4, sigma=1.0, boundary="replicate", relative=relative,
                  backend=backend).train()
    before = _statistics(lift)
    bad = _images()
    bad[0, 0, 5, 5] = float("nan")
    with pytest.raises(InputError, match=r"M2Lift's images contains non-finite values \(1 NaN, "
                                         r"0 inf of 1024\)"):
        lift(bad)
    after = _statistics(lift)
    assert before.keys() == after.keys() and len(before) == 6  # 2 norms x (mean, var, count)
    for name, value in before.items():
        assert torch.equal(after[name], value), name
    lift.eval()  # clean images afterwards: the module is not broken
    assert torch.isfinite(lift(_images(seed=1))).all()


def test_m2lift_refuses_inf_as_well():
    lift = M2Lift(1, 2, 4, sigma=1.0, boundary="zeros")
    bad = _images()
    bad[1, 0, 0, 0] = float("inf")
    with pytest.raises(InputError, match=r"\(0 NaN, 1 inf of 1024\)"):
        lift(bad)


def test_m2jet_refuses_non_finite_fields_and_non_tensors():
    fields = torch.rand(1, 2, 4, 8, 8)
    fields[0, 1, 2, 3, 3] = float("nan")
    with pytest.raises(InputError, match=r"M2Jet's fields contains non-finite values \(1 NaN"):
        M2Jet(1.0)(fields)
    with pytest.raises(InputTypeError, match="M2Jet takes fields as a torch.Tensor"):
        M2Jet(1.0)(None)
    with pytest.raises(InputTypeError, match="floating-point"):
        M2Jet(1.0)(torch.zeros(1, 2, 4, 8, 8, dtype=torch.int64))


def test_m2_system_checks_its_fields_once_and_its_jet_not_again():
    """M2SystemRHS checks on entry; its jet runs inside input_checked (no second host read),
    and invariants() of fields as they are (an analysis) still computes them."""
    rhs = M2SystemRHS(2, hidden=3)
    fields = torch.rand(2, 2, 4, 8, 8)
    fields[0, 0, 0, 0, 0] = float("nan")
    with pytest.raises(InputError, match="u contains non-finite values"):
        rhs(fields)
    invariants = rhs.invariants(fields)  # not checked: an analysis of u as it is
    assert invariants.shape == (2, 2, 10, 4, 8, 8) and not torch.isfinite(invariants).all()


# ----------------------------------------------------------------------------- constructors


def test_eqpdenet_takes_a_mapping_of_layer_fields_or_a_preset_name():
    torch.manual_seed(0)
    by_mapping = EqPdeNet(hidden=4, layer={"T": 0.2})
    torch.manual_seed(0)
    by_config = EqPdeNet(hidden=4, layer=LayerConfig.paper(T=0.2))
    state, expected = by_mapping.state_dict(), by_config.state_dict()
    assert state.keys() == expected.keys()
    assert all(torch.equal(state[key], expected[key]) for key in state)
    step = by_mapping.pde_layer.pdes[0]
    assert step.steps == 2 and step.step.rhs.ratio_regularisation == "absolute"  # the paper's
    names = [pde.name for pde in EqPdeNet(hidden=4, layer="se2_sim2").pde_layer.pdes]
    assert names == ["pde0:se2", "pde1:se2", "pde2:sim2", "pde3:sim2"]
    assert count_parameters(EqPdeNet(hidden=16, layer="paper")) == 13033


@pytest.mark.parametrize(("layer", "message"), [
    (5, r"layer: must be a PDELayer, a LayerConfig, a mapping .* got int"),
    ("paperr", r"layer: unknown layer preset 'paperr'; available: paper, se2_sim2"),
    ({"Tee": 0.2}, r"layer: unknown field\(s\) Tee; the fields are T, "),
])
def test_eqpdenet_refuses_other_layers_naming_the_argument(layer, message):
    with pytest.raises(ConfigError, match=message):
        EqPdeNet(hidden=4, layer=layer)


def test_euler_flow_and_step_refuse_what_is_not_a_step_or_a_module():
    rhs = InvariantRHS("se2")
    with pytest.raises(ConfigError, match=r"step: must be an Euler step .* got InvariantRHS; "
                                          r"wrap a right-hand side: EulerFlow\(EulerStep\(rhs"):
        EulerFlow(rhs, 3)
    with pytest.raises(ConfigError, match="step: must be an Euler step .* got NoneType$"):
        EulerFlow(None, 3)
    for bad in (None, lambda u: u):
        with pytest.raises(ConfigError, match="rhs: must be the right-hand side F as an nn.Module"):
            EulerStep(bad)
    with pytest.raises(ConfigError, match="name: must be a string or None, got int"):
        EulerStep(rhs, 0.1, name=3)
    flow = EulerFlow(EulerStep(rhs, 0.1), 3)  # what is allowed still works
    assert flow.T == pytest.approx(0.3) and flow(_images()).shape == (4, 1, 16, 16)


@pytest.mark.parametrize("order", ["central", "2", True, False, 2.0, -1, 65])
def test_jet_checks_its_order_before_any_stencil_is_built(order):
    hint = "stencil='central'" if order == "central" else "must be an integer in 0..64"
    with pytest.raises(ConfigError, match=f"order: the jet order .*{hint}"):
        jet(_images(), order)


def test_jet_order_checks_are_not_bypassed_by_the_caches():
    assert derivative_names(1) == ("u", "u_x", "u_y")  # fills the caches with order 1
    stencil_kernels("central", 1)
    with pytest.raises(ConfigError, match="got True"):
        derivative_multi_indices(True)
    with pytest.raises(ConfigError, match="got True"):
        stencil_kernels("central", True)
    assert jet(_images(), 1).shape == (4, 1, 3, 16, 16)


@pytest.mark.parametrize(("options", "message"), [
    ({"sigma": 0.0, "boundary": "replicate"}, "sigma: must be positive, got 0.0"),
    ({"sigma": 0.1, "boundary": "replicate"}, "sigma: must be at least"),
    ({"sigma": 1e5, "boundary": "replicate"}, "sigma: the largest scale level"),
    ({"sigma": 1.0, "boundary": "wrap"}, "boundary: unknown boundary 'wrap'"),
    ({"sigma": 1.0, "boundary": "replicate", "scales": 0}, "scales: must be >= 1"),
])
def test_m2lift_checks_its_arguments_in_the_constructor(options, message):
    with pytest.raises(ConfigError, match=message):
        M2Lift(1, 3, 4, **options)


def test_orientation_pooling_errors_are_eqpdenet_errors():
    with pytest.raises(ConfigError, match="ratio: must be a positive integer, got 0"):
        OrientationMaxPool(0)
    with pytest.raises(InputTypeError, match="OrientationMaxPool takes fields .* got NoneType"):
        OrientationMaxPool(2)(None)
    with pytest.raises(InputTypeError, match="got NoneType"):
        OrientationMaxPool(1)(None)  # the identity as well
    with pytest.raises(InputError, match=r"N a multiple of 2, got shape \(2, 3, 8, 8\)"):
        OrientationMaxPool(2)(torch.rand(2, 3, 8, 8))
    with pytest.raises(ConfigError, match="8 orientations cannot be pooled by 3"):
        OrientationMaxPool(3).window(8)
    with pytest.raises(InputTypeError, match="AntiAliasedDownsample takes .* got NoneType"):
        AntiAliasedDownsample()(None)
    with pytest.raises(InputError, match=r"got shape \(5,\)"):
        AntiAliasedDownsample()(torch.rand(5))
    assert OrientationMaxPool(2)(torch.arange(8.0).view(1, 1, 8, 1, 1)).flatten().tolist() == [
        7.0, 3.0, 5.0, 7.0]


def test_safe_ratio_names_bad_operands():
    a, b = torch.tensor([2.0, 2.0]), torch.tensor([0.5, 0.0])
    with pytest.raises(InputTypeError, match="safe_ratio: a must be a torch.Tensor"):
        safe_ratio(None, b)
    with pytest.raises(InputTypeError, match="safe_ratio: reference_sq must be"):
        safe_ratio(a, b, 0.1, reference_sq="x")
    with pytest.raises(InputError, match=r"the shapes of a \(2,\), b \(3,\) do not broadcast"):
        safe_ratio(a, torch.rand(3))
    # what worked still does: values, broadcasting, a plain-number numerator
    assert safe_ratio(a, b, 0.1).tolist() == pytest.approx([1.0 / 0.26, 0.0])
    assert safe_ratio(a[:, None], torch.rand(3)).shape == (2, 3)
    assert float(safe_ratio(1.0, torch.tensor(0.5), 0.1)) == pytest.approx(0.5 / 0.26)


def test_count_parameters_and_monomial_f_name_their_inputs():
    with pytest.raises(InputTypeError, match="count_parameters takes an nn.Module .* NoneType"):
        count_parameters(None)
    with pytest.raises(InputError, match=r"LinearF is a function of 5 invariants: .* got shape "
                                         r"\(2, 4, 8, 8\)"):
        LinearF(5)(torch.rand(2, 4, 8, 8))
    with pytest.raises(InputError, match="PolynomialF is a function of 3 invariants"):
        PolynomialF(3, 2)(torch.rand(2, 4, 8, 8))
    with pytest.raises(InputTypeError, match="LinearF takes invariant maps as a torch.Tensor"):
        LinearF(5)(None)
    assert LinearF(5)(torch.rand(2, 5, 8, 8)).shape == (2, 8, 8)


def test_register_stencil_and_invariant_set_refuse_what_cannot_be_registered():
    with pytest.raises(ConfigError, match="builder: a stencil family is registered with its "
                                          "builder, .* got int"):
        register_stencil("round6-not-a-builder", 5)
    assert "round6-not-a-builder" not in STENCILS
    with pytest.raises(ConfigError, match="invariant_set: must be an InvariantSet, got str: "
                                          "register the InvariantSet object itself"):
        register_invariant_set("se2")


def test_projected_fields_stages_is_an_eqpdenet_error():
    net = LiftedPDENet(LiftedPDEConfig(orientations=4, channels=[3, 4], blocks=[1, 1]))
    for stages in (3, -1, 1.0, True):
        with pytest.raises(ConfigError, match=r"stages must be in 0..2"):
            net.projected_fields(torch.rand(2, 1, 28, 28), stages)


# ----------------------------------------------------------------------------- silent keywords


def test_build_model_refuses_keywords_no_model_takes():
    with pytest.raises(ConfigError, match=r"build_model\('fcnn'\): unknown option 'hiden' \(did "
                                          r"you mean 'hidden'\?\); fcnn takes hidden, "):
        build_model("fcnn", hiden=16)
    with pytest.raises(ConfigError, match=r"unknown option 'layr' \(did you mean 'layer'\?\)"):
        build_model("eqpdenet", layr=LayerConfig.paper(T=0.2))
    with pytest.raises(ConfigError, match=r"unknown option 'colour'; eqpdenet takes"):
        build_model("eqpdenet", colour="red")
    # standardize (the configuration's record) only beside the statistics it describes
    with pytest.raises(ConfigError, match="'standardize' is where input_mean and input_std came "
                                          "from"):
        build_model("fcnn", standardize="train")
    model = build_model("fcnn", hidden=16, standardize="train", input_mean=0.2, input_std=0.3)
    assert model.standardize.mean == 0.2 and count_parameters(model) == 13002


def test_build_model_still_takes_one_table_for_every_kind():
    # an option only another kind takes is not passed (documented: one table, every kind)
    assert count_parameters(build_model("fcnn", hidden=16, layer=None, head="invariant")) == 13002
    # the configuration passes its whole model table (standardize and every kind's options)
    assert count_parameters(build_from_config(ModelConfig(kind="fcnn", hidden=16))) == 13002
    assert count_parameters(build_from_config(ModelConfig(kind="eqpdenet", hidden=16))) == 13033


def test_a_degree_with_the_linear_rhs_is_refused_not_ignored():
    with pytest.raises(ConfigError, match="layer.degree: 2 has no effect on rhs = 'linear'"):
        PDELayer.build(["se2"], degree=2)
    with pytest.raises(ConfigError, match="layer.degree: 3 has no effect"):
        LayerConfig(degree=3)
    with pytest.raises(ConfigError, match="degree: 2 has no effect on the 'linear' right-hand "
                                          "side"):
        InvariantRHS("se2", degree=2)
    layer = PDELayer.build(["se2"], rhs="polynomial", degree=2, init_noise=0.0)
    assert layer.pdes[0].step.rhs.F.degree == 2
    assert isinstance(PDELayer.build(["se2"], degree=1).pdes[0].step.rhs.F, LinearF)


# ----------------------------------------------------------------------------- devices


def _pieces():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {
            "EqPdeNet": (lambda: EqPdeNet(hidden=4, layer={"T": 0.2}), (2, 1, 28, 28)),
            "FCNN": (lambda: FCNN(hidden=4), (2, 1, 28, 28)),
            "CNN": (lambda: CNN(), (2, 1, 28, 28)),
            "InvariantPDENet": (lambda: InvariantPDENet(InvariantPDEConfig(
                channels=[3, 4], blocks=[1, 1])), (2, 1, 28, 28)),
            "LiftedPDENet": (lambda: LiftedPDENet(LiftedPDEConfig(
                orientations=4, channels=[3, 4], blocks=[1, 1])), (2, 1, 28, 28)),
            "PDELayer": (lambda: PDELayer.build(["se2"], T=0.2), (2, 1, 8, 8)),
            "EulerFlow": (lambda: EulerFlow(EulerStep(InvariantRHS("se2")), 2), (2, 1, 8, 8)),
            "InvariantRHS": (lambda: EulerStep(InvariantRHS("se2")), (2, 1, 8, 8)),
            "InvariantSystemRHS": (lambda: EulerStep(InvariantSystemRHS(2)), (2, 2, 8, 8)),
            "M2SystemRHS": (lambda: EulerStep(M2SystemRHS(2)), (2, 2, 4, 8, 8)),
            "M2Lift": (lambda: M2Lift(1, 3, 4, sigma=1.0, boundary="replicate"), (2, 1, 8, 8)),
        }


@pytest.mark.filterwarnings("ignore:eqpdenet. the fused:RuntimeWarning")  # none for meta
@pytest.mark.parametrize("name", list(_pieces()))
def test_an_input_on_another_device_is_named_at_the_entry(name):
    build, shape = _pieces()[name]
    module = build()
    cls = "EulerStep" if name.endswith("RHS") else type(module).__name__
    with pytest.raises(InputError, match=r"the input is on device meta but \w+'s parameters are "
                                         r"on cpu: move the input \(.to\('cpu'\)\) or the module "
                                         r"\(.to\('meta'\)\)") as raised:
        module(torch.rand(shape, device=META))
    assert isinstance(raised.value, EqPdeNetError)
    assert cls in str(raised.value) or name.endswith("RHS")
    meta = module.to(META)  # both on one device: shapes without values, as before
    out = meta(torch.rand(shape, device=META))
    assert out.is_meta and out.shape[0] == 2
