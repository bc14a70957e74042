"""The G-CNN's configuration checks (round 20, an outside probe): a 1x1 first kernel failed
inside e2cnn, a layer listed twice in pool_after was counted twice by quarter_turn_invariant,
and the list entries were checked by isinstance(int) (True accepted, numpy integers refused)."""

import numpy as np
import pytest

from eqpdenet.errors import ConfigError
from eqpdenet.models.gcnn import GCNNConfig


@pytest.mark.parametrize("options, message", [
    ({"kernels": [1, 3, 3, 3, 3]},
     "invalid config: gcnn.kernels[0]: must be at least 3: the first (lifting) convolution of 1x1 "
     "fails inside e2cnn 0.2.3 with this torch; got 1"),
    ({"kernels": [True, 3, 3, 3, 3]},
     "invalid config: gcnn.kernels[0]: must be an integer, got True"),
    ({"kernels": [5, 4, 3, 3, 3]},
     "invalid config: gcnn.kernels[1]: must be an odd positive integer, got 4"),
    ({"pool_after": [1, 1]},
     "invalid config: gcnn.pool_after: lists a layer twice (one pooling per layer at most): "
     "[1, 1]"),
    ({"pool_after": [True]}, "invalid config: gcnn.pool_after[0]: must be an integer, got True"),
    ({"pool_after": [1, 6]}, "invalid config: gcnn.pool_after[1]: must be <= 5, got 6"),
])
def test_a_gcnn_configuration_that_cannot_build_as_meant_is_refused(options, message):
    with pytest.raises(ConfigError) as caught:
        GCNNConfig(**options)
    assert str(caught.value) == message


def test_numpy_integers_are_layer_sizes_as_python_ones():
    config = GCNNConfig(kernels=[np.int64(5)] + [np.int64(3)] * 4, pool_after=[np.int64(1), 3])
    assert config.kernels == [5, 3, 3, 3, 3] and config.pool_after == [1, 3]
    assert {type(v) for v in config.kernels + config.pool_after} == {int}
    assert GCNNConfig(kernels=[3, 1, 3, 3, 3]).kernels[1] == 1  # a later 1x1 layer builds
