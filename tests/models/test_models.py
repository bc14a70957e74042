"""Models: the paper's exact parameter counts, shapes, composition with user code; configs."""

import pytest
import torch
from torch import nn

from eqpdenet import FCNN, EqPdeNet, LayerConfig, PDELayer, build_model, count_parameters

PAPER = {16: (13033, 13002), 32: (26537, 26506), 64: (55081, 55050), 128: (118313, 118282),
         256: (269353, 269322)}


@pytest.mark.parametrize("hidden", sorted(PAPER))
def test_parameter_counts_equal_the_papers(hidden):
    eqpdenet, fcnn = PAPER[hidden]
    assert count_parameters(EqPdeNet(hidden)) == eqpdenet
    assert count_parameters(FCNN(hidden)) == fcnn
    assert count_parameters(build_model("eqpdenet", hidden=hidden)) == eqpdenet
    assert count_parameters(build_model("fcnn", hidden=hidden, layer=LayerConfig())) == fcnn


def test_other_layers_change_the_count_as_expected():
    # polynomial degree 2 in 5 invariants: C(7, 2) - 1 = 20 weights + bias; in 6: 27 + 1
    layer = LayerConfig(rhs="polynomial", degree=2)
    assert count_parameters(EqPdeNet(16, layer)) == 13002 + 2 * 21 + 2 * 28 + 5
    concat = EqPdeNet(16, LayerConfig(reduction="concat"))
    assert count_parameters(concat) == 13002 + 784 * 3 * 16 + 26


def test_eqpdenet_defaults_to_the_papers_layer_and_the_library_to_covariant_ratios():
    def modes(layer):
        return {pde.step.rhs.ratio_regularisation for pde in layer.pdes}

    assert modes(EqPdeNet(16).pde_layer) == {"absolute"}
    assert modes(PDELayer.paper()) == {"absolute"}
    assert modes(PDELayer.build()) == {"covariant"}
    preset = PDELayer.preset("se2_sim2")
    assert modes(preset) == {"covariant"}
    assert [pde.name for pde in preset.pdes] == ["pde0:se2", "pde1:se2", "pde2:sim2", "pde3:sim2"]
    with pytest.raises(ValueError, match="unknown layer preset 'se3'"):
        PDELayer.preset("se3")
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['steps'\]"):
        PDELayer.paper(steps=3)


def test_forward_shapes_and_zero_init_equals_fcnn():
    torch.manual_seed(0)
    model = EqPdeNet(32, LayerConfig(init_noise=0.0))
    images = torch.rand(5, 1, 28, 28)
    assert model(images).shape == (5, 10)
    # at zero initialisation the PDE layer is the identity, so EqPdeNet is its perceptron
    torch.testing.assert_close(model(images), model.mlp(images.flatten(1)))


def test_same_seed_gives_eqpdenet_the_perceptron_of_fcnn():
    """Fair comparison: the PDE layer's init (noise included) does not shift the random stream."""
    torch.manual_seed(7)
    eq = build_model("eqpdenet", hidden=16)
    torch.manual_seed(7)
    fc = build_model("fcnn", hidden=16)
    for a, b in zip(eq.mlp.parameters(), fc.mlp.parameters(), strict=True):
        torch.testing.assert_close(a, b)


def test_standardisation_is_applied_and_has_no_parameters():
    model = FCNN(16, input_mean=0.1307, input_std=0.3081)
    images = torch.rand(2, 1, 28, 28)
    torch.testing.assert_close(model(images), model.mlp(((images - 0.1307) / 0.3081).flatten(1)))
    assert count_parameters(model) == 13002


def test_composes_in_a_users_sequential_with_state_dict_round_trip():
    net = nn.Sequential(PDELayer.paper(init="heat", init_scale=0.1), nn.Flatten(),
                        nn.Linear(784, 10))
    out = net(torch.rand(4, 1, 28, 28))
    out.sum().backward()
    assert all(p.grad is not None for p in net.parameters())
    copy = nn.Sequential(PDELayer.paper(init_noise=0.0), nn.Flatten(), nn.Linear(784, 10))
    copy.load_state_dict(net.state_dict())
    images = torch.rand(3, 1, 28, 28)
    torch.testing.assert_close(copy(images), net(images))


def test_wrong_input_shape_is_a_clear_error():
    message = r"expected images of shape \(batch, 1, 28, 28\), got \(2, 1, 32, 32\)"
    with pytest.raises(ValueError, match=message):
        EqPdeNet(16)(torch.rand(2, 1, 32, 32))
    with pytest.raises(ValueError, match="batch, channels, height, width"):
        FCNN(16)(torch.rand(2, 784))
