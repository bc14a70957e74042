"""The configuration read back (probe round 13): equal configurations have one fingerprint
(``-0.0`` and ``0.0`` hashed apart, and a resumed sweep was refused naming no field); a sweep's
``base`` given as a partial mapping in Python takes its missing fields from the sweep's own
default base, as a file does; an unknown field is named by its path."""

from __future__ import annotations

import pytest

from eqpdenet.app.benchmark import benchmark_fingerprint
from eqpdenet.app.config import (
    BenchmarkConfig,
    ExperimentConfig,
    ReproduceConfig,
    apply_overrides,
    from_dict,
)
from eqpdenet.app.training import fingerprint
from eqpdenet.errors import ConfigError


@pytest.mark.parametrize("field", ["train.weight_decay", "train.grad_clip"])
def test_negative_zero_is_the_same_configuration(field):
    default = ExperimentConfig()
    zero = apply_overrides(default, [f"{field}=0.0"])
    negative = apply_overrides(default, [f"{field}=-0.0"])
    assert zero == negative
    assert fingerprint(negative) == fingerprint(zero)
    assert benchmark_fingerprint(BenchmarkConfig(base=negative)) == \
        benchmark_fingerprint(BenchmarkConfig(base=zero))


def test_a_changed_value_still_changes_the_fingerprint():
    default = ExperimentConfig()
    assert fingerprint(apply_overrides(default, ["train.weight_decay=0.001"])) != \
        fingerprint(apply_overrides(default, ["train.weight_decay=0.0"]))


@pytest.mark.parametrize("kind", [BenchmarkConfig, ReproduceConfig])
def test_a_partial_base_in_python_is_filled_as_a_file_fills_it(kind):
    built = kind(base={"train": {"epochs": 2}})
    read = from_dict(kind, {"base": {"train": {"epochs": 2}}})
    assert built.base == read.base
    assert built.base.train.epochs == 2
    assert built.base.scenarios == kind().base.scenarios


def test_an_unknown_field_is_named_by_its_path():
    with pytest.raises(ConfigError, match=r"unknown field\(s\) \['base.train.learning_rate'\] "
                                          r"for TrainConfig"):
        from_dict(BenchmarkConfig, {"base": {"train": {"learning_rate": 0.01}}})
