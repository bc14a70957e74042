"""What user code does with the modules, beyond calling them: deep copies and weight averaging,
``torch.func.functional_call``, weights changed in place, forward hooks and pre-hooks,
``torch.jit.trace``, the pieces of the PDE layer used alone, and the smallest image of every
downsampling option."""

from __future__ import annotations

import copy
import warnings
from collections import Counter

import pytest
import torch
from torch import nn
from torch.func import functional_call
from torch.optim.swa_utils import AveragedModel

from eqpdenet import EqPdeNet, EulerFlow, EulerStep, InvariantRHS, LayerConfig, PDELayer, jet, kernels
from eqpdenet.errors import ConfigError, InputError, InputTypeError
from eqpdenet.models import MODELS, GCNNConfig, InvariantPDEConfig, InvariantPDENet, build_model
from eqpdenet.pde import InvariantSystemRHS, integrators, rhs, stencils


def _images(n=3, size=28, seed=0, channels=1):
    return torch.rand(n, channels, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def fused():
    """Skips where the fused CPU operator cannot run (no C++ compiler)."""
    reason = kernels.IMPLEMENTATIONS.get("cpu")()
    if reason is not None:
        pytest.skip(reason)


# ----------------------------------------------------------------------------- G-CNN (e2cnn)

TINY_GCNN = dict(group_order=4, channels=[2, 3], kernels=[3, 3], pool_after=[1])


def _gcnn(seed=0, **options):
    pytest.importorskip("e2cnn")
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return build_model("gcnn", gcnn=GCNNConfig(**{**TINY_GCNN, **options}))


def _convs(model):
    return [m for m in model.modules() if type(m).__name__ == "R2Conv"]


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_the_gcnn_deep_copies_and_its_weights_average(mode):
    model = getattr(_gcnn(), mode)()
    twin = copy.deepcopy(model)  # failed: "cannot pickle 'module' object" / "Only Tensors ..."
    x = _images()
    with torch.no_grad():
        assert torch.equal(twin(x), model(x))
    average = AveragedModel(model)  # deep-copies: weight averaging of `eqpdenet train`
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5)
    average.update_parameters(model)
    with torch.no_grad():
        assert torch.equal(average.module(x), model(x))  # the first update copies


def test_the_gcnn_in_evaluation_mode_computes_from_its_current_weights():
    model, other = _gcnn(seed=0).eval(), _gcnn(seed=1).eval()
    x = _images()
    with torch.no_grad():
        mixed = functional_call(model, dict(other.named_parameters()), (x,))
        assert torch.equal(mixed, other(x))  # was model's filters with other's batch norms
        before = model(x)
        for conv in _convs(model):
            conv.weights.zero_()
        after = model(x)
    assert not torch.equal(after, before)  # was bit-identical: the filter expanded at .eval()
    # zero filters: every feature map is the batch norm's shift, whatever the image
    assert torch.allclose(after, after[:1].expand_as(after), atol=1e-6)


def test_the_gcnn_takes_two_backward_passes_in_evaluation_mode():
    model = _gcnn().eval()  # fine-tuning with frozen batch norms
    x = _images()
    grads = []
    for _ in range(2):  # the second failed: "Trying to backward through the graph a second time"
        model.zero_grad()
        model(x).square().sum().backward()
        grads.append(_convs(model)[0].weights.grad.clone())
    assert torch.equal(grads[0], grads[1]) and grads[0].abs().sum() > 0


def test_the_gcnn_modes_share_one_state_dict_and_the_export_uses_current_weights():
    model = _gcnn().eval()
    assert not any(k.endswith(".filter") for k in model.state_dict())
    assert set(model.state_dict()) == set(_gcnn().train().state_dict())
    with torch.no_grad():
        for conv in _convs(model):
            conv.weights.mul_(-2.0)
    x = _images()
    with torch.no_grad():
        assert torch.allclose(model.export_module()(x), model(x), atol=1e-6)
    assert all(c.training for c in _convs(model))  # the convolutions stay expanding (GCNN.train)
    model.features.eval()  # put in evaluation mode by hand: the forward puts them back
    with torch.no_grad():
        assert torch.allclose(model(x), model.export_module()(x), atol=1e-6)


# ----------------------------------------------------------------------------- EqPdeNet's head


def test_the_invariant_head_takes_the_gaussian_stencil_with_its_sigma():
    layer = LayerConfig(invariants=["se2"], stencil="gaussian", sigma=1.5, init_noise=0.0)
    model = EqPdeNet(hidden=8, layer=layer, head="invariant")  # was "needs sigma", with one
    assert model.head_jet.stencil == "gaussian" and model.head_jet.sigma == 1.5
    assert torch.equal(model.head_jet.weight, model.pde_layer.pdes[0].step.rhs.jet.weight)
    assert torch.isfinite(model.eval()(_images())).all()


# ----------------------------------------------------------------------------- minimum sizes


SMALLEST = [  # (downsample, boundary, stencil, smallest image of 3 stages), counted by hand
    ("pool", "reflect", "isotropic", 8),    # 2 -> 4 -> 8: floor(8/2) = 4, floor(4/2) = 2
    ("pool", "zeros", "gaussian", 4),       # each 2x2 pooling needs 2 pixels
    ("pool", "reflect", "gaussian", 20),    # the gaussian's radius 4 mirrored: 5 pixels
    ("blur", "reflect", "isotropic", 5),    # ceil: 5 -> 3 -> 2 (4 -> 2 -> 1 is too small)
    ("blur", "reflect", "gaussian", 17),    # 17 -> 9 -> 5
    # (a blur of 1x1 maps, with zeros or circular, is refused since round 18, naming
    # invariant_pde.downsample_sigma: tests/models/test_models_round18.py)
    ("none", "reflect", "gaussian", 5),
    ("none", "zeros", "central", 1),
]


@pytest.mark.parametrize(("downsample", "boundary", "stencil", "smallest"), SMALLEST)
def test_every_downsampling_declares_its_true_smallest_image(downsample, boundary, stencil,
                                                            smallest):
    # a low-pass of radius 1: the stencils, not the blur's low-pass, decide the smallest image
    config = InvariantPDEConfig(channels=[2, 2, 2], blocks=[1, 1, 1], downsample=downsample,
                                boundary=boundary, stencil=stencil, downsample_sigma=1 / 3)
    torch.manual_seed(0)
    model = InvariantPDENet(config, image_size=smallest)
    assert model.min_image_size == smallest
    assert model(_images(3, smallest)).shape == (3, 10)
    assert model.eval()(_images(2, smallest)).shape == (2, 10)
    if smallest > 1:  # the blur's last stage was 1x1 and failed in forward (reflect)
        with pytest.raises(ConfigError, match=rf"image_size: {smallest - 1} pixels is too small "
                                              rf"for this model: it needs images of at least "
                                              rf"{smallest}x{smallest}"):
            InvariantPDENet(config, image_size=smallest - 1)


def test_the_smallest_image_of_a_thousand_poolings_is_computed_at_once():
    config = InvariantPDEConfig(channels=[1] * 1000, blocks=[0] * 1000, boundary="zeros")
    with pytest.raises(ConfigError, match=r"at least \d{300,}x"):
        InvariantPDENet(config, image_size=28)


# ----------------------------------------------------------------------------- hooks


def _hook_every_module(module: nn.Module, calls: Counter) -> None:
    for name, child in module.named_modules():
        if name:
            child.register_forward_hook(lambda m, i, o, name=name: calls.update([name]))


def test_hooks_on_the_pde_layer_of_eqpdenet_fire():
    model = EqPdeNet(hidden=8, layer=LayerConfig.paper(T=0.3)).eval()
    seen = []
    model.pde_layer.register_forward_hook(lambda m, i, o: seen.append(tuple(o.shape)))
    model(_images(4))  # the model called the layer's internals, not the layer
    assert seen == [(4, 1, 28, 28)]


@pytest.mark.parametrize("backend", ["reference", "fused"])
def test_hooks_inside_the_layer_fire_on_every_backend(backend, fused):
    layer = PDELayer.build(["se2", "scaling"], T=0.3, backend=backend, init_noise=0.0)
    calls: Counter = Counter()
    _hook_every_module(layer, calls)
    layer(_images(2, 12))
    expected = {"reduction": 1}
    for e in (0, 1):
        expected |= {f"pdes.{e}": 1, f"pdes.{e}.step": 3, f"pdes.{e}.step.rhs": 3,
                     f"pdes.{e}.step.rhs.jet": 3, f"pdes.{e}.step.rhs.F": 3}
    assert dict(calls) == expected  # fused: {'reduction': 1}, reference: no 'pdes.e'


def _count_fused(monkeypatch) -> list:
    calls = []
    original = kernels.fused_evolve

    def counted(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(kernels, "fused_evolve", counted)
    return calls


def test_the_fused_path_is_kept_without_hooks_and_left_for_any_hook(monkeypatch, fused):
    calls = _count_fused(monkeypatch)
    layer = PDELayer.build(["se2"], T=0.3, backend="fused")
    x = _images(2, 12)
    expected = layer.evolve_reference(x)
    assert torch.allclose(layer(x), layer.reduction(expected), atol=1e-6) and len(calls) == 1
    F = layer.pdes[0].step.rhs.F
    for register in (F.register_forward_pre_hook, F.register_forward_hook,
                     layer.pdes[0].register_full_backward_hook,
                     nn.modules.module.register_module_forward_hook):
        handle = register(lambda *args: None)
        layer(x)
        assert len(calls) == 1, register  # the reference ran
        handle.remove()
    layer(x)
    assert len(calls) == 2


def test_old_style_weight_norm_trains_with_the_fused_backend(fused):
    results = {}
    for backend in ("fused", "reference"):
        torch.manual_seed(0)
        layer = PDELayer.build(["se2"], backend=backend, init="normal", init_scale=0.05)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # deprecated for parametrizations
            torch.nn.utils.weight_norm(layer.pdes[0].step.rhs.F, "weight", dim=None)
        optimiser = torch.optim.SGD(layer.parameters(), lr=1e-4)
        values = []
        for _ in range(3):  # the fused backend failed at the second: "backward ... second time"
            optimiser.zero_grad()
            out = layer(_images(2, 12))
            out.square().mean().backward()
            optimiser.step()
            values.append(out.sum().item())
        results[backend] = values
    assert results["fused"] == pytest.approx(results["reference"], rel=1e-6)


# ----------------------------------------------------------------------------- torch.jit.trace


def test_trace_of_the_fused_layer_records_the_reference(fused):
    layer = PDELayer.build(["se2", "scaling"], T=0.3, backend="fused").eval()
    x = _images(4)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # the checks' host reads
        traced = torch.jit.trace(layer, x, check_trace=False)  # "unsupported input list type"
        y = _images(3, seed=1) * 0.5
        assert torch.allclose(traced(y), layer(y), atol=1e-6)
    assert "eqpdenet::" not in str(traced.inlined_graph)


@pytest.mark.parametrize("kind", MODELS.names())
def test_every_family_traces(kind):
    if kind == "gcnn":
        pytest.importorskip("e2cnn")
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build_model(kind, hidden=8).eval()
        with torch.no_grad():
            traced = torch.jit.trace(model, _images(4), check_trace=False)
            y = _images(3, seed=1)
            assert torch.allclose(traced(y), model(y), atol=1e-5)


# ----------------------------------------------------------------------------- pieces alone


def _pieces():
    torch.manual_seed(0)
    return {
        "EulerStep(InvariantRHS)": (EulerStep(InvariantRHS("se2"), 0.1), 1),
        "InvariantRHS": (InvariantRHS("scaling"), 1),
        "EulerStep(InvariantSystemRHS)": (EulerStep(InvariantSystemRHS(2, "se2"), 0.1), 2),
        "InvariantSystemRHS": (InvariantSystemRHS(2, "sim2"), 2),
        "EulerFlow": (EulerFlow(EulerStep(InvariantRHS("se2"), 0.1), 3), 1),
        "jet": (jet, 1),
    }


PIECES = list(_pieces())


def _nan(x):
    x = x.clone()
    x[0, 0, 3, 3] = float("nan")
    return x


BAD_INPUTS = [  # (make the input from a good one, error, message)
    (_nan, InputError, r"u contains non-finite values \(1 NaN, 0 inf of \d+\): the input is at "
                       r"fault"),
    (lambda x: x.double(), InputTypeError, r"u is torch.float64 but the module computes in "
                                           r"torch.float32"),
    (lambda x: x[0], InputError, r"u must have shape \(batch, channels, height, width\), got "
                                 r"\(\d, 8, 8\)"),
    (lambda x: (x * 10).long(), InputTypeError, "u must be a floating-point tensor, got dtype "
                                                "torch.int64"),
]


@pytest.mark.parametrize("piece", PIECES)
@pytest.mark.parametrize(("make", "error", "message"), BAD_INPUTS,
                         ids=["nan", "float64", "3-d", "int"])
def test_every_piece_used_alone_checks_its_input(piece, make, error, message):
    module, channels = _pieces()[piece]
    if piece == "jet" and make is BAD_INPUTS[1][0]:
        pytest.skip("jet has no parameters: it computes in the input's dtype")
    with pytest.raises(error, match=message):
        module(make(_images(2, 8, channels=channels)))


@pytest.mark.parametrize("piece", [p for p in PIECES if p != "jet"])
def test_every_piece_computes_low_precision_in_its_dtype(piece):
    module, channels = _pieces()[piece]
    x = _images(2, 8, channels=channels)
    half = module(x.half())
    assert half.dtype == torch.float16
    assert torch.equal(half, module(x.half().float()).half())


def test_a_system_step_names_the_channels_it_takes():
    step = EulerStep(InvariantSystemRHS(2, "se2"), 0.1)
    with pytest.raises(InputError, match=r"expected u of shape \(batch, 2, 8, 8\), got "
                                         r"\(2, 3, 8, 8\)"):
        step(_images(2, 8, channels=3))


def _count_value_checks(monkeypatch) -> list:
    """Every call of eqpdenet.checks.check_values made by the PDE pieces and the models."""
    from eqpdenet.checks import check_values
    from eqpdenet.models import inputs
    from eqpdenet.pde import layer

    calls = []

    def counted(u, what="images"):
        calls.append(what)
        return check_values(u, what)

    for module in (integrators, rhs, stencils, layer, inputs):
        monkeypatch.setattr(module, "check_values", counted)
    return calls


@pytest.mark.parametrize("backend", ["reference", "fused"])
def test_the_input_is_checked_once_however_deep_the_pieces(monkeypatch, backend, fused):
    calls = _count_value_checks(monkeypatch)
    flow = EulerFlow(EulerStep(InvariantRHS("se2"), 0.1), 10)
    flow(_images(2, 8))
    assert calls == ["u"]  # not once per Euler step
    calls.clear()
    PDELayer.build(["se2", "se2"], backend=backend)(_images(2, 8))
    assert calls == ["u"]
    calls.clear()
    EqPdeNet(hidden=8, layer=LayerConfig.paper(backend=backend)).eval()(_images(2))
    assert calls == ["images"]  # the model's check; not the layer's again
    calls.clear()
    InvariantPDENet(InvariantPDEConfig(channels=[2, 2], blocks=[2, 1])).eval()(_images(2))
    assert calls == ["images"]


def test_a_non_finite_state_inside_the_model_still_names_the_input_range():
    # The model calls its layer inside input_checked: the layer adds no hint, the model does.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the initial stability report
        model = EqPdeNet(hidden=8, layer=LayerConfig.paper(backend="reference", T=50.0, dt=0.5,
                                                            init="heat", init_scale=5.0)).eval()
    images = _images(2)
    low, high = images.min().item(), images.max().item()
    with pytest.raises(FloatingPointError, match=rf"PDE 'pde0:se2' produced a non-finite state "
                                                 rf".*The input was finite, with values in "
                                                 rf"\[{low:.4g}, {high:.4g}\]"):
        model(images)


def test_the_layer_config_documents_the_covariant_ratio_the_code_computes():
    doc = LayerConfig.__doc__
    assert "a b / (b^2 + eps^2 R)" in doc and "eps^2 a^2" not in doc
