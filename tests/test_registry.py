"""The registry helper, the checks module and the error hierarchy."""

import pytest
import torch

from eqpdenet import ConfigError, InputError, Registry
from eqpdenet.checks import check_images, require_int, require_positive
from eqpdenet.errors import InputTypeError
from eqpdenet.kernels import BACKENDS
from eqpdenet.models import MODELS
from eqpdenet.pde import INITS, INVARIANT_SETS, REDUCTIONS, RIGHT_HAND_SIDES, STENCILS


def test_register_get_replace_and_unknown_names():
    registry = Registry("colour")
    assert registry.register("red", 1) == 1
    with pytest.raises(ConfigError, match="already registered"):
        registry.register("red", 2)
    registry.register("red", 3, replace=True)
    assert registry.get("red") == 3 and "red" in registry and len(registry) == 1

    @registry.register("blue")
    def blue():
        return "b"

    assert registry.get("blue") is blue and registry.names() == ("blue", "red")
    with pytest.raises(ConfigError, match="unknown colour 'green'; available: blue, red"):
        registry.get("green")
    with pytest.raises(ValueError, match=r"invalid config: paint\[0\]: unknown colour 'green'"):
        registry.check("green", "paint[0]")


def test_change_listeners_run_on_registration():
    registry, calls = Registry("thing"), []
    registry.on_change(lambda: calls.append(1))
    registry.register("a", 1)
    registry.register("a", 2, replace=True)
    assert calls == [1, 1]


def test_every_named_choice_has_a_registry():
    assert set(STENCILS.names()) >= {"central", "isotropic"}
    assert set(INVARIANT_SETS.names()) >= {"se2", "scaling"}
    assert RIGHT_HAND_SIDES.names() == ("linear", "polynomial")
    assert REDUCTIONS.names() == ("concat", "linear", "max", "mean")
    assert INITS.names() == ("heat", "normal", "zeros")
    assert BACKENDS.names() == ("auto", "fused", "reference")
    assert set(MODELS.names()) >= {"eqpdenet", "fcnn"}


def test_checks_name_the_field_and_the_cause():
    with pytest.raises(ConfigError, match="lr: must be a finite number, got inf"):
        require_positive(float("inf"), "lr")
    with pytest.raises(ConfigError, match="epochs: must be >= 1, got 0"):
        require_int(0, "epochs", 1)
    with pytest.raises(ConfigError, match="must be an integer, got True"):
        require_int(True, "epochs")
    with pytest.raises(InputTypeError, match="must be a torch.Tensor"):
        check_images([[0.0]])
    with pytest.raises(TypeError, match="floating-point"):
        check_images(torch.zeros(1, 1, 2, 2, dtype=torch.int64))
    with pytest.raises(InputError, match=r"expected images of shape \(batch, 1, 28, 28\)"):
        check_images(torch.zeros(2, 3, 28, 28), channels=1, size=(28, 28))


def test_a_huge_integer_is_shown_short_in_its_message():
    # a 301-digit model.invariant_pde.hidden filled the line; the message names it in 3 digits
    from eqpdenet.checks import require_int
    from eqpdenet.errors import ConfigError

    for value, shown in ((10**25, "got 1e+25"), (-(10**300), "got -1e+300"),
                         (10**400, "got an integer of 401 digits"), (2**63, "got 9223372036854775808")):
        with pytest.raises(ConfigError) as caught:
            require_int(value, "model.hidden")
        assert str(caught.value).endswith(f"model.hidden: must be below 2**63, {shown}")
