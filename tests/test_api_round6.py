"""Round 6, the Python API as a new user meets it (probe p3, findings 3, 4, 5 and 7): the
exported-model runner checks the file and its images; registries refuse a non-callable among
callables and say so when a name is no string; load_rotmnist, apply_scenario and the seeds of
the data streams check their integers; apply_scenario takes half precision and keeps the
autograd graph; README and docs/symbolic.md say what the code does.
"""

from __future__ import annotations

import pickle
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from eqpdenet.data.augment import augment_generator, blur_generator
from eqpdenet.data.datasets import ImageDataset, rotate_dataset
from eqpdenet.data.rotmnist import MNIST_POOL, check_generation_args, load_rotmnist
from eqpdenet.data.scenarios import apply_scenario, scenario_generator
from eqpdenet.errors import ConfigError, DataFileError, EqPdeNetError, InputError, InputTypeError
from eqpdenet.export import ExportedModel, export_model, load_exported
from eqpdenet.geometry import affine_warp, rotate, working_dtype
from eqpdenet.models import FCNN, MODELS
from eqpdenet.pde import INVARIANT_SETS, STENCILS
from eqpdenet.pde.invariants import register_invariant_set
from eqpdenet.registry import Registry

ROOT = Path(__file__).resolve().parents[1]


def images(n: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------- export (finding 3)

FORMATS = ["exported-program", pytest.param("onnx", marks=pytest.mark.skipif(
    not __import__("importlib").util.find_spec("onnxruntime"), reason="onnxruntime not installed"))]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny FCNN exported to both formats: (model, folder)."""
    torch.manual_seed(0)
    model = FCNN(hidden=8).eval()
    folder = tmp_path_factory.mktemp("exported")
    export_model(model, folder / "m.pt2", "exported-program", images=images(4))
    try:
        export_model(model, folder / "m.onnx", "onnx", images=images(4))
    except EqPdeNetError:  # onnxruntime missing: the onnx cases are skipped
        pass
    return model, folder


def path_of(folder: Path, format: str) -> Path:
    return folder / ("m.onnx" if format == "onnx" else "m.pt2")


@pytest.mark.parametrize("format", FORMATS)
def test_the_exported_runner_checks_images_as_the_models_do(exported, format):
    model, folder = exported
    run = load_exported(path_of(folder, format))
    assert isinstance(run, ExportedModel) and run.input_shape == (1, 28, 28)
    x = images(5)
    logits = run(x)
    assert logits.dtype == torch.float32 and logits.shape == (5, 10)
    # float64 images: converted to float32 as export_model documents (onnxruntime refused them,
    # the exported program raised "mat1 and mat2 must have the same dtype")
    assert torch.equal(run(x.double()), logits)
    assert torch.equal(run(x.half()), run(x.half().float()))
    with pytest.raises(InputTypeError, match=r"images must be a torch\.Tensor, got ndarray "
                                              r"\(torch\.from_numpy"):
        run(x.numpy())
    with pytest.raises(InputError, match=r"\(batch, channels, height, width\), got \(5, 28, 28\)"):
        run(x[:, 0])
    with pytest.raises(InputError, match=r"expected images of shape \(batch, 1, 28, 28\), "
                                         r"got \(5, 2, 28, 28\)"):
        run(torch.rand(5, 2, 28, 28))
    with pytest.raises(InputError, match=r"expected images of shape \(batch, 1, 28, 28\), "
                                         r"got \(5, 1, 32, 32\)"):
        run(torch.rand(5, 1, 32, 32))
    nan = x.clone()
    nan[1, 0, 3, 4] = float("nan")
    with pytest.raises(InputError, match=r"images contains non-finite values \(1 NaN, 0 inf"):
        run(nan)  # NaN logits before, where the model itself refuses
    with pytest.raises(InputTypeError, match="floating-point"):
        run((x * 255).to(torch.uint8))


def test_load_exported_names_a_missing_file_a_folder_and_a_file_of_another_format(tmp_path,
                                                                                   exported):
    _, folder = exported
    with pytest.raises(DataFileError, match=r"nope\.pt2: no such file"):
        load_exported(tmp_path / "nope.pt2")
    (tmp_path / "dir.pt2").mkdir()
    with pytest.raises(DataFileError, match=r"dir\.pt2: not a file"):
        load_exported(tmp_path / "dir.pt2")
    (tmp_path / "text.pt2").write_text("hello")
    with pytest.raises(DataFileError, match=r"text\.pt2: not an exported program: .* zip archive"):
        load_exported(tmp_path / "text.pt2")  # zipfile.BadZipFile before
    if (folder / "m.onnx").exists():  # an ONNX file named .pt2
        (tmp_path / "onnx.pt2").write_bytes((folder / "m.onnx").read_bytes())
        with pytest.raises(DataFileError, match="not an exported program"):
            load_exported(tmp_path / "onnx.pt2")
        (tmp_path / "garbage.onnx").write_text("hello")
        with pytest.raises(DataFileError, match=r"garbage\.onnx: not an ONNX model onnxruntime "
                                                 r"can load \(InvalidProtobuf"):
            load_exported(tmp_path / "garbage.onnx")
        with pytest.raises(DataFileError, match=r"nope\.onnx: no such file"):
            load_exported(tmp_path / "nope.onnx")
    with pytest.raises(ConfigError, match="unknown export format 'tflite'"):
        load_exported(folder / "m.pt2", format="tflite")


def test_export_model_refuses_a_family_name_and_non_finite_images_before_any_work(tmp_path,
                                                                                   monkeypatch):
    import eqpdenet.export as export

    def traced(*args, **kwargs):
        raise AssertionError("traced: the check came after the work")

    # the model refused the images too, but only after tracing and writing the file
    monkeypatch.setattr(export, "trace", traced)
    with pytest.raises(ConfigError, match=r"model must be a torch\.nn\.Module, got the string "
                                          r"'fcnn': eqpdenet\.models\.build_model\('fcnn'\)"):
        export_model("fcnn", tmp_path / "m.pt2", "exported-program", images=images(2))
    with pytest.raises(ConfigError, match=r"model must be a torch\.nn\.Module, got int"):
        export_model(3, tmp_path / "m.pt2", "exported-program", images=images(2))
    bad = images(2)
    bad[0, 0, 0, 0] = float("inf")
    with pytest.raises(InputError, match=r"images contains non-finite values \(0 NaN, 1 inf"):
        export_model(FCNN(hidden=8), tmp_path / "m.pt2", "exported-program", images=bad)
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- registries (finding 4)


def test_a_registry_of_callables_refuses_a_non_callable_when_it_is_registered():
    for registry in (STENCILS, MODELS):
        with pytest.raises(ConfigError, match=r"must be callable, as the registered ones are "
                                              r"\(.*\), got int 5"):
            registry.register("round6_probe", 5)
        assert "round6_probe" not in registry
    fresh = Registry("builder")
    fresh.register("one", lambda: 1)
    with pytest.raises(ConfigError, match="a builder must be callable"):
        fresh.register("two", "not a builder")
    values = Registry("colour")  # a registry of values keeps taking values
    values.register("red", (1, 0, 0))
    values.register("green", 2)
    assert values.names() == ("green", "red")


def test_a_registry_says_a_name_is_no_string_instead_of_printing_it_as_one():
    with pytest.raises(ConfigError) as caught:
        INVARIANT_SETS.get(torch.rand(4, 1, 28, 28))
    message = str(caught.value)
    assert message.startswith("an invariant set is named by a string, got Tensor of shape "
                              "(4, 1, 28, 28); available: ")
    assert "\n" not in message and "tensor(" not in message
    with pytest.raises(ConfigError, match="a stencil is named by a string, got NoneType None"):
        STENCILS.get(None)


def test_register_invariant_set_of_a_name_is_one_config_error():
    with pytest.raises(ConfigError, match="InvariantSet"):
        register_invariant_set("se2")


# ----------------------------------------------------------------------------- data integers (finding 4)


@pytest.mark.parametrize("kwargs, message", [
    ({"n_train": 2.5}, "n_train: must be an integer, got 2.5"),
    ({"n_train": "10"}, "n_train: must be an integer, got '10'"),
    ({"n_test": True}, "n_test: must be an integer, got True"),
    ({"seed": None}, "seed: must be an integer, got None"),
    ({"seed": 2.5}, "seed: must be an integer, got 2.5"),
    ({"seed": -1}, "seed: must be >= 0, got -1"),
    ({"n_train": -1, "n_test": 10}, "n_train: must be >= 0, got -1"),
    ({"n_train": 60000, "n_test": 20000},
     "n_train + n_test: must be at most 70,000 (the MNIST digits to draw from), "
     "got 60,000 + 20,000 = 80,000"),
])
@pytest.mark.parametrize("source", ["generated", "official", "auto"])
def test_load_rotmnist_checks_its_integers_before_reading_anything(tmp_path, kwargs, message,
                                                                   source):
    # tmp_path holds no data: any read would fail with another error (a missing file)
    with pytest.raises(ConfigError) as caught:
        load_rotmnist(tmp_path, cache_dir=tmp_path, source=source, download=False, **kwargs)
    assert str(caught.value) == f"invalid config: {message}"
    assert list(tmp_path.iterdir()) == []


def test_the_generation_bounds_hold_at_their_edges():
    check_generation_args(0, MNIST_POOL, 0)
    check_generation_args(np.int64(3), 0, MNIST_POOL)  # NumPy integers are integers
    with pytest.raises(ConfigError, match=r"got 1 \+ 70,000 = 70,001"):
        check_generation_args(0, 1, MNIST_POOL)


def test_every_data_stream_seed_is_an_integer():
    dataset = ImageDataset("tiny", torch.zeros(2, 1, 4, 4), torch.tensor([0, 1]),
                           torch.zeros(2, 1, 4, 4), torch.tensor([0, 1]), classes=2)
    for make in (augment_generator, blur_generator, lambda seed: scenario_generator("iso", seed),
                 lambda seed: rotate_dataset(dataset, seed)):
        for seed in (2.5, None, "1"):
            with pytest.raises(ConfigError, match=rf"seed: must be an integer, got {re.escape(repr(seed))}"):
                make(seed)
    # the streams of integer seeds are those they were (bit-identical draws)
    assert torch.equal(torch.rand(3, generator=scenario_generator("iso", 7)),
                       torch.rand(3, generator=scenario_generator("iso", np.int64(7))))
    with pytest.raises(ConfigError, match="batch_size: must be >= 1, got 0"):
        rotate_dataset(dataset, 0, batch_size=0)


# ----------------------------------------------------------------------------- apply_scenario (4, 5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_apply_scenario_takes_half_precision_and_warps_it_in_float32(dtype):
    low = images(3).to(dtype)
    out = apply_scenario("iso", low, 0)  # RuntimeError "linalg.inv: Low precision dtypes" before
    assert out.dtype == dtype and out.shape == low.shape
    assert torch.equal(out, apply_scenario("iso", low.float(), 0).to(dtype))
    assert torch.equal(rotate(low, 0.3), rotate(low.float(), 0.3).to(dtype))
    assert working_dtype(dtype) == torch.float32 and working_dtype(torch.float64) == torch.float64


def test_apply_scenario_checks_seed_batch_size_and_the_order_of_its_arguments():
    x = images(2)
    for seed in (None, 2.5, True):
        with pytest.raises(ConfigError, match=rf"seed: must be an integer, got {seed!r}"):
            apply_scenario("iso", x, seed)
    with pytest.raises(ConfigError, match="batch_size: must be an integer, got 2.5"):
        apply_scenario("iso", x, 0, batch_size=2.5)
    with pytest.raises(ConfigError) as caught:
        apply_scenario(x, "iso", 0)
    message = str(caught.value)
    assert message.startswith("name must be a scenario's name (a string; the order is "
                              "apply_scenario(name, images, seed)), got Tensor of shape "
                              "(2, 1, 28, 28)")
    assert "\n" not in message and "tensor(" not in message


@pytest.mark.parametrize("name", ["iso", "sca", "test"])
def test_apply_scenario_keeps_the_autograd_graph(name):
    x = images(3)
    plain = apply_scenario(name, x, 4)
    leaf = x.clone().requires_grad_()
    out = apply_scenario(name, leaf, 4)
    assert out.requires_grad and torch.equal(out.detach(), plain)  # same values bit for bit
    assert not plain.requires_grad
    # the gradient is that of the warp: exact (bilinear sampling is linear in the pixels)
    small = torch.rand(2, 1, 6, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda u: apply_scenario(name, u, 1), (small,))
    if name == "test":
        out.sum().backward()
        assert torch.equal(leaf.grad, torch.ones_like(x))


def test_a_warp_with_a_matrix_of_another_shape_is_an_eqpdenet_error():
    with pytest.raises(InputError, match=r"matrix must have shape \(2, 2\) or \(2, 2, 2\), "
                                         r"got \(3, 2, 2\)"):
        affine_warp(images(2), torch.eye(2).expand(3, 2, 2))
    with pytest.raises(InputError, match=r"translation must have shape \(2,\) or \(2, 2\)"):
        affine_warp(images(2), torch.eye(2), torch.zeros(3))


# ----------------------------------------------------------------------------- documentation (7)


def _paragraph(text: str, needle: str) -> str:
    return next(p for p in text.split("\n\n") if needle in p)


def test_readme_says_which_family_does_not_pickle():
    paragraph = " ".join(_paragraph((ROOT / "README.md").read_text(), "torch.save(model)").split())
    assert "but the G-CNN" in paragraph and "state_dict()" in paragraph
    pytest.importorskip("e2cnn")
    from eqpdenet.models import GCNNConfig, build_model

    gcnn = build_model("gcnn", gcnn=GCNNConfig(channels=[2, 3], kernels=[5, 3], pool_after=[1]))
    with pytest.raises(Exception, match="pickle"):
        pickle.dumps(gcnn)
    pickle.dumps(FCNN(hidden=8))


def test_readme_quotes_the_error_vmap_in_training_mode_gives():
    paragraph = " ".join(_paragraph((ROOT / "README.md").read_text(),
                                    "replace_all_batch_norm_modules_").split())
    model = build_cnn().train()
    with pytest.raises(Exception) as caught:
        torch.func.vmap(model)(images(3)[None].expand(2, -1, -1, -1, -1))
    message = str(caught.value)
    if "replace_all_batch_norm_modules_" not in message:  # PyTorch's own words: quoted
        assert "Batch norm got a batched tensor as input" in message
        assert "Batch norm got a batched tensor as input" in paragraph


def build_cnn():
    from eqpdenet.models import CNNConfig, build_model

    return build_model("cnn", cnn=CNNConfig(channels=4, layers=2))


def test_docs_symbolic_shows_the_warning_its_first_block_prints(monkeypatch):
    pytest.importorskip("sympy")
    from eqpdenet import EqPdeNet, PDELayer
    from eqpdenet.kernels import op
    from eqpdenet.pde.symbolic import compile_invariants, find_invariants

    monkeypatch.setattr(op, "_warned", set())  # once per process: this test must see it
    derived = compile_invariants(find_invariants("sim2", order=2, max_degree=3), "sim2_derived")
    model = EqPdeNet(hidden=8, layer=PDELayer.build([derived, "se2"], T=0.2, dt=0.1,
                                                     ratio_eps=0.1))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model(images(2))
    shown = [str(w.message) for w in caught if "declares no kernel" in str(w.message)]
    assert len(shown) == 1
    block = (ROOT / "docs/symbolic.md").read_text().split("```python", 1)[1].split("```", 1)[0]
    comments = " ".join(line.lstrip("# ").strip() for line in block.splitlines()
                        if line.startswith("#"))
    assert f"RuntimeWarning: {shown[0]}" in comments


def test_export_into_a_path_through_a_file_names_the_file(tmp_path):
    """It said "the folder afile does not exist" where afile is a file (probe round 6, F6)."""
    from eqpdenet.errors import OutputFolderError
    from eqpdenet.export import check_export

    (tmp_path / "afile").write_text("x")
    for out in (tmp_path / "afile" / "m.pt2", tmp_path / "afile" / "deeper" / "m.pt2"):
        with pytest.raises(OutputFolderError, match=r"afile is a file, not a folder"):
            check_export("exported-program", out)
    with pytest.raises(OutputFolderError, match=r"the folder .*missing does not exist"):
        check_export("exported-program", tmp_path / "missing" / "m.pt2")


def test_register_group_of_a_name_is_one_config_error():
    """``register_group("se2")`` raised AttributeError: 'str' object has no attribute 'name'."""
    from eqpdenet.errors import ConfigError
    from eqpdenet.pde.symbolic import register_group

    with pytest.raises(ConfigError, match=r"group: must be a LieGroupAction, got str: register "
                                          r"the LieGroupAction object itself"):
        register_group("se2")
