"""The deep InvariantPDENet and the CNN / G-CNN baselines: sizes, shapes, invariance, options."""

import pytest
import torch

from eqpdenet import ConfigError, EqPdeNet, LayerConfig, build_model, count_parameters
from eqpdenet.models import CNN, CNNConfig, InvariantPDEConfig, InvariantPDENet
from eqpdenet.pde import EulerStep, InvariantSystemRHS
from helpers import assert_equivariant


def test_parameter_counts():
    # 1*20*9 + 6*20*20*9 convolutions, 7 batch norms of 20, a 20 -> 10 classifier
    assert count_parameters(CNN()) == 180 + 6 * 3600 + 7 * 40 + 210
    small = InvariantPDENet(InvariantPDEConfig(channels=[4], blocks=[1], hidden=2.0))
    # lift: batch norm of the 5 se2 invariants, 5 -> 4 channels, batch norm; F: batch norm of
    # the 4*5 invariants, 20 -> 8, batch norm, 8 -> 4 (+bias); readout batch norm, 4 -> 10
    assert count_parameters(small) == (10 + 20 + 8) + (40 + 160 + 16 + 32 + 4) + 8 + 50


def test_deep_model_logits_are_rot90_invariant_and_blocks_are_euler_steps():
    torch.manual_seed(0)
    net = InvariantPDENet(InvariantPDEConfig(channels=[6, 8], blocks=[2, 1])).double().eval()
    with torch.no_grad():  # non-trivial batch-norm statistics
        for module in net.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    images = torch.rand(3, 1, 28, 28, dtype=torch.float64)
    assert_equivariant(net, images, invariant=True)
    steps = [m for m in net.modules() if isinstance(m, EulerStep)]
    assert len(steps) == 3 and all(isinstance(s.rhs, InvariantSystemRHS) for s in steps)
    u = torch.rand(2, 6, 14, 14, dtype=torch.float64)
    torch.testing.assert_close(steps[0](u), u + steps[0].dt * steps[0].rhs(u))


@pytest.mark.parametrize("joint", ["channel", "mixtures", "all"])
@pytest.mark.parametrize("group", ["se2", "sim2"])
def test_system_rhs_is_equivariant_for_every_choice_of_invariants(group, joint):
    torch.manual_seed(0)
    rhs = InvariantSystemRHS(3, group, hidden=5, joint=joint, mixtures=2).double().eval()
    assert len(rhs.names) == rhs.F[0].num_features
    assert_equivariant(rhs, torch.rand(2, 3, 12, 12, dtype=torch.float64))


def test_per_channel_invariants_are_each_channels_own():
    rhs = InvariantSystemRHS(2, "se2")
    u = torch.rand(1, 2, 8, 8, dtype=torch.float64)
    both = rhs.invariants(u)
    alone = InvariantSystemRHS(1, "se2").invariants(u[:, 1:])
    torch.testing.assert_close(both[:, 5:], alone)
    assert rhs.names[5] == "u2"


def test_plain_cnn_is_not_rotation_invariant():
    torch.manual_seed(0)
    with pytest.raises(AssertionError, match="not equivariant"):
        assert_equivariant(CNN().double().eval(), torch.rand(2, 1, 28, 28, dtype=torch.float64),
                           invariant=True)


@pytest.mark.parametrize("pool", ["max", "antialiased"])
def test_gcnn_is_rot90_invariant(pool):
    pytest.importorskip("e2cnn")
    from eqpdenet.models.gcnn import GCNN, GCNNConfig

    torch.manual_seed(0)
    # pooling after both layers: 28 -> 14 -> 7, even and odd sizes
    net = GCNN(GCNNConfig(channels=[2, 3], kernels=[5, 3], pool_after=[1, 2], pool=pool)).eval()
    assert_equivariant(net, torch.rand(2, 1, 28, 28), invariant=True)


@pytest.mark.parametrize("pool", ["max", "antialiased"])
def test_gcnn_runs_in_float64_and_matches_e2cnns_group_pooling_in_float32(pool):
    """e2cnn's GroupPooling writes float32 whatever its input; the model takes the same maximum
    over each field's N channels itself: float64 works (rot90-invariant to float64 rounding) and
    float32 is bitwise what e2cnn's own pooling gives. Casting one model leaves another of the
    same shapes as it was (e2cnn shares its basis expansions between models; each G-CNN gets
    its own)."""
    pytest.importorskip("e2cnn")
    from eqpdenet.models.gcnn import GCNN, GCNNConfig

    config = GCNNConfig(channels=[2, 3], kernels=[5, 3], pool_after=[1, 2], pool=pool)
    torch.manual_seed(0)
    net = GCNN(config).eval()
    images = torch.rand(2, 1, 28, 28)
    with torch.no_grad():
        fields = net._enn.GeometricTensor(net.standardize(images), net._input_type)
        expected = net.classifier(net.features(fields).tensor.amax(dim=(-2, -1)))
        assert torch.equal(net(images), expected)
    net.train()  # and the training step's gradients, bitwise
    params = list(net.parameters())
    ours = torch.autograd.grad(net(images).square().sum(), params)
    fields = net._enn.GeometricTensor(net.standardize(images), net._input_type)
    e2cnns = torch.autograd.grad(net.classifier(net.features(fields).tensor.amax(dim=(-2, -1)))
                                 .square().sum(), params)
    assert all(torch.equal(a, b) for a, b in zip(ours, e2cnns, strict=True))
    with torch.no_grad():
        before = net.eval()(images)  # (the training-mode passes moved the batch-norm statistics)
    torch.manual_seed(0)
    double = GCNN(config).double().eval()
    logits = double(images.double())
    assert logits.dtype == torch.float64
    assert float((logits - expected).abs().max()) < 1e-4 * float(expected.abs().max())
    assert_equivariant(double, images.double(), invariant=True)
    with torch.no_grad():
        assert torch.equal(net(images), before)  # the float32 model, after the cast of the other


def test_gcnn_parameter_counts():
    pytest.importorskip("e2cnn")
    from eqpdenet.models.gcnn import GCNN, GCNNConfig

    # C8 with e2cnn 0.2.3's steerable bases: the lifting 5x5 convolution has 11 coefficients
    # per output field, a 3x3 convolution between regular fields 48 per pair of fields; inner
    # batch norm one (weight, bias) pair per field; the classifier reads one map per field
    def count(channels):
        lift = 11 * channels[0]
        convolutions = sum(48 * a * b for a, b in zip(channels[:-1], channels[1:], strict=True))
        return lift + convolutions + 2 * sum(channels) + 10 * channels[-1] + 10

    small = GCNN(GCNNConfig(channels=[2, 3], kernels=[5, 3], pool_after=[1]))
    assert count_parameters(small) == count([2, 3]) == 360
    assert count_parameters(GCNN()) == count([7, 10, 12, 14, 14]) == 26_933
    # the anti-aliased pooling has no parameters
    assert count_parameters(GCNN(GCNNConfig(pool="antialiased"))) == 26_933
    with pytest.raises(ConfigError, match="gcnn.pool: must be 'max' or 'antialiased'"):
        GCNNConfig(pool="average")
    with pytest.raises(ConfigError, match=r"gcnn.channels / gcnn.kernels: .*channels \[4\] has "
                                          r"1, kernels \[5, 3, 3, 3, 3\] has 5"):
        GCNNConfig(channels=[4])


def test_eqpdenet_invariant_head_is_rot90_invariant_with_an_se2_layer():
    torch.manual_seed(0)
    layer = LayerConfig(invariants=["se2", "se2"], reduction="concat", init="normal",
                        init_scale=0.05)
    model = EqPdeNet(16, layer, head="invariant").double().eval()
    assert_equivariant(model, torch.rand(2, 1, 28, 28, dtype=torch.float64), invariant=True)
    # 2 PDE outputs x 5 invariants x (mean, max) = 20 features into 20-16-16-10
    assert model.mlp[0].in_features == 20


def test_registry_builds_every_family_and_rejects_bad_options():
    for kind in ("cnn", "invariant_pde", "fcnn", "eqpdenet"):
        assert build_model(kind, image_size=28, classes=7)(torch.rand(2, 1, 28, 28)).shape == (2, 7)
    with pytest.raises(ConfigError, match=r"invariant_pde.channels / invariant_pde.blocks: "
                                          r".*channels \[4, 8\] has 2, blocks \[1\] has 1"):
        InvariantPDEConfig(channels=[4, 8], blocks=[1])
    with pytest.raises(ConfigError, match="cnn.readout"):
        CNNConfig(readout="sum")


def test_fast_se2_per_channel_path_equals_the_joint_module():
    from eqpdenet.pde import jet
    from eqpdenet.pde.joint import JointInvariants
    from eqpdenet.pde.rhs import PerChannelInvariants

    u = torch.rand(2, 3, 9, 9, dtype=torch.float64)
    j = jet(u, 2, "isotropic")
    one = JointInvariants(1, "se2")
    expected = torch.cat([one(j[:, c:c + 1]) for c in range(3)], dim=1)
    torch.testing.assert_close(PerChannelInvariants(3, "se2")(j), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("pool", ["max", "antialiased"])
def test_gcnn_state_dict_does_not_depend_on_the_mode_it_was_saved_in(pool):
    pytest.importorskip("e2cnn")
    from eqpdenet.models.gcnn import GCNN, GCNNConfig

    torch.manual_seed(0)
    config = GCNNConfig(channels=[2, 2], kernels=[3, 3], pool_after=[1], pool=pool)
    x = torch.rand(3, 1, 12, 12)
    source = GCNN(config, image_size=12).eval()
    expected = source(x)
    for mode in (True, False):
        source.train(mode)
        state = source.state_dict()
        assert not any(k.endswith((".filter", ".expanded_bias")) for k in state)
        for target_mode in (True, False):
            target = GCNN(config, image_size=12).train(target_mode)
            target.load_state_dict(state)  # strict
            torch.testing.assert_close(target.eval()(x), expected)
