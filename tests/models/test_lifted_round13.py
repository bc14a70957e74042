"""Faults of the lifted (M2) family and of the families' options found by the thirteenth probe,
each held fixed here:

* ``projected_fields(x, stages=k)`` of a ``projection = "softmax"`` model applied the last
  stage's learned temperatures (one per channel of the last stage) to the fields of an earlier
  stage: a size mismatch (a RuntimeError, and ``eqpdenet equivariance --checkpoint`` exited 1)
  where the channel counts differ, another stage's temperatures without a word where they agree.
  An earlier stage is now projected by the max over orientations; the last one as before.
* the options' fields declared ``bool`` (``normalize_hidden``, ``normalize_invariants``) were
  read by a truth test: the string ``"false"`` switched a batch norm on.
* a configuration changed after construction (``config.margin = -2``) was built into a model
  without its checks: a silent crop, ignored stage orientations, or a KeyError, AttributeError
  or ValueError from deep inside the constructor.
"""

from __future__ import annotations

import math

import pytest
import torch

from eqpdenet.app import equivariance_study
from eqpdenet.app.cli import main
from eqpdenet.app.config import ExperimentConfig, apply_overrides, build_model
from eqpdenet.app.training import save_checkpoint
from eqpdenet.errors import ConfigError
from eqpdenet.models import LiftedPDEConfig, LiftedPDENet
from eqpdenet.models import build_model as build_family
from eqpdenet.models.cnn import CNN, CNNConfig
from eqpdenet.models.gcnn import GCNNConfig
from eqpdenet.models.inputs import family_options
from eqpdenet.models.invariant_pde import InvariantPDEConfig, InvariantPDENet


def _images(count: int = 2, size: int = 28) -> torch.Tensor:
    return torch.rand(count, 1, size, size, generator=torch.Generator().manual_seed(0))


def _softmax_model(channels, scales: int = 1) -> LiftedPDENet:
    """A small soft-projection model whose temperatures differ per channel (far from 1)."""
    torch.manual_seed(0)
    model = LiftedPDENet(LiftedPDEConfig(channels=list(channels), blocks=[1] * len(channels),
                                         projection="softmax", scales=scales)).eval()
    with torch.no_grad():
        raw = torch.linspace(-3.0, 3.0, channels[-1])
        model.projection.raw_temperature.copy_(raw)
    return model


# ------------------------------------------------------------------ F1: per-stage projection


@pytest.mark.parametrize("channels, scales", [([2, 3, 4], 1), ([3, 3], 1), ([2, 3], 2)])
def test_every_stage_of_a_softmax_model_is_projected(channels, scales):
    """Stage ``k`` below the last: the max over orientations (and over scales) of its fields;
    the last stage: the model's own learned projection, bitwise as features() computes it."""
    model = _softmax_model(channels, scales)
    x = _images()
    last = len(channels)
    with torch.no_grad():
        for k in range(last):
            fields = model._staged(x, k)                      # (S B, C_k, N, h, w)
            expected = fields.amax(dim=2).unflatten(0, (scales, -1)).amax(dim=0)
            got = model.projected_fields(x, k)
            assert got.shape == expected.shape and got.shape[:2] == (2, channels[max(k - 1, 0)])
            assert torch.equal(got, expected), k
        expected = model.projection(model.fields(x))
        if scales > 1:
            expected = expected.unflatten(0, (scales, -1)).amax(dim=0)
        assert torch.equal(model.projected_fields(x, last), expected)
        assert torch.equal(model.projected_fields(x), expected)
        # the learned projection differs from the max there (the temperatures are in use)
        assert not torch.equal(expected, model.fields(x).amax(dim=2).unflatten(
            0, (scales, -1)).amax(dim=0))


def test_the_learned_projection_of_the_last_stage_is_the_soft_maximum():
    """``tau log mean exp(u / tau)`` with the last stage's temperatures, one per channel."""
    model = _softmax_model([2, 3])
    x = _images()
    with torch.no_grad():
        u = model.fields(x)
        tau = torch.nn.functional.softplus(model.projection.raw_temperature).view(1, -1, 1, 1, 1)
        expected = (tau * (torch.logsumexp(u / tau, dim=2, keepdim=True)
                           - math.log(u.shape[2]))).squeeze(2)
        torch.testing.assert_close(model.projected_fields(x, 2), expected, rtol=0, atol=0)


@pytest.mark.parametrize("projection", ["max", "mean"])
def test_parameter_free_projections_apply_to_every_stage(projection):
    torch.manual_seed(0)
    model = LiftedPDENet(LiftedPDEConfig(channels=[2, 3], blocks=[1, 1],
                                         projection=projection)).eval()
    x = _images()
    with torch.no_grad():
        for k in range(3):
            fields = model._staged(x, k)
            expected = fields.amax(dim=2) if projection == "max" else fields.mean(dim=2)
            assert torch.equal(model.projected_fields(x, k), expected)


def test_equivariance_measures_a_softmax_lifted_checkpoint(tmp_path, monkeypatch, capsys):
    """``eqpdenet equivariance --checkpoint`` on a soft-projection model of stages of 2 and 3
    channels: exit 0 with the lift and the first stage in the tables (it was exit 1, "unexpected
    RuntimeError", on the size mismatch)."""
    monkeypatch.setenv("EQPDENET_DATA", str(tmp_path / "nowhere"))
    # invariant_orders.md's own computation is not what is tested here
    monkeypatch.setattr(equivariance_study, "invariant_orders_text", lambda: "orders\n")
    config = apply_overrides(ExperimentConfig(), [
        "model.kind='lifted_pde'", "model.lifted_pde.projection='softmax'",
        "model.lifted_pde.channels=[2, 3]", "model.lifted_pde.blocks=[1, 1]"])
    torch.manual_seed(0)
    model = build_model(config.model)
    with torch.no_grad():
        model.projection.raw_temperature.copy_(torch.tensor([-2.0, 0.5, 3.0]))
    path = tmp_path / "soft" / "model.pt"
    path.parent.mkdir()
    save_checkpoint(path, model, config)
    out = tmp_path / "eq"
    try:
        status = main(["equivariance", "--quick", "--checkpoint", str(path), "--out", str(out)])
    except SystemExit as stop:
        status = stop.code
    err = capsys.readouterr().err
    assert status in (0, None), err
    table = (out / "table.md").read_text()
    assert "| lifted_pde lift |" in table and "| lifted_pde stage 1 |" in table
    rows = [line.split(",") for line in (out / "table.csv").read_text().splitlines()]
    lifted = [row for row in rows if row[0] == "transforms"
              and row[2] in ("lifted_pde lift", "lifted_pde stage 1")]
    assert len(lifted) == 2 * 6  # smooth inputs: 3 rotations, 2 scalings, 1 shift each
    # both maps rotate with the image: exactly (to rounding) under the quarter turn
    quarter = [float(row[9]) for row in lifted if row[4:6] == ["rotation", "90"]]
    assert len(quarter) == 2 and max(quarter) < 1e-5


# --------------------------------------------------------------------------- F2: bool fields


BOOL_FIELDS = ("normalize_invariants", "normalize_hidden", "center")
NOT_BOOLS = ("false", 1, 0, None)


@pytest.mark.parametrize("name", BOOL_FIELDS)
@pytest.mark.parametrize("value", NOT_BOOLS)
def test_a_lifted_bool_field_must_be_a_bool(name, value):
    message = f"invalid config: lifted_pde.{name}: must be true or false, got {value!r}"
    with pytest.raises(ConfigError) as error:
        LiftedPDEConfig(**{name: value})
    assert str(error.value) == message
    with pytest.raises(ConfigError) as error:  # as a mapping through the registry
        build_family("lifted_pde", lifted_pde={"channels": [2, 3], "blocks": [1, 1], name: value})
    assert str(error.value) == message


@pytest.mark.parametrize("name", BOOL_FIELDS)
def test_a_lifted_bool_field_takes_true_and_false(name):
    for value in (True, False):
        assert getattr(LiftedPDEConfig(**{name: value}), name) is value


def test_false_builds_no_batch_norm():
    """``normalize_hidden = False`` and ``normalize_invariants = False``: neither batch norm."""
    net = build_family("lifted_pde", lifted_pde={"channels": [3, 4], "blocks": [1, 1],
                                                 "normalize_hidden": False,
                                                 "normalize_invariants": False})
    term = net.stages[0][0].rhs.terms["network"]
    assert not isinstance(term.hidden_norm, torch.nn.BatchNorm1d)
    assert not isinstance(term.norm, torch.nn.BatchNorm1d)


@pytest.mark.parametrize("value", NOT_BOOLS)
def test_an_invariant_pde_bool_field_must_be_a_bool_when_its_model_is_built(value):
    """InvariantPDEConfig's own checks do not look at ``normalize_invariants``; the model's
    options are refused where the model is built from them, naming the field."""
    message = f"invalid config: invariant_pde.normalize_invariants: must be true or false, got {value!r}"
    with pytest.raises(ConfigError) as error:
        build_family("invariant_pde", invariant_pde={"normalize_invariants": value})
    assert str(error.value) == message
    with pytest.raises(ConfigError) as error:
        InvariantPDENet(InvariantPDEConfig(normalize_invariants=value))
    assert str(error.value) == message


# ------------------------------------------------------------ F3: configurations changed later


MUTATIONS = [
    ("margin", -2, "lifted_pde.margin: must be >= 0, got -2"),
    ("stage_orientations", [16, 16], "lifted_pde.stage_orientations[0]: must divide the "
                                      "orientations before it (8)"),
    ("blocks", [1, -1], "lifted_pde.blocks[1]: must be >= 0, got -1"),
    ("readout", "sum", "lifted_pde.readout: must be 'max', 'mean' or 'meanmax', got 'sum'"),
    ("projection", "min", "lifted_pde.projection: must be one of max, mean, softmax, got 'min'"),
    ("channels", [2, 3, 4], "lifted_pde.channels / lifted_pde.blocks: need one entry each per "
                            "stage: channels [2, 3, 4] has 3, blocks [1, 1] has 2"),
    ("normalize_hidden", "false", "lifted_pde.normalize_hidden: must be true or false, got "
                                  "'false'"),
]


@pytest.mark.parametrize("name, value, message", MUTATIONS, ids=[m[0] for m in MUTATIONS])
def test_a_lifted_configuration_changed_after_construction_is_checked_again(name, value,
                                                                           message):
    config = LiftedPDEConfig(channels=[2, 3], blocks=[1, 1])
    setattr(config, name, value)
    with pytest.raises(ConfigError) as error:
        LiftedPDENet(config)
    assert str(error.value).startswith(f"invalid config: {message}"), str(error.value)
    assert getattr(config, name) == value  # the user's instance as it was given


def test_a_valid_change_after_construction_is_built():
    config = LiftedPDEConfig(channels=[2, 3], blocks=[1, 1])
    config.margin = 2
    config.channels = (2, 4)  # a tuple: the checks make it a list, on the model's copy only
    net = LiftedPDENet(config).eval()
    assert net.config.margin == 2 and net.config.channels == [2, 4]
    assert config.channels == (2, 4) and net.config is not config
    with torch.no_grad():
        assert net.projected_fields(_images(), 0).shape == (2, 2, 32, 32)  # 28 + 2 margins
        assert net(_images()).shape == (2, 10)
    # a later change to the user's instance does not reach the built model's configuration
    config.margin = 5
    assert net.config.margin == 2


def test_a_rebuilt_model_loads_the_state_of_one_built_from_an_instance():
    config = LiftedPDEConfig(channels=[2, 3], blocks=[1, 1], projection="softmax")
    torch.manual_seed(0)
    first = LiftedPDENet(config).eval()
    second = LiftedPDENet(config).eval()
    second.load_state_dict(first.state_dict())
    with torch.no_grad():
        assert torch.equal(first(_images()), second(_images()))
    assert first.config == second.config == config


@pytest.mark.parametrize("options_type, name, field, value, message", [
    (CNNConfig, "cnn", "layers", 0, "cnn.layers: must be >= 1, got 0"),
    (CNNConfig, "cnn", "readout", "sum", "cnn.readout: must be 'max' or 'mean'"),
    (InvariantPDEConfig, "invariant_pde", "readout", "sum",
     "invariant_pde.readout: must be 'max', 'mean' or 'meanmax'"),
    (InvariantPDEConfig, "invariant_pde", "blocks", [1],
     "invariant_pde.channels / invariant_pde.blocks: need one entry each per stage"),
    (GCNNConfig, "gcnn", "pool", "min", "gcnn.pool: must be 'max' or 'antialiased'"),
    (GCNNConfig, "gcnn", "center", "false", "gcnn.center: must be true or false, got 'false'"),
])
def test_every_family_checks_an_instance_again(options_type, name, field, value, message):
    config = options_type()
    setattr(config, field, value)
    with pytest.raises(ConfigError) as error:
        family_options(config, options_type, name)
    assert str(error.value).startswith(f"invalid config: {message}"), str(error.value)
    assert getattr(config, field) == value


def test_a_changed_cnn_configuration_is_refused_by_the_model():
    config = CNNConfig()
    config.pool_after = 9
    with pytest.raises(ConfigError, match=r"^invalid config: cnn\.pool_after: 9 is after the last"):
        CNN(config)
