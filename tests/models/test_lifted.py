"""LiftedPDENet: parameter counts, quarter-turn invariance of the logits, the PDE-G-CNN terms,
multi-scale, and the checks of its configuration and input."""

import pytest
import torch

from eqpdenet import ConfigError, InputError, count_parameters
from eqpdenet.errors import InputTypeError
from eqpdenet.models import MODELS, LiftedPDEConfig, LiftedPDENet, M2Lift
from eqpdenet.models.pooling import AntiAliasedDownsample, OrientationMaxPool
from eqpdenet.pde import EulerStep
from eqpdenet.pde.m2_rhs import PDE_GCNN_TERMS, M2SystemRHS
from helpers import assert_equivariant


def _randomise_batch_norms(net):
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
    return net


def test_registered_and_parameter_count():
    assert MODELS.get("lifted_pde") is LiftedPDENet
    net = LiftedPDENet(LiftedPDEConfig(channels=[4, 6], blocks=[1, 2], hidden=2.0))
    lift = (2 * 6) + 6 * 4 + 2 * 4                      # batch norm of 6 maps, 6 -> 4, batch norm
    block0 = 40 * 8 + 2 * 8 + 8 * 4 + 4                 # W1 (no bias), batch norm, W2 + bias
    transition = 4 * 6
    block1 = 60 * 12 + 2 * 12 + 12 * 6 + 6
    head = 2 * 12 + 12 * 10 + 10                        # batch norm of mean+max, classifier
    assert count_parameters(net) == lift + block0 + transition + 2 * block1 + head
    background = LiftedPDENet(LiftedPDEConfig(channels=[4, 6], blocks=[1, 2], hidden=2.0,
                                              boundary="background"))
    assert count_parameters(background) == count_parameters(net) - 4 - 2 * 6  # no b2: cancels
    assert count_parameters(LiftedPDENet(LiftedPDEConfig(boundary="background"))) == 21_078
    with_norm = LiftedPDENet(LiftedPDEConfig(channels=[4], blocks=[1], normalize_invariants=True))
    assert count_parameters(with_norm) == lift + 2 * 40 + 40 * 4 + 2 * 4 + 4 * 4 + 4 + (
        2 * 8 + 8 * 10 + 10)


@pytest.mark.parametrize("options", [
    {},
    {"projection": "mean", "readout": "max"},
    {"projection": "softmax", "downsample": "pool"},
    {"terms": list(PDE_GCNN_TERMS), "downsample": "none"},
    {"terms": ["network", "diffusion"], "scales": 2, "orientations": 4},
    {"normalize_invariants": True, "orientations": 12, "boundary": "zeros"},
    {"margin": 2, "downsample": "pool"},
    {"boundary": "background", "terms": ["network", "linear"], "normalize_invariants": True},
    {"boundary": "background", "normalize_hidden": False},
    {"boundary": "background", "stage_orientations": [8, 4, 4]},
    {"orientations": 16, "stage_orientations": [8, 8, 4], "downsample": "pool"},
    {"orientations": 12, "stage_orientations": [4, 4, 4], "projection": "softmax"},
])
def test_logits_are_invariant_under_quarter_turns(options):
    torch.manual_seed(0)
    config = LiftedPDEConfig(**{"channels": [3, 4, 5], "blocks": [1, 1, 1], **options})
    net = _randomise_batch_norms(LiftedPDENet(config).double().eval())
    if "diffusion" in config.terms:
        for module in net.modules():  # non-trivial coefficients of every PDE-G-CNN term
            if hasattr(module, "coefficients"):
                module.weight.data.uniform_(-1, 1)
    images = torch.rand(3, 1, 28, 28, dtype=torch.float64)
    assert_equivariant(net, images, invariant=True)


@pytest.mark.parametrize("options", [{}, {"boundary": "background"},
                                     {"boundary": "background", "normalize_hidden": False}])
def test_fused_and_reference_backends_give_the_same_model(options):
    torch.manual_seed(0)
    config = LiftedPDEConfig(channels=[3, 4], blocks=[1, 1], scales=2, **options)
    fused = LiftedPDENet(config).double()
    reference = LiftedPDENet(LiftedPDEConfig(channels=[3, 4], blocks=[1, 1], scales=2,
                                             backend="reference", **options)).double()
    if not config.normalize_hidden:  # W2 starts at zero: give the update something to carry
        for net in (fused, reference):
            for block in net.modules():
                if isinstance(block, M2SystemRHS):
                    torch.nn.init.normal_(block.terms["network"].out.weight)
                    torch.nn.init.normal_(block.terms["network"].mix.bias)
        reference.load_state_dict(fused.state_dict())
    reference.load_state_dict(fused.state_dict())
    images = torch.rand(4, 1, 28, 28, dtype=torch.float64)
    a, b = fused(images), reference(images)
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    ga = torch.autograd.grad(a.square().sum(), list(fused.parameters()))
    gb = torch.autograd.grad(b.square().sum(), list(reference.parameters()))
    for x, y in zip(ga, gb, strict=True):
        torch.testing.assert_close(x, y, rtol=1e-9, atol=1e-9)
    # the batch norms' running statistics, updated by the training-mode pass, agree too
    for (name, x), (_, y) in zip(fused.named_buffers(), reference.named_buffers(), strict=True):
        torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-12, msg=name)


def test_blocks_are_euler_steps_of_m2_systems_and_downsampling_is_anti_aliased():
    net = LiftedPDENet(LiftedPDEConfig(channels=[3, 4, 5], blocks=[2, 1, 1]))
    steps = [m for m in net.modules() if isinstance(m, EulerStep)]
    assert len(steps) == 4 and all(isinstance(s.rhs, M2SystemRHS) for s in steps)
    assert sum(isinstance(m, AntiAliasedDownsample) for m in net.modules()) == 2
    u = torch.rand(2, 3, 8, 14, 14)
    torch.testing.assert_close(steps[0](u), u + steps[0].dt * steps[0].rhs(u))
    assert net.fields(torch.rand(2, 1, 28, 28)).shape == (2, 5, 8, 7, 7)


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("relative, scales, in_channels", [
    (False, 1, 1), (True, 1, 1), (False, 2, 3), (True, 2, 3)])
def test_lift_by_moments_is_the_composed_lift(relative, scales, in_channels, training):
    """The lift's two computations (backend "auto": batch statistics from the jet's moments and
    one matrix per orientation; "reference": the modules composed) agree in float64: values,
    every gradient (the biases that cancel in the relative lift get zero in both), running
    statistics; and an empty batch maps to an empty field."""

    torch.manual_seed(in_channels + 2 * scales)
    boundary = "zeros" if relative else "replicate"
    lifts = [M2Lift(in_channels, 5, 8, 1.0, boundary, scales, relative, backend=backend).double()
             for backend in ("auto", "reference")]
    for parameter in lifts[0].parameters():
        parameter.data.normal_()
    for norm in (lifts[0].norm, lifts[0].out_norm):
        norm.running_mean.normal_()
        norm.running_var.uniform_(0.5, 2.0)
    lifts[1].load_state_dict(lifts[0].state_dict())
    images = torch.rand(3, in_channels, 13, 11, dtype=torch.float64, requires_grad=True) + 0.5
    probe = torch.randn(3 * scales, 5, 8, 13, 11, dtype=torch.float64)
    results = []
    for lift in lifts:
        lift.train(training)
        out = lift(images)
        results.append((out, torch.autograd.grad((out * probe).sum(), [images, *lift.parameters()])))
    (fast, fast_grads), (composed, composed_grads) = results
    torch.testing.assert_close(fast, composed, rtol=1e-12, atol=1e-12)
    names = ["images"] + [name for name, _ in lifts[0].named_parameters()]
    for name, a, b in zip(names, fast_grads, composed_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10 * float(b.abs().max()) + 1e-12,
                                   msg=name)
    if relative:
        assert float(fast_grads[names.index("out_norm.bias")].abs().max()) <= 1e-12
    for (key, a), b in zip(lifts[0].state_dict().items(), lifts[1].state_dict().values(),
                           strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12, msg=key)
    empty = torch.zeros(0, in_channels, 13, 11, dtype=torch.float64)
    assert lifts[0].eval()(empty).shape == (0, 5, 8, 13, 11)


def test_the_layers_defaults_are_the_models():
    """A block built alone (README's example) is the model's: the same invariants, batch norms
    and jet, so that one name has one meaning (and the fused kernel runs by default)."""
    import inspect

    config = LiftedPDEConfig()
    defaults = {name: p.default for name, p in inspect.signature(M2SystemRHS).parameters.items()}
    for name in ("normalize_invariants", "normalize_hidden", "sigma", "backend"):
        assert defaults[name] == getattr(config, name), name
    assert tuple(defaults["terms"]) == tuple(config.terms)
    rhs = M2SystemRHS(4)
    assert isinstance(rhs.terms["network"].norm, torch.nn.Identity)
    assert rhs.terms["network"].mix.weight.shape[:2] == (4, 40)  # 10 invariants of 4 channels


@pytest.mark.parametrize("field, value, match", [
    ("orientations", 6, "multiple of 4"),
    ("orientations", 0, "orientations"),
    ("sigma", 0.0, "sigma"),
    ("sigma", 0.3, "at least 0.5"),
    ("channels", [8, 0, 4], r"channels\[1\]"),
    ("blocks", [1], r"one entry each per stage: channels \[8, 16, 24\] has 3, blocks \[1\] has 1"),
    ("blocks", [1, -1, 1], r"blocks\[1\]"),
    ("blocks", [1, 10**6, 1], "bound of 1,000"),
    ("terms", ["network", "network"], "once"),
    ("terms", ["advection"], "advection"),
    ("downsample", "max", "downsample"),
    ("projection", "sum", "projection"),
    ("scales", 0, "scales"),
    ("margin", -1, "margin"),
    ("margin", 2.5, "margin"),
    ("stage_orientations", [8, 4], "one entry per stage"),
    ("stage_orientations", [8, 6, 6], r"stage_orientations\[1\].*multiple of 4"),
    ("stage_orientations", [8, 16, 16], r"stage_orientations\[1\].*divide .*\(8\)"),
    ("stage_orientations", [4, 8, 4], r"stage_orientations\[1\].*divide .*\(4\)"),
])
def test_bad_options_name_the_field(field, value, match):
    with pytest.raises(ConfigError, match=match):
        LiftedPDEConfig(**{field: value})


def test_images_too_small_for_the_stencils_are_refused_before_building():
    # 28 -> 14 -> 7 with sigma 1 (radius 4): 17 -> 9 -> 5 is the smallest that keeps every stage
    # larger than the stencils' radius
    with pytest.raises(ConfigError, match="image_size: 16 pixels is too small .* 17x17 .*radius 4"):
        LiftedPDENet(LiftedPDEConfig(), image_size=16)
    assert LiftedPDENet(LiftedPDEConfig(), image_size=17).min_image_size == 17
    with pytest.raises(ConfigError, match="at least 9x9 .*radius 8"):
        LiftedPDENet(LiftedPDEConfig(channels=[4], blocks=[1], sigma=2.0), image_size=8)


def test_margin_is_the_same_network_on_the_image_framed_by_blank_background():
    """``margin = m`` runs the parameters of the network on the raw image zero-padded by ``m``
    on every side: the same logits as a margin-free network of size ``H + 2 m`` on the padded
    image, and the same parameters; smaller images become admissible."""
    torch.manual_seed(0)
    framed = LiftedPDENet(LiftedPDEConfig(channels=[3, 4], blocks=[1, 1], margin=4),
                          input_mean=0.1307, input_std=0.3081).double()
    plain = LiftedPDENet(LiftedPDEConfig(channels=[3, 4], blocks=[1, 1]), image_size=36,
                         input_mean=0.1307, input_std=0.3081).double()
    plain.load_state_dict(framed.state_dict())
    assert count_parameters(framed) == count_parameters(plain)
    images = torch.rand(3, 1, 28, 28, dtype=torch.float64)
    padded = torch.nn.functional.pad(images, (4, 4, 4, 4))
    torch.testing.assert_close(framed(images), plain(padded), rtol=0, atol=0)
    assert framed.fields(images).shape == (3, 4, 8, 18, 18)
    # two stages with sigma 1 (radius 4) need 9 -> 5 pixel maps: a 9-pixel image without a
    # margin, any image with a margin of 4
    two = {"channels": [3, 4], "blocks": [1, 1]}
    assert LiftedPDENet(LiftedPDEConfig(**two), image_size=9).min_image_size == 9
    assert LiftedPDENet(LiftedPDEConfig(**two, margin=4), image_size=1).min_image_size == 1
    # a plain 2x2 average stays exact under quarter turns on even maps only: 34 -> 17 is not
    pool = {"channels": [3, 4, 5], "blocks": [1, 1, 1], "downsample": "pool"}
    assert LiftedPDENet(LiftedPDEConfig(**pool, margin=2)).quarter_turn_invariant
    assert not LiftedPDENet(LiftedPDEConfig(**pool, margin=3)).quarter_turn_invariant


def test_state_dicts_of_the_earlier_stage_order_still_load():
    """Each stage's channel map used to come before its downsampling (``stages.<s>.0.map``);
    such state dicts load into the current order and give the same logits."""
    torch.manual_seed(0)
    net = _randomise_batch_norms(LiftedPDENet(LiftedPDEConfig(channels=[3, 4, 5],
                                                              blocks=[1, 1, 1])).double().eval())
    earlier = {}
    for key, value in net.state_dict().items():
        for stage in (1, 2):
            key = key.replace(f"stages.{stage}.1.map.", f"stages.{stage}.0.map.")
        earlier[key] = value
    assert "stages.1.0.map.weight" in earlier and "stages.1.1.map.weight" not in earlier
    loaded = LiftedPDENet(LiftedPDEConfig(channels=[3, 4, 5], blocks=[1, 1, 1])).double().eval()
    loaded.load_state_dict(earlier)
    images = torch.rand(2, 1, 28, 28, dtype=torch.float64)
    torch.testing.assert_close(loaded(images), net(images), rtol=0, atol=0)


def test_bad_input_gets_a_clear_error():
    net = LiftedPDENet(LiftedPDEConfig(channels=[3], blocks=[1]))
    images = torch.rand(2, 1, 28, 28)
    images[0, 0, 3, 3] = float("nan")
    with pytest.raises(InputError, match="non-finite"):
        net(images)
    with pytest.raises(InputTypeError, match="float64"):
        net(torch.rand(2, 1, 28, 28, dtype=torch.float64))
    with pytest.raises(InputError, match="batch of one image in training mode"):
        net.train()(torch.rand(1, 1, 28, 28))
    with pytest.raises(InputError, match="shape"):
        net(torch.rand(2, 1, 20, 20))
    half = net.eval()(torch.rand(2, 1, 28, 28).half())
    assert half.dtype == torch.float16 and torch.isfinite(half).all()


@pytest.mark.parametrize("scales", [1, 2])
def test_projected_fields_rotate_with_the_image(scales):
    """Every stage's fields, projected over orientations, are planar maps that rotate with the
    image: exactly under quarter turns (also after the odd-size downsampling 14 -> 7), and
    approximately under 45 degrees (the lift of a smooth image at the rotation's centre)."""
    torch.manual_seed(0)
    config = LiftedPDEConfig(channels=[3, 4, 5], blocks=[1, 1, 1], scales=scales,
                             sigma=0.71 if scales > 1 else 1.0)
    net = _randomise_batch_norms(LiftedPDENet(config).double().eval())
    images = torch.rand(2, 1, 28, 28, dtype=torch.float64)
    for stages in range(len(config.channels) + 1):
        assert_equivariant(lambda x, s=stages: net.projected_fields(x, s), images)
    y, x = torch.meshgrid(torch.arange(28.0), torch.arange(28.0), indexing="ij")
    blob = torch.exp(-((x - 13.5) ** 2 / 18 + (y - 13.5) ** 2 / 8))  # elongated: has a direction
    smooth = blob.to(torch.float64).expand(2, 1, 28, 28)
    assert_equivariant(lambda x: net.projected_fields(x, 0), smooth, angle=45,
                       angle_tolerance=0.05)
    with pytest.raises(ValueError, match="stages must be in 0..3"):
        net.projected_fields(images, 4)


def _plain_and_relative(backend, terms, **options):
    """A plain system (replicate boundary; random parameters and batch-norm statistics) and a
    relative one (zero padding) with the same parameters but the output biases, which cancel."""
    torch.manual_seed(0)
    plain = M2SystemRHS(3, terms, hidden=5, boundary="replicate", backend=backend,
                        **options).double()
    relative = M2SystemRHS(3, terms, hidden=5, boundary="zeros", relative=True, backend=backend,
                           **options).double()
    with torch.no_grad():
        for parameter in plain.parameters():
            parameter.uniform_(-1, 1)
    _randomise_batch_norms(plain)
    wanted = relative.state_dict()
    assert set(plain.state_dict()) - set(wanted) == {
        name for name in plain.state_dict() if name.endswith(("out.bias", "linear.map.bias"))}
    relative.load_state_dict({name: plain.state_dict()[name] for name in wanted})
    return plain, relative


#: Fields ``U = U_0 + V`` of a frame (``V`` random, ``U_0`` a blank field, constant per channel)
#: and the frame padded by ``U_0`` as far as the stencils reach.
_DEVIATION = torch.rand(2, 3, 8, 12, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
_BLANK = torch.tensor([0.7, -1.3, 2.1], dtype=torch.float64).view(1, 3, 1, 1, 1)


@pytest.mark.parametrize("backend", ["auto", "reference"])
@pytest.mark.parametrize("terms", [("network",), ("network", "linear", "diffusion", "convection",
                                                  "dilation")])
def test_relative_system_without_batch_norm_is_the_plain_one_on_the_extended_frame(backend,
                                                                                   terms):
    """``F_rel(V) = F(I(pad_{U_0} U))|_frame - F(I(U_0))`` to rounding (float64), for the plain
    system whose first layer's bias is ``b1 - W1 I(U_0)`` (a blank field's invariants are those
    of a constant: its value in the zeroth one; the relative system carries ``V``, whose blank
    is 0): the same family of ``F``, a shifted bias."""
    plain, relative = _plain_and_relative(backend, terms, normalize_hidden=False,
                                          normalize_invariants=False)
    pad = plain.jet.radius
    framed = torch.nn.functional.pad(_DEVIATION, (pad,) * 4) + _BLANK
    constant = _BLANK.expand(1, 3, 8, 12, 12)
    blank_invariants = plain.invariants(constant)[0, :, :, 0, 0, 0].reshape(-1)
    network = plain.terms["network"]
    with torch.no_grad():
        network.mix.bias -= network.mix.weight @ blank_invariants
    expected = plain(framed)[..., pad:-pad, pad:-pad] - plain(constant)[:, :, :1, :1, :1]
    torch.testing.assert_close(relative(_DEVIATION), expected, rtol=1e-10, atol=1e-10)
    step = relative.euler_step(_DEVIATION, 0.5)
    if step is not None:  # the fused step (the network term alone)
        torch.testing.assert_close(step, _DEVIATION + 0.5 * expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("backend", ["auto", "reference"])
@pytest.mark.parametrize("normalize_invariants", [False, True])
def test_relative_system_with_batch_norm_is_the_plain_one_on_the_extended_frame(
        backend, normalize_invariants):
    """With batch-normalised layers (training mode) nothing is reparametrised: batch norm
    forgets the constant ``W1 I(U_0)``, so ``F_rel(V)`` is the plain ``F`` of the invariants of
    the padded frame, normalised by the statistics of the frame's points, minus its value on
    the blank field under the same statistics."""
    from eqpdenet.pde.m2_rhs import batch_norm_at

    plain, relative = _plain_and_relative(backend, ("network",),
                                          normalize_invariants=normalize_invariants)
    pad = plain.jet.radius
    framed = torch.nn.functional.pad(_DEVIATION, (pad,) * 4) + _BLANK
    network = plain.terms["network"]
    invariants = plain.invariants(framed)[..., pad:-pad, pad:-pad].reshape(2, 30, -1)
    blank = plain.invariants(_BLANK.expand(1, 3, 8, 12, 12))[0, :, :, 0, 0, 0].reshape(-1)
    x = network.mix(network.norm(invariants))
    x_blank = network.mix(batch_norm_at(network.norm, invariants, blank)[None, :, None])[0, :, 0]
    hidden_blank = batch_norm_at(network.hidden_norm, x, x_blank)
    expected = (network.out.weight @ (torch.relu(network.hidden_norm(x))
                                      - torch.relu(hidden_blank)[:, None])).view_as(_DEVIATION)
    torch.testing.assert_close(relative(_DEVIATION), expected, rtol=1e-10, atol=1e-10)
    step = relative.euler_step(_DEVIATION, 0.5)
    if step is not None:  # the fused step (unnormalised invariants)
        torch.testing.assert_close(step, _DEVIATION + 0.5 * expected, rtol=1e-10, atol=1e-10)


def test_batch_norm_at_a_point_is_what_the_batch_norm_gives_that_point():
    from eqpdenet.pde.m2_rhs import batch_norm_at

    torch.manual_seed(0)
    norm = _randomise_batch_norms(torch.nn.BatchNorm1d(4).double())
    batch = torch.randn(3, 4, 10, dtype=torch.float64)
    for training in (True, False):
        norm.train(training)
        expected = norm(batch)[1, :, 7]  # running statistics updated after use: read first
        torch.testing.assert_close(batch_norm_at(norm, batch, batch[1, :, 7]), expected,
                                   rtol=1e-12, atol=1e-12)


def test_background_boundary_carries_deviations_from_a_blank_image():
    """A blank image's fields vanish at every stage (in training and evaluation mode), so zero
    padding of the carried fields is padding by the blank image's own fields; the logits are
    those of a model whose every field is shifted by a constant per channel (nothing to learn)."""
    torch.manual_seed(0)
    net = _randomise_batch_norms(LiftedPDENet(LiftedPDEConfig(
        channels=[3, 4], blocks=[1, 1], boundary="background"), input_mean=0.13,
        input_std=0.31).double())
    blank = torch.zeros(3, 1, 28, 28, dtype=torch.float64)
    for training in (True, False):
        net.train(training)
        assert float(net.fields(blank).detach().abs().max()) < 1e-12
    config = LiftedPDEConfig(boundary="background")
    assert config.padding == "zeros" and LiftedPDEConfig().padding == "replicate"
    with pytest.raises(ConfigError, match="lifted_pde.boundary"):
        LiftedPDEConfig(boundary="blank")


@pytest.mark.parametrize("backend", ["auto", "reference"])
def test_stage_orientations_pool_each_stage_down_to_its_count(backend):
    # lift at 16, stages at 8, 8, 4: the second stage's fields have 8 orientations, the last 4,
    # each the maximum over the old orientations within half a new bin (OrientationMaxPool);
    # the parameters do not depend on the counts
    torch.manual_seed(0)
    config = LiftedPDEConfig(orientations=16, stage_orientations=[8, 8, 4], channels=[3, 4, 5],
                             blocks=[1, 1, 1], boundary="background", backend=backend)
    net = _randomise_batch_norms(LiftedPDENet(config).double().eval())
    plain = LiftedPDENet(LiftedPDEConfig(orientations=16, channels=[3, 4, 5], blocks=[1, 1, 1],
                                         boundary="background", backend=backend))
    assert count_parameters(net) == count_parameters(plain)
    pools = [m for m in net.modules() if isinstance(m, OrientationMaxPool)]
    assert [p.ratio for p in pools] == [2, 2]
    images = torch.rand(2, 1, 28, 28, dtype=torch.float64)
    u = net._lifted(images)
    assert u.shape[2] == 16
    stage0 = net.stages[0](u)
    assert stage0.shape == (2, 3, 8, 28, 28)
    # stage 0 = the pool by 2, then the block: the pooled field is u at orientations 2j - 1, 2j,
    # 2j + 1, maximised
    pooled = net.stages[0][0](u)
    window = torch.stack([u.roll(1, 2)[:, :, ::2], u[:, :, ::2], u.roll(-1, 2)[:, :, ::2]])
    torch.testing.assert_close(pooled, window.amax(0), rtol=0, atol=0)
    assert net.fields(images).shape == (2, 5, 4, 7, 7)
    assert net.config.orientations_of_stages() == [8, 8, 4]
    assert LiftedPDEConfig().orientations_of_stages() == [8, 8, 8]
    # fewer orientations, less memory kept for the backward
    assert net.backward_bytes(64) < plain.backward_bytes(64)


@pytest.mark.parametrize("terms", [("network",), PDE_GCNN_TERMS])
@pytest.mark.parametrize("backend", ["auto", "reference"])
def test_invariants_called_from_outside_forward_leave_nothing_behind(backend, terms):
    """``invariants(u)`` shares its result among the terms of one call of forward only: a call
    from outside must not serve a later call its tensors (u changed in place since, or computed
    without autograd, which would cut the gradient's path to u)."""
    torch.manual_seed(0)
    rhs = M2SystemRHS(3, terms, normalize_invariants=True, backend=backend).double()
    step = EulerStep(rhs, dt=0.5)
    u = torch.randn(2, 3, 8, 12, 12, dtype=torch.float64)
    first = rhs.invariants(u).clone()
    u.add_(torch.randn_like(u))
    torch.testing.assert_close(rhs.invariants(u), rhs.invariants(u.clone()), rtol=0, atol=0)
    assert not torch.equal(rhs.invariants(u), first)
    torch.testing.assert_close(step(u), step(u.clone()), rtol=0, atol=0)

    x = torch.randn(2, 3, 8, 12, 12, dtype=torch.float64, requires_grad=True)
    expected = torch.autograd.grad(step(x).square().sum(), x)[0]
    with torch.no_grad():
        rhs.invariants(x)
    got = torch.autograd.grad(step(x).square().sum(), x)[0]
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


@pytest.mark.parametrize("backend", ["auto", "reference"])
def test_an_m2_system_used_directly_names_what_is_wrong_with_its_input(backend):
    """The fused kernels failed deep inside ("weight must be (O, C, 10)", a bare RuntimeError
    without sizes) where the reference raised an InputError: now every path raises the same
    error, naming the cause, before any work."""
    cases = [({}, (2, 4, 8, 12, 12), torch.float32, InputError, r"takes fields \(batch, 3 channels"),
             ({}, (2, 3, 8, 12, 12), torch.float64, InputTypeError,
              "u is torch.float64 but the module computes in torch.float32"),
             ({"boundary": "reflect"}, (2, 3, 8, 4, 4), torch.float32, InputError,
              r"'reflect' boundary needs maps larger than the stencil radius 4 .* got 4x4"),
             ({"scales": 2}, (3, 3, 8, 12, 12), torch.float32, InputError,
              "a batch of 2 scale copies must have a multiple of 2 entries, got 3")]
    for options, shape, dtype, error, match in cases:
        for terms in (("network",), ("convection", "diffusion")):
            step = EulerStep(M2SystemRHS(3, terms, backend=backend, **options), dt=0.5)
            with pytest.raises(error, match=match):
                step(torch.rand(*shape, dtype=dtype))
    # lower precision is computed in the module's dtype, as everywhere in the library
    step = EulerStep(M2SystemRHS(3, ("network",), backend=backend), dt=0.5)
    half = torch.rand(2, 3, 8, 12, 12).half()
    torch.testing.assert_close(step(half), step(half.float()).half(), rtol=0, atol=0)


@pytest.mark.parametrize("backend", ["auto", "reference"])
def test_the_lift_used_directly_names_what_is_wrong_with_its_input(backend):
    lift = M2Lift(1, 4, 8, 1.0, "zeros", backend=backend)
    with pytest.raises(InputError, match=r"expected M2Lift's images of shape \(batch, 1, 12, "
                                         r"12\), got \(2, 3, 12, 12\)"):
        lift(torch.rand(2, 3, 12, 12))
    with pytest.raises(InputError, match=r"must have shape \(batch, channels, height, width\), "
                                         r"got \(2, 12, 12\)"):
        lift(torch.rand(2, 12, 12))
    with pytest.raises(InputTypeError, match="is torch.float64 but the module computes in "
                                             "torch.float32"):
        lift(torch.rand(2, 1, 12, 12, dtype=torch.float64))
    half = torch.rand(2, 1, 12, 12).half()
    torch.testing.assert_close(lift(half), lift(half.float()).half(), rtol=0, atol=0)
