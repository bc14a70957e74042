"""Every model family takes its options as their dataclass or as a mapping of its fields."""

import pytest
import torch

from eqpdenet.errors import ConfigError
from eqpdenet.models import CNN, GCNN, InvariantPDENet, LiftedPDENet
from eqpdenet.models.cnn import CNNConfig
from eqpdenet.models.gcnn import GCNNConfig
from eqpdenet.models.invariant_pde import InvariantPDEConfig
from eqpdenet.models.lifted_pde import LiftedPDEConfig

FAMILIES = [(CNN, CNNConfig, "cnn", {"channels": 4, "layers": 2}),
            (GCNN, GCNNConfig, "gcnn", {"channels": [2, 2], "kernels": [3, 3], "group_order": 4,
                                         "pool_after": [1]}),
            (InvariantPDENet, InvariantPDEConfig, "invariant_pde",
             {"channels": [2, 3], "blocks": [1, 1]}),
            (LiftedPDENet, LiftedPDEConfig, "lifted_pde", {"channels": [2, 3], "blocks": [1, 1]})]


@pytest.mark.parametrize(("family", "options_type", "name", "fields"), FAMILIES)
def test_a_mapping_of_options_builds_the_same_model_as_the_dataclass(family, options_type, name,
                                                                     fields):
    torch.manual_seed(0)
    from_mapping = family(dict(fields), image_size=16)
    torch.manual_seed(0)
    from_dataclass = family(options_type(**fields), image_size=16)
    assert from_mapping.config == from_dataclass.config
    images = torch.rand(2, 1, 16, 16)
    from_mapping.eval(), from_dataclass.eval()
    torch.testing.assert_close(from_mapping(images), from_dataclass(images), rtol=0, atol=0)


@pytest.mark.parametrize(("family", "options_type", "name", "fields"), FAMILIES)
def test_a_wrong_field_or_type_is_named(family, options_type, name, fields):
    with pytest.raises(ConfigError, match=rf"invalid config: {name}: unknown field\(s\) colour; "
                                          r"the fields are "):
        family({**fields, "colour": "red"})
    with pytest.raises(ConfigError, match=rf"invalid config: {name}: must be a "
                                          rf"{options_type.__name__} or a mapping of its fields, "
                                          r"got list"):
        family([4])

