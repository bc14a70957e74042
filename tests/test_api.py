"""The public API surface: the names ``eqpdenet`` exports change only on purpose (edit this list
together with the code and the changelog in the closing note)."""

import eqpdenet

PUBLIC = [
    "CheckpointError", "ConfigError", "ConvInt", "DataFileError", "EqPdeNet", "EqPdeNetError",
    "EulerConv", "EulerFlow", "EulerStep", "FCNN", "InputError", "Invariant", "InvariantRHS",
    "InvariantSet", "Jet", "LayerConfig", "LinearF", "MODELS", "NonFiniteStateError",
    "PDELayer", "PolynomialF", "Registry", "RotMNIST", "__version__", "apply_scenario",
    "available_invariant_sets", "available_scenarios", "available_stencils", "build_model",
    "count_parameters", "derivative_names", "get_invariant_set", "jet", "load_mnist",
    "load_rotmnist", "register_invariant_set", "register_scenario", "register_stencil",
    "safe_ratio",
]


def test_exported_names_are_pinned():
    assert sorted(eqpdenet.__all__) == sorted(PUBLIC)
    for name in PUBLIC:
        assert hasattr(eqpdenet, name), name


def test_paper_names_are_aliases_of_the_clear_ones():
    assert eqpdenet.EulerConv is eqpdenet.EulerStep and eqpdenet.ConvInt is eqpdenet.EulerFlow


def test_every_error_is_an_eqpdenet_error_and_a_builtin_one():
    pairs = {eqpdenet.ConfigError: ValueError, eqpdenet.InputError: ValueError,
             eqpdenet.NonFiniteStateError: FloatingPointError, eqpdenet.DataFileError: ValueError,
             eqpdenet.CheckpointError: ValueError}
    for error, builtin in pairs.items():
        assert issubclass(error, eqpdenet.EqPdeNetError) and issubclass(error, builtin)


def test_the_version_is_written_once():
    # pyproject.toml reads it from eqpdenet.__version__: what pip reports, what --version prints
    # and what every results record stores are then one number (they were 0.1.0 and 0.2.0).
    import importlib.metadata
    import pathlib
    import tomllib

    pyproject = tomllib.loads((pathlib.Path(__file__).parents[1] / "pyproject.toml").read_text())
    assert "version" in pyproject["project"]["dynamic"] and "version" not in pyproject["project"]
    assert pyproject["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "eqpdenet.__version__"}
    assert importlib.metadata.version("eqpdenet") == eqpdenet.__version__
