"""Models of one's own in the measurements (round 9): logits that are not ``(N, K)``, labels that
are not one class of the model per image, modes of submodules, NaN rows, models the describer
did not find, maps that change the resolution.

Every model here is small, with fixed weights, on seeded random images, and the labels are
built from the model's own predictions so that the true accuracy is known.
"""

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from eqpdenet.analysis.equivariance import (
    Transform,
    equivariance_error,
    model_invariance,
    quarter_turn_check,
)
from eqpdenet.analysis.robustness import accuracy_under, logit_change, rotation_curve
from eqpdenet.app.training import Split, accuracy, evaluate_scenarios
from eqpdenet.errors import ConfigError, InputError

LAPLACIAN = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])


def _classifier(classes: int = 3, side: int = 8) -> nn.Module:
    """A fixed linear classifier of ``side x side`` images, in evaluation mode."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(side * side, classes))
    return model.eval()


def _images(n: int = 20, side: int = 8) -> torch.Tensor:
    return torch.rand(n, 1, side, side, generator=torch.Generator().manual_seed(1))


def _labels_at(model: nn.Module, images: torch.Tensor, right: int) -> torch.Tensor:
    """Labels on which ``model`` is right on the first ``right`` images exactly."""
    with torch.no_grad():
        predicted = model(images).argmax(1)
    classes = model(images[:1]).shape[1]
    labels = predicted.clone()
    labels[right:] = (predicted[right:] + 1) % classes
    return labels


class Reshaped(nn.Module):
    """``inner``'s logits passed through ``how`` (a reshaping a user's model might do)."""

    def __init__(self, inner: nn.Module, how):
        super().__init__()
        self.inner, self.how = inner, how

    def forward(self, x):
        return self.how(self.inner(x))


# --- 1. logits must be (n, K) -------------------------------------------------------------------

def test_logits_with_trailing_unit_dimensions_are_refused_not_mis_scored():
    """Logits (N, K, 1, 1) were broadcast against the labels (N,): N x N pairs (a model right on
    96.5 % of MNIST digits scored 10.8 %)."""
    model = _classifier()
    images = _images()
    labels = _labels_at(model, images, right=15)
    assert rotation_curve(model, images, labels, [0]) == [pytest.approx(75.0)]
    assert evaluate_scenarios(model, Split(images, labels), ["test"], seed=0) == {
        "test": pytest.approx(75.0)}
    pooled = Reshaped(model, lambda logits: logits[:, :, None, None])
    with pytest.raises(InputError, match=r"shape \(20, 3, 1, 1\) for a batch of 20 image\(s\); "
                                         r"expected logits of shape \(20, K\)"):
        rotation_curve(pooled, images, labels, [0])
    with pytest.raises(InputError, match=r"\(20, 3, 1, 1\)"):
        evaluate_scenarios(pooled, Split(images, labels), ["test"], seed=0)
    with pytest.raises(InputError, match=r"\(20, 3, 1, 1\)"):
        accuracy(pooled, Split(images, labels))
    with pytest.raises(InputError, match=r"\(20, 3, 1, 1\)"):
        logit_change(pooled, images, 90)


@pytest.mark.parametrize("how, message", [
    (lambda logits: (logits, None), r"returned a tuple of 2 items for a batch of 20 image\(s\), "
                                    r"not a tensor of logits"),
    (lambda logits: {"logits": logits}, r"returned a dict with keys \['logits'\]"),
    (lambda logits: logits[:, 0], r"logits of shape \(20,\) for a batch of 20 image\(s\)"),
])
def test_outputs_that_are_not_logits_are_one_clear_error(how, message):
    model = Reshaped(_classifier(), how)
    images = _images()
    with pytest.raises(InputError, match=message):
        rotation_curve(model, images, torch.zeros(20, dtype=torch.long), [0])
    with pytest.raises(InputError, match=message):
        model_invariance(model, images, Transform.rotation(90))


def test_a_model_that_squeezes_its_last_one_image_batch_is_told_so():
    """21 images in batches of 4: the last batch is one image, which ``.squeeze()`` turned into
    logits (K,) (a bare "Tensors must have same number of dimensions")."""
    model = Reshaped(_classifier(), lambda logits: logits[:, :, None, None].squeeze())
    images = _images(21)
    with pytest.raises(InputError, match=r"shape \(3,\) for a batch of 1 image\(s\).*squeezes"):
        accuracy_under(model, images, torch.zeros(21, dtype=torch.long), lambda x: x,
                       batch_size=4)


def test_logits_of_another_width_in_another_batch_are_refused():
    model = Reshaped(_classifier(), lambda logits: logits if len(logits) > 1 else logits[:, :2])
    with pytest.raises(InputError, match="logits of 2 and of 3 classes"):
        logit_change(model, _images(5), 90, batch_size=4)


# --- 2. labels: one class per image, for evaluate_scenarios and accuracy too --------------------

@pytest.mark.parametrize("labels", [
    lambda y: y[:, None],   # (N, 1): scored N x N pairs
    lambda y: y[:1],        # (1,): compared with every prediction
    lambda y: torch.cat([y, y]),  # longer: a bare RuntimeError
])
def test_evaluate_scenarios_and_accuracy_check_the_labels(labels):
    model = _classifier()
    images = _images()
    right = _labels_at(model, images, right=20)
    with pytest.raises(InputError, match=r"labels must have shape \(20,\), one class per image"):
        Split(images, labels(right))  # refused where it is made
    split = SimpleNamespace(images=images, labels=labels(right))  # a split of one's own
    with pytest.raises(InputError, match=r"labels must have shape \(20,\), one class per image"):
        evaluate_scenarios(model, split, ["test"], seed=0)
    with pytest.raises(InputError, match=r"labels must have shape \(20,\)"):
        accuracy(model, split)


def test_scenarios_as_a_bare_string_are_refused():
    """``"iso"`` was iterated as the scenarios 'i', 's', 'o': "unknown scenario 'i'"."""
    model = _classifier()
    images = _images()
    split = Split(images, _labels_at(model, images, right=20))
    with pytest.raises(ConfigError, match=r"got the string 'test'; for one scenario write "
                                          r"\['test'\]"):
        evaluate_scenarios(model, split, "test", seed=0)
    assert evaluate_scenarios(model, split, ("test",), seed=0) == {"test": 100.0}


# --- 3. equivariance of a module is measured in evaluation mode ---------------------------------

def _conv_bn_dropout() -> nn.Sequential:
    conv = nn.Conv2d(1, 4, 3, padding=1)
    with torch.no_grad():
        conv.weight.copy_(LAPLACIAN.expand(4, 1, 3, 3))
        conv.bias.fill_(0.1)
    return nn.Sequential(conv, nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout2d(0.2))  # training mode


def test_a_freshly_built_layer_is_measured_in_evaluation_mode_and_left_as_it_was():
    """In training mode the batch statistics and the dropout made an equivariant layer read 0.60
    (not equivariant), moved its running statistics and drew from the global generator."""
    layer = _conv_bn_dropout()
    images = _images(8, 12)
    norm = layer[1]
    mean, batches = norm.running_mean.clone(), int(norm.num_batches_tracked)
    state = torch.get_rng_state()
    check = quarter_turn_check(layer, images)
    assert check["equivariant"] and check["error"] < 1e-6
    assert equivariance_error(layer, images, Transform.rotation(180)) < 1e-6
    assert torch.equal(norm.running_mean, mean) and int(norm.num_batches_tracked) == batches
    assert torch.equal(torch.get_rng_state(), state)
    assert all(module.training for module in layer.modules())  # as it was


# --- 4. each submodule's mode is restored -------------------------------------------------------

def _frozen_norm_model() -> nn.Sequential:
    """A model in training mode whose batch norm is frozen (evaluation mode), as in fine-tuning."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.BatchNorm2d(2), nn.Flatten(),
                          nn.Linear(2 * 8 * 8, 3))
    model.train()
    model[1].eval()
    return model


def test_measurements_restore_each_submodule_s_own_mode():
    images = _images()
    labels = torch.zeros(20, dtype=torch.long)
    calls = [
        lambda m: rotation_curve(m, images, labels, [0, 90]),
        lambda m: evaluate_scenarios(m, Split(images, labels), ["test"], seed=0),
        lambda m: accuracy(m, Split(images, labels)),
        lambda m: model_invariance(m, images, Transform.rotation(90)),
        lambda m: logit_change(m, images, 90),
        lambda m: equivariance_error(m[:2], images, Transform.rotation(90)),
    ]
    for call in calls:
        model = _frozen_norm_model()
        call(model)
        assert model.training and model[0].training and not model[1].training, call
    # an evaluation-mode classifier wrapped in a module in training mode stays in evaluation mode
    classifier = nn.Sequential(nn.Flatten(), nn.Dropout(0.5), nn.Linear(64, 3)).eval()
    wrapper = nn.Sequential(nn.Identity(), classifier)
    assert wrapper.training
    rotation_curve(wrapper, images, labels, [0, 90])
    assert wrapper.training and not any(m.training for m in classifier.modules())


def test_evaluation_mode_restores_every_flag():
    from eqpdenet.analysis.predictions import evaluation_mode

    model = _frozen_norm_model()
    with evaluation_mode(model):
        assert not any(module.training for module in model.modules())
    assert [m.training for m in model.modules()] == [True, True, False, True, True]


def test_the_describer_s_read_out_restores_each_submodule_s_mode():
    from eqpdenet.analysis.describe import leading_terms
    from eqpdenet.pde.rhs import InvariantSystemRHS

    rhs = InvariantSystemRHS(1, "se2", hidden=1)
    rhs.train()
    rhs.F[0].eval()  # its invariants' batch norm frozen
    leading_terms(rhs)
    assert rhs.F.training and not rhs.F[0].training and rhs.F[1].training


# --- 5. labels must be classes of the model -----------------------------------------------------

class NaNLogits(nn.Module):
    """Logits NaN on every image: no prediction anywhere."""

    def forward(self, x):
        return torch.full((len(x), 3), float("nan"))


def test_labels_outside_the_model_s_classes_are_refused():
    """Labels -1 matched NO_PREDICTION: a model without one finite logit scored 100 %; a 3-class
    model on labels 0 ... 9 scored 10 % silently."""
    images = _images()
    with pytest.raises(InputError, match=r"labels\[0\] = -1 is not a class of the model, which "
                                         r"returns 3 logits per image \(classes 0 \.\.\. 2\)"):
        accuracy_under(NaNLogits(), images, torch.full((20,), -1), lambda x: x)
    with pytest.raises(InputError, match=r"labels\[0\] = -1"):
        evaluate_scenarios(NaNLogits(), Split(images, torch.full((20,), -1)), ["test"], seed=0)
    tens = torch.arange(20) % 10
    with pytest.raises(InputError, match=r"labels\[3\] = 3 is not a class .* returns 3 logits"):
        rotation_curve(_classifier(3), images, tens, [0])
    with pytest.raises(InputError, match=r"labels\[3\] = 3"):
        accuracy(_classifier(3), Split(images, tens))
    # within the classes, an image without a prediction is an error
    assert accuracy_under(NaNLogits(), images, torch.zeros(20, dtype=torch.long),
                          lambda x: x) == 0.0


# --- 6. model_invariance is logit_change's measure ----------------------------------------------

class NaNOnMarked(nn.Module):
    """``inner``'s logits, NaN on an image whose top-left pixel is above 0.99."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.batches = []

    def forward(self, x):
        self.batches.append(len(x))
        out = self.inner(x).clone()
        out[x[:, 0, 0, 0] > 0.99] = float("nan")
        return out


def test_model_invariance_and_logit_change_agree_on_the_images_with_finite_logits():
    images = _images()
    images[:, 0, 0, 0] = 0.5
    images[:, 0, 0, -1] = 0.5  # what a quarter turn moves to the top-left corner
    images[7, 0, 0, 0] = 1.0   # image 7: NaN logits before the turn
    model = NaNOnMarked(_classifier())
    change = logit_change(model, images, 90)
    result = model_invariance(model, images, Transform.rotation(90))
    assert result["logit_change"] == pytest.approx(change, rel=1e-12)  # it was NaN
    keep = torch.arange(20) != 7
    assert change == pytest.approx(logit_change(model, images[keep], 90), rel=1e-12)
    with torch.no_grad():
        before = model.inner(images[keep]).argmax(1)
        after = model.inner(torch.rot90(images[keep], 1, (-2, -1))).argmax(1)
    assert result["unchanged"] == pytest.approx(float((before == after).double().mean()))
    model.batches.clear()
    model_invariance(model, images, Transform.rotation(90), batch_size=6)
    assert max(model.batches) == 6  # in batches
    # no image with finite logits: nothing compared (it read 0, "invariant")
    assert math.isnan(logit_change(NaNLogits(), images, 90))
    nothing = model_invariance(NaNLogits(), images, Transform.rotation(90))
    assert math.isnan(nothing["logit_change"]) and math.isnan(nothing["unchanged"])


# --- 7. the describer finds the PDE layers of models of one's own -------------------------------

def _small_layer():
    from eqpdenet import PDELayer

    torch.manual_seed(0)
    return PDELayer.build(["se2", "se2"], T=0.2, dt=0.1, stencil="central", init="heat",
                          init_scale=0.1, init_noise=0.01)


def test_describe_model_finds_pde_layers_inside_and_behind_wrappers():
    from torch.optim.swa_utils import AveragedModel

    from eqpdenet import EqPdeNet
    from eqpdenet.analysis.describe import describe_layer, describe_model

    layer = _small_layer()
    readme = nn.Sequential(layer, nn.Flatten(), nn.Linear(28 * 28, 8), nn.ReLU(), nn.Linear(8, 3))
    text = describe_model(readme)
    assert text.startswith("Sequential, module '0': PDELayer: 2 PDEs")
    assert describe_layer(layer) in text
    net = EqPdeNet(hidden=4, layer=_small_layer())
    plain = describe_model(net)
    assert plain.startswith("EqPdeNet: input u(0) = (image - 0) / 1, 2 PDEs, perceptron "
                            "784-4-4-10")
    assert describe_model(AveragedModel(net)) == plain
    assert describe_model(torch.compile(net)) == plain
    assert describe_model(nn.Sequential(nn.Identity(), net)) == (
        "Sequential, module '1': " + plain)
    assert describe_model(nn.Sequential(nn.Flatten())) == "Sequential: no PDE layer to describe"


def test_describe_model_reads_a_replaced_perceptron_from_its_linear_layers():
    from eqpdenet import EqPdeNet
    from eqpdenet.analysis.describe import describe_model

    net = EqPdeNet(hidden=4, layer=_small_layer())
    net.mlp = nn.Sequential(nn.Linear(784, 32), nn.Dropout(0.1), nn.ReLU(), nn.Linear(32, 16),
                            nn.ReLU(), nn.Linear(16, 10))
    assert "perceptron 784-32-16-10" in describe_model(net).splitlines()[0]


# --- 8. maps that change the resolution are refused ---------------------------------------------

def test_a_map_that_changes_the_pixel_spacing_is_refused_with_the_sizes():
    """An AvgPool2d(2) is exactly equivariant to a shift by (2, 0); measured at the input's
    spacing it read 0.82. Margins (a valid convolution, a padding) are still measured."""
    images = _images(4, 12)
    with pytest.raises(InputError, match=r"returns 6x6 maps for 12x12 images, and 5x5 for 10x10 "
                                         r"images .* not the 4x4 of a margin"):
        equivariance_error(nn.AvgPool2d(2), images, Transform.translation(2, 0))
    with pytest.raises(InputError, match=r"returns 24x24 maps for 12x12 images"):
        equivariance_error(nn.Upsample(scale_factor=2), images, Transform.rotation(90))
    valid = nn.Conv2d(1, 1, 3, bias=False)
    with torch.no_grad():
        valid.weight.copy_(LAPLACIAN[None, None])
    assert equivariance_error(valid, images, Transform.rotation(90)) < 1e-6
    padded = lambda u: nn.functional.pad(u, (3, 3, 3, 3))  # noqa: E731
    assert equivariance_error(padded, images, Transform.rotation(90)) < 1e-6


def test_a_map_of_one_size_only_is_held_to_a_margin_s_sizes():
    """A map that takes only its own input size (a model checking its input) cannot be probed on
    a smaller image: a margin of as many pixels on each side is measured, another is not."""
    def only_12x12(pool):
        def phi(u):
            if u.shape[-2:] != (12, 16):
                raise ValueError("expected 12x16 images")
            return pool(u)
        return phi

    images = torch.rand(3, 1, 12, 16, generator=torch.Generator().manual_seed(2))
    framed = only_12x12(lambda u: nn.functional.pad(u, (2, 2, 2, 2)))
    assert equivariance_error(framed, images, Transform.rotation(180)) < 1e-6
    with pytest.raises(InputError, match=r"returns 6x8 maps for 12x16 images: not a margin of as "
                                         r"many pixels on each side \(-6 rows, -8 columns\)"):
        equivariance_error(only_12x12(nn.AvgPool2d(2)), images, Transform.rotation(180))
    with pytest.raises(InputError, match=r"the map returned a tensor of shape \(3, 5\)"):
        equivariance_error(lambda u: u.flatten(1)[:, :5], images, Transform.rotation(180))


# --- minor: meta device, dtypes -----------------------------------------------------------------

class Counting(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner, self.calls = inner, 0

    def forward(self, x):
        self.calls += 1
        return self.inner(x)


def test_a_meta_model_is_refused_before_its_forward_pass():
    with torch.device("meta"):
        model = Counting(nn.Sequential(nn.Flatten(), nn.Linear(64, 3)))
    with pytest.raises(InputError, match="meta device"):
        rotation_curve(model, _images(), torch.zeros(20, dtype=torch.long), [0])
    assert model.calls == 0


def test_a_float64_model_takes_float32_images():
    model = _classifier().double()
    images = _images()
    labels = _labels_at(model, images.double(), right=10)
    assert rotation_curve(model, images, labels, [0]) == [pytest.approx(50.0)]
    assert logit_change(model, images, 90) == pytest.approx(
        logit_change(model, images.double(), 90), rel=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_model_invariance_moves_the_images_to_the_model_s_device():
    model = _classifier().cuda()
    images = _images()
    result = model_invariance(model, images, Transform.rotation(90))
    assert result["logit_change"] == pytest.approx(logit_change(model, images, 90), rel=1e-12)


def test_export_and_the_gcnn_export_module_keep_each_submodules_mode():
    """The same restore as evaluation_mode in the exporters (they set every submodule to the top
    module's mode afterwards: a frozen batch norm inside a model in training mode came back
    trainable)."""
    from eqpdenet.app.config import ModelConfig, build_model
    from eqpdenet.export import trace

    torch.manual_seed(0)
    model = build_model(ModelConfig(kind="cnn", image_size=12)).train()
    frozen = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    frozen.eval()
    trace(model, torch.rand(2, 1, 12, 12))
    assert model.training and not frozen.training
    pytest.importorskip("e2cnn")
    gcnn = build_model(ModelConfig(kind="gcnn", image_size=12)).train()
    classifier = gcnn.classifier.eval()
    gcnn.export_module()
    assert gcnn.training and not classifier.training
