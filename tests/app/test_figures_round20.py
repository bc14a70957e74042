"""The reading tools (round 20, an outside probe: F1-F6 of the reading tools' report).

Before: ``diagram_arrays`` / ``figure_diagram`` ran a module PDE in training mode (a dropout
after the layer printed a relative difference of 0.57 for a map of 0.019, a batch norm's running
statistics moved); a model or a flow given to ``evolution_grid`` / ``evolution_trajectories``
was a bare AttributeError (no attribute 'pdes'), and a PDE returning a tuple, a cut frame or
logits a bare AttributeError, a size mismatch or a message blaming "images"; ``evolution_grid``
drew a PDE of another dt under the first row's times (u(T) under "t = 0.8"); it drew channel 0
of a multi-channel image without a word; ``describe_model`` said "no PDE layer to describe" of a
bare EulerFlow or EulerStep; ``describe`` without ``--out`` ignored --samples, --frames and
--data-dir, even invalid ones."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from eqpdenet.analysis.describe import describe_layer, describe_model, describes_pdes
from eqpdenet.analysis.references import heat_pde
from eqpdenet.app import cli, figures
from eqpdenet.app.cli import main
from eqpdenet.app.config import ExperimentConfig, build_model
from eqpdenet.app.training import save_checkpoint
from eqpdenet.errors import InputError, InputTypeError
from eqpdenet.pde import PDELayer
from eqpdenet.pde.integrators import EulerFlow, EulerStep
from eqpdenet.pde.rhs import InvariantSystemRHS

DIGIT = torch.zeros(1, 1, 28, 28)
DIGIT[..., 8:20, 10:18] = 1.0


def _heat():
    return heat_pde(T=0.2, dt=0.1)


def _captured(monkeypatch) -> list:
    drawn = []
    monkeypatch.setattr(figures, "save_figure", lambda fig, path, guard=None: drawn.append(fig))
    return drawn


def _layer(init_noise: float = 0.0) -> PDELayer:
    torch.manual_seed(0)
    return PDELayer.build(["se2"], T=0.2, dt=0.1, init="heat", init_scale=0.1,
                          init_noise=init_noise)


# --- F1: a module PDE is measured in evaluation mode, its modes restored -----------------------

def test_a_dropout_after_the_pde_is_off_in_the_diagram_as_in_equivariance_error():
    """In evaluation mode a dropout is the identity: the panels are the PDE's own, bit for bit
    (in training mode half the pixels were zeroed, and the difference read 100 times larger)."""
    heat = _heat()
    pde = nn.Sequential(heat, nn.Dropout(0.5))  # a new module is in training mode
    torch.manual_seed(0)
    with_dropout = figures.diagram_arrays(DIGIT, pde, angle=30.0)
    alone = figures.diagram_arrays(DIGIT, heat, angle=30.0)
    for key, value in alone.items():
        assert torch.equal(with_dropout[key], value), key
    assert pde.training and pde[1].training


def test_the_diagram_leaves_a_batch_norm_s_statistics_and_every_module_s_own_mode():
    heat = _heat()
    norm, frozen = nn.BatchNorm2d(1), nn.BatchNorm2d(1).eval()
    pde = nn.Sequential(heat, norm, frozen)
    modes = [module.training for module in pde.modules()]
    assert True in modes and False in modes   # each restored by its own flag
    figures.diagram_arrays(DIGIT, pde, angle=90.0)
    assert float(norm.running_mean) == 0.0 and float(norm.running_var) == 1.0
    assert int(norm.num_batches_tracked) == 0
    assert [module.training for module in pde.modules()] == modes


# --- F2: a model, a flow, a wrong output: one clear error each --------------------------------

class _Model(nn.Module):
    """A model holding its PDE layer as ``model.pde_layer`` (as EqPdeNet does)."""

    def __init__(self):
        super().__init__()
        self.pde_layer = _layer()
        self.head = nn.Linear(28 * 28, 10)

    def forward(self, x):
        return self.head(self.pde_layer(x).flatten(1))


MODEL_FIX = ("its PDE layer is model.pde_layer (with standardize=model.standardize, the model's "
             "input standardisation)")


@pytest.mark.parametrize("function", ["evolution_grid", "evolution_trajectories"])
def test_a_model_given_for_the_layer_is_pointed_to_model_pde_layer(function, tmp_path):
    call = getattr(figures, function)
    with pytest.raises(InputTypeError) as caught:
        call(_Model(), DIGIT, tmp_path / "e.png") if function == "evolution_grid" else call(
            _Model(), DIGIT)
    assert str(caught.value) == f"{function} takes a PDELayer, got _Model: {MODEL_FIX}"
    assert not (tmp_path / "e.png").exists()


def test_a_flow_or_a_step_given_for_the_layer_is_told_to_wrap_it(tmp_path):
    flow = _layer().pdes[0]
    with pytest.raises(InputTypeError) as caught:
        figures.evolution_grid(flow, DIGIT, tmp_path / "e.png")
    assert str(caught.value) == ("evolution_grid takes a PDELayer, got EulerFlow of "
                                 "InvariantRHS: pass a layer of its flow, PDELayer([flow])")
    with pytest.raises(InputTypeError) as caught:
        figures.evolution_trajectories(flow.step, DIGIT)
    assert str(caught.value) == (
        "evolution_trajectories takes a PDELayer, got EulerStep of InvariantRHS: pass a layer "
        "of its flow, PDELayer([flow]) (one of EulerFlow(step, steps))")
    with pytest.raises(InputTypeError, match=r"^evolution_trajectories takes a PDELayer, got "
                                             r"str: a PDELayer's evolutions are drawn"):
        figures.evolution_trajectories("layer", DIGIT)


EXPECTED = "expected maps (1, C', 28, 28), an image's evolution on its own pixel grid"


@pytest.mark.parametrize(("pde", "error", "message"), [
    (lambda u: (u,), InputTypeError,
     f"the PDE's output is a tuple of 1 item for an image of shape (1, 1, 28, 28); {EXPECTED}"),
    (lambda u: u[..., 1:, 1:], InputError,
     f"the PDE's output has shape (1, 1, 27, 27) for an image of shape (1, 1, 28, 28); "
     f"{EXPECTED}"),
    (_Model(), InputError,
     f"the PDE's output has shape (1, 10) for an image of shape (1, 1, 28, 28); {EXPECTED}; "
     f"pde is a model: pass its PDE (e.g. lambda u: model.pde_layer.pdes[i](model.standardize(u))"
     f", as figure --pde i draws)"),
], ids=["tuple", "cut-frame", "logits"])
def test_a_pde_output_that_is_no_image_is_named_as_the_pde_s_output(pde, error, message,
                                                                    tmp_path):
    with pytest.raises(error) as caught:
        figures.figure_diagram(DIGIT, pde, tmp_path / "d.png")
    assert type(caught.value) is error and str(caught.value) == message
    assert not (tmp_path / "d.png").exists()


def test_a_pde_that_is_not_callable_is_refused_naming_pde():
    with pytest.raises(InputTypeError) as caught:
        figures.diagram_arrays(DIGIT, "heat")
    assert str(caught.value) == (
        "pde must be a callable that evolves an image (1, C, H, W) into maps of its size (a "
        "flow such as heat_pde(...), a module, a function), got str")


def test_an_output_that_changes_only_for_the_blank_image_is_refused_too():
    """Each of the three calls is checked: the blank image's evolution was averaged whatever
    its shape."""
    def pde(u):
        return u[..., :20, :] if not bool(u.any()) else u

    with pytest.raises(InputError, match=r"^the PDE's output has shape \(1, 1, 20, 28\)"):
        figures.diagram_arrays(DIGIT, pde)


# --- F3: the times of PDEs of different dt or steps -------------------------------------------

def _titles(fig, rows: int) -> list[list[str]]:
    axes = fig.axes
    columns = len(axes) // rows
    return [[ax.get_title() for ax in axes[r * columns:(r + 1) * columns]] for r in range(rows)]


def test_a_pde_of_another_dt_is_drawn_under_its_own_times(monkeypatch, tmp_path):
    drawn = _captured(monkeypatch)
    torch.manual_seed(0)
    base = PDELayer.build(["se2", "se2"], T=1.0, dt=0.1, init="heat", init_scale=0.1,
                          init_noise=0.0)
    slow = EulerFlow(EulerStep(base.pdes[1].step.rhs, dt=0.25, name="slow"), 4)  # T = 1 too
    layer = PDELayer([base.pdes[0], slow, base.pdes[0]])
    figures.evolution_grid(layer, torch.cat([DIGIT, DIGIT]), tmp_path / "e.png", frames=6)
    first = ["t = 0", "t = 0.2", "t = 0.4", "t = 0.6", "t = 0.8", "t = 1"]
    second = ["t = 0", "t = 0.25", "t = 0.5", "t = 0.75", "t = 1", ""]
    # per sample: PDE 0, the slow PDE headed by its own times, PDE 0 again headed again
    assert _titles(drawn[0], 6) == [first, second, first] * 2


def test_rows_of_the_same_times_are_headed_once_per_sample(monkeypatch, tmp_path):
    drawn = _captured(monkeypatch)
    layer = PDELayer([_layer().pdes[0], _layer().pdes[0]])
    figures.evolution_grid(layer, torch.cat([DIGIT, DIGIT]), tmp_path / "e.png", frames=3)
    headed, blank = ["t = 0", "t = 0.1", "t = 0.2"], ["", "", ""]
    assert _titles(drawn[0], 4) == [headed, blank, headed, blank]


# --- F4: a multi-channel image draws channel 0, and says so ---------------------------------

def test_the_grid_of_a_multichannel_image_says_that_it_draws_channel_0(monkeypatch, tmp_path):
    drawn = _captured(monkeypatch)
    layer = _layer()
    image = torch.zeros(1, 3, 16, 16)
    image[:, 1:, 6:10, 4:12] = 1.0   # channel 0 blank, the others not: channel 0 is drawn
    figures.evolution_grid(layer, image, tmp_path / "e.png", frames=2, title="u of x")
    fig = drawn[0]
    assert fig._suptitle.get_text() == (
        "u of x\nchannel 0 of 3 drawn (each row's range is channel 0's)")
    shown = torch.as_tensor(fig.axes[1].get_images()[0].get_array().data)
    trajectory = figures.evolution_trajectories(layer, image)[0]
    assert torch.equal(shown, trajectory[-1, 0, 0]) and float(shown.abs().max()) == 0.0
    assert float(trajectory[-1, 0, 1].abs().max()) > 0.1
    figures.evolution_grid(layer, image, tmp_path / "f.png", frames=2)
    assert drawn[1]._suptitle.get_text() == (
        "channel 0 of 3 drawn (each row's range is channel 0's)")
    figures.evolution_grid(layer, DIGIT, tmp_path / "g.png", frames=2)
    assert drawn[2]._suptitle is None   # one channel: nothing to say


# --- F5: a scalar PDE outside a PDELayer is described ------------------------------------------

def test_a_bare_flow_is_described_as_a_layer_s_pde():
    """The same lines as describe_layer's for that PDE, under the flow's class."""
    flow = _layer(init_noise=0.01).pdes[0]
    block = describe_layer(PDELayer([flow])).split("\nReduction")[0]
    expected = "EulerFlow" + block[len("PDE 0"):]
    assert describe_model(flow) == expected
    assert describes_pdes(flow)
    sequential = nn.Sequential(flow, nn.Flatten(), nn.Linear(28 * 28, 10))
    assert describe_model(sequential) == "Sequential, module '0': " + expected
    assert describes_pdes(sequential)


def test_a_bare_step_is_described_as_one_euler_step():
    step = _layer().pdes[0].step
    lines = describe_model(step).splitlines()
    assert lines[0] == ("EulerStep (pde0:se2; invariants of SE(2), rotations and translations "
                        "of the plane, eq. (4))")
    assert lines[3].startswith("  one Euler step, dt = 0.1, stencil = central, h = 1, "
                               "boundary = replicate; diffusion check 0 ≤ a·dt ≤ 0.25: ")


def test_steps_of_pde_systems_beside_a_layer_are_described_too():
    torch.manual_seed(0)
    system = EulerStep(InvariantSystemRHS(1, "se2", hidden=1), 0.25, name="block")
    text = describe_model(nn.Sequential(_layer(), system))
    assert text.startswith("Sequential, module '0': PDELayer: 1 PDEs")
    assert "\nSequential: 1 Euler steps of PDE systems\nblock: u <- u + 0.25 F(I(u))" in text


# --- F6: describe's options of the evolution images need --out ----------------------------------

@pytest.mark.parametrize(("options", "names", "pronoun"), [
    (["--samples", "99999"], "--samples is", "it"),
    (["--frames", "40"], "--frames is", "it"),
    (["--samples", "1", "--frames", "3", "--data-dir", "/nonexistent"],
     "--samples, --frames and --data-dir are", "them"),
])
def test_describe_refuses_the_options_of_the_images_without_out(options, names, pronoun,
                                                                capsys, tmp_path):
    """Refused before the checkpoint is read (this one does not exist)."""
    assert main(["describe", str(tmp_path / "none.pt"), *options]) == 2
    listed = names.rsplit(" ", 1)[0]  # without "is" / "are"
    err = capsys.readouterr().err
    assert err.startswith(
        f"eqpdenet: error: {names} for the evolution images that describe draws with --out "
        f"FOLDER; without --out it only prints the PDEs and would not use {pronoun}: add --out "
        f"FOLDER, or leave {listed} out")
    assert err.count("\n") == 1


def test_describe_with_out_evolves_the_default_images_and_frames(monkeypatch, tmp_path):
    """--samples 0 1 2 and --frames 6 where not given, as before."""
    config = ExperimentConfig()
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "m.pt", build_model(config.model), config)
    seen = {}

    def images(checkpoint, config, payload, data_dir, samples, **kwargs):
        seen["samples"] = samples
        return DIGIT.expand(len(samples), 1, 28, 28), [f"#{n}" for n in samples]

    def grid(layer, images, path, *, frames, **kwargs):
        seen["frames"] = frames

    monkeypatch.setattr(cli, "_describe_images", images)
    monkeypatch.setattr(figures, "evolution_grid", grid)
    assert main(["describe", str(tmp_path / "m.pt"), "--out", str(tmp_path / "d")]) == 0
    assert seen == {"samples": [0, 1, 2], "frames": 6}
    assert main(["describe", str(tmp_path / "m.pt"), "--out", str(tmp_path / "e"), "--samples",
                 "4", "--frames", "2"]) == 0
    assert seen == {"samples": [4], "frames": 2}
