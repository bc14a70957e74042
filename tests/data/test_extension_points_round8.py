"""A researcher's own scenarios and data sets: their mistakes are one ConfigError naming them,
when they are registered (or on the draw that is used), not a raw exception after training.

Also: ``rotate_dataset`` keeps a registered set's own pixel range (a set in [-1, 1] was clipped
to [0, 1]), and the built-in scenarios and MNIST-like sets keep their bits.
"""

from __future__ import annotations

import math

import pytest
import torch

import eqpdenet.data.datasets as ds
import eqpdenet.data.scenarios as sc
from eqpdenet import ConfigError
from eqpdenet.data.datasets import ImageDataset, load_dataset, register_dataset, rotate_dataset
from eqpdenet.data.scenarios import AffineDraw, apply_scenario, register_scenario, scenario_defaults
from eqpdenet.geometry import rotate


@pytest.fixture
def scenarios(monkeypatch):
    """The scenario registry, restored after the test."""
    monkeypatch.setattr(sc.SCENARIOS, "_items", dict(sc.SCENARIOS._items))
    return sc.SCENARIOS


@pytest.fixture
def datasets(monkeypatch):
    monkeypatch.setattr(ds.DATASETS, "_items", dict(ds.DATASETS._items))
    return ds.DATASETS


def images(n=4, size=8):
    return torch.rand(n, 1, size, size, generator=torch.Generator().manual_seed(0))


def eye(num, scale=1.0):
    return scale * torch.eye(2, dtype=torch.float64).expand(num, 2, 2).clone()


def zeros(num):
    return torch.zeros(num, 2, dtype=torch.float64)


def scaled(num, generator, scale=1.0, broken=False, fail=False):
    """A valid sampler whose ranges can make its draw invalid."""
    torch.rand(num, generator=generator)
    if fail:
        raise KeyError("no such table")
    if broken:
        return eye(num, scale), zeros(num)
    return AffineDraw(eye(num, scale), zeros(num), {"scale": torch.full((num,), scale)})


# ------------------------------------------------------------------ scenarios: registration


@pytest.mark.parametrize("sampler, message", [
    (lambda num, generator: (eye(num), zeros(num)),
     r"scenario 'bad' \(a trial draw of 2 images.*returned a tuple of 2 items, not an AffineDraw"),
    (lambda num, generator: AffineDraw(eye(num, math.nan), zeros(num)),
     r"scenario 'bad'.*matrix holds non-finite values for 2 of 2 images"),
    (lambda num, generator: AffineDraw(eye(num), torch.full((num, 2), math.inf, dtype=torch.float64)),
     r"scenario 'bad'.*translation holds non-finite values"),
    (lambda num, generator: AffineDraw(eye(num, 0.0), zeros(num)),
     r"scenario 'bad'.*matrix is not invertible for 2 of 2 images \(the first: image 0"),
    (lambda num: AffineDraw(eye(num), zeros(num)),
     r"scenario 'bad': its sampler .*\(num\) does not take \(num, generator\)"),
    (lambda num, generator, width: AffineDraw(eye(num), zeros(num)),
     r"scenario 'bad': its sampler's range 'width' has no default"),
    (lambda num, generator, **ranges: AffineDraw(eye(num), zeros(num)),
     r"scenario 'bad': .*takes \*\*ranges; its ranges must be named parameters with defaults"),
    (lambda num, generator: AffineDraw(eye(3), zeros(3)),
     r"scenario 'bad'.*matrix has shape \(3, 2, 2\), expected \(2, 2, 2\)"),
    (lambda num, generator: AffineDraw(torch.eye(2, dtype=torch.int64).expand(num, 2, 2), zeros(num)),
     r"scenario 'bad'.*matrix must be a floating-point tensor .* got torch.int64"),
    (lambda num, generator: AffineDraw(eye(num), zeros(num), {"angle": torch.zeros(3)}),
     r"scenario 'bad'.*params\['angle'\] must be a \(2,\) tensor"),
    (lambda num, generator: AffineDraw(eye(num), zeros(num), {"matrix": torch.zeros(num)}),
     r"scenario 'bad'.*other than 'matrix' and 'translation'"),
    (lambda num, generator: AffineDraw(eye(num, torch.rand(1).item() + 1), zeros(num)),
     r"scenario 'bad'.*two draws from generators of the same seed differ"),
    (lambda num, generator: [][1],
     r"scenario 'bad' \(a trial draw.*its sampler raised IndexError: list index out of range"),
    (5, r"scenario 'bad': the sampler must be callable, got int 5"),
])
def test_a_faulty_sampler_is_refused_at_registration_naming_the_scenario(scenarios, sampler, message):
    with pytest.raises(ConfigError, match=message):
        register_scenario("bad", sampler)
    with pytest.raises(ConfigError, match=message):  # the registry's own register is checked too
        scenarios.register("bad", sampler)
    assert "bad" not in scenarios


def test_the_trial_draw_leaves_every_stream_alone(scenarios):
    state = torch.get_rng_state()
    with pytest.raises(ConfigError, match="differ"):  # it drew from torch's global generator
        register_scenario("global", lambda num, generator: AffineDraw(
            eye(num, 1 + torch.rand(1).item()), zeros(num)))
    register_scenario("tilt", scaled)
    assert torch.equal(torch.get_rng_state(), state)


def test_a_valid_user_sampler_registers_and_applies(scenarios):
    register_scenario("tilt", scaled)
    assert scenario_defaults("tilt") == {"scale": 1.0, "broken": False, "fail": False}
    out = apply_scenario("tilt", images(), 0, scale=1.0)
    assert torch.equal(out, images())
    # float32 maps are taken (decision: any real floating dtype; the warp casts to the images')
    register_scenario("half", lambda num, generator: AffineDraw(
        torch.eye(2).expand(num, 2, 2) * 0.5, torch.zeros(num, 2)))
    assert apply_scenario("half", images(), 0).shape == (4, 1, 8, 8)
    # image_size may lack a default: apply_scenario gives the images' size
    register_scenario("sized", lambda num, generator, image_size: AffineDraw(eye(num), zeros(num)))
    assert torch.equal(apply_scenario("sized", images(), 0), images())


# ------------------------------------------------------------------ scenarios: the draw used


@pytest.mark.parametrize("params, message", [
    ({"scale": 0.0}, r"scenario 'tilt' \(seed 3, 4 images, scale=0.0\): its draw's matrix is not "
                     r"invertible for 4 of 4 images"),
    ({"scale": math.nan}, r"scenario 'tilt' \(seed 3, 4 images, scale=nan\): its draw's matrix holds "
                          r"non-finite values"),
    ({"broken": True}, r"scenario 'tilt' \(seed 3, 4 images, broken=True\): its sampler returned a "
                       r"tuple of 2 items, not an AffineDraw"),
    ({"fail": True}, r"scenario 'tilt' \(seed 3, 4 images, fail=True\): its sampler raised KeyError"),
])
def test_apply_scenario_names_the_scenario_when_its_draw_is_unusable(scenarios, params, message):
    register_scenario("tilt", scaled)
    with pytest.raises(ConfigError, match=message):
        apply_scenario("tilt", images(), 3, **params)


def test_a_matrix_singular_only_in_the_images_dtype_names_the_scenario(scenarios):
    register_scenario("tilt", scaled)
    # 1e-50 is invertible in float64 and 0 in float32
    with pytest.raises(ConfigError, match=r"scenario 'tilt' \(seed 0\).*cannot be inverted in "
                                          r"torch.float32"):
        apply_scenario("tilt", images(), 0, scale=1e-50)
    assert torch.isfinite(apply_scenario("tilt", images().double(), 0, scale=1e-50)).all()


def test_the_builtin_scenarios_draw_the_same_numbers():
    draws = {name: apply_scenario(name, torch.zeros(3, 1, 8, 8), 0, return_params=True)[1]
             for name in ("iso", "sca", "rot", "shift", "scale-up")}
    assert draws["iso"]["angle"].tolist() == [-0.2276764503133711, -0.10743398567634721,
                                              -0.3279606202620359]
    assert draws["iso"]["shift_x"].tolist() == [0.7741803714354467, -0.5904341937030559,
                                                -1.9807480514256826]
    assert draws["sca"]["scale"].tolist() == [0.9296172001176117, 0.87986886146125, 0.8895150030638254]
    assert draws["rot"]["angle"].tolist() == [1.0081787671202807, 4.386916196027024, 5.4294288443196095]
    assert draws["shift"]["shift_y"].tolist() == [1.67565600872563, -0.011743709843816674,
                                                  0.7416143453843755]
    assert draws["scale-up"]["scale"].tolist() == [1.0380665675267298, 1.2348475486731982,
                                                   1.058309916123107]


# ------------------------------------------------------------------ data sets


def tiny(name="mine", low=0.0, high=1.0):
    generator = torch.Generator().manual_seed(0)
    make = lambda n: low + (high - low) * torch.rand(n, 1, 8, 8, generator=generator)  # noqa: E731
    return ImageDataset(name, make(6), torch.arange(6) % 2, make(4), torch.arange(4) % 2, classes=2)


def test_a_loader_of_the_wrong_signature_is_refused_at_registration(datasets):
    message = (r"data set 'noarg': its loader .*\(\) cannot be called as loader\(data_dir=..., "
               r"cache_dir=..., seed=...\).*unexpected keyword argument 'data_dir'")
    with pytest.raises(ConfigError, match=message):
        register_dataset("noarg", lambda: tiny())
    with pytest.raises(ConfigError, match=message):
        datasets.register("noarg", lambda: tiny())
    with pytest.raises(ConfigError, match=r"data set 'two': .*missing a required argument: 'split'"):
        register_dataset("two", lambda split, data_dir=None, cache_dir=None, seed=0: tiny())
    with pytest.raises(ConfigError, match=r"data set 'x': the loader must be callable, got int 3"):
        register_dataset("x", 3)
    assert "noarg" not in datasets and "two" not in datasets
    register_dataset("kw", lambda **keywords: tiny())  # takes the keywords
    register_dataset("named", lambda data_dir=None, cache_dir=None, seed=0, extra=1: tiny())
    assert load_dataset("named").name == "mine"


def test_a_loader_returning_another_type_names_the_data_set(datasets):
    register_dataset("tup", lambda **keywords: (torch.zeros(2, 1, 4, 4), torch.zeros(2)))
    with pytest.raises(ConfigError, match=r"data set 'tup': its loader returned a tuple of 2 items, "
                                          r"not an ImageDataset"):
        load_dataset("tup")
    register_dataset("none", lambda **keywords: None)
    with pytest.raises(ConfigError, match=r"data set 'none': its loader returned NoneType None"):
        load_dataset("none")


@pytest.mark.parametrize("name", ["/tmp/x.npz", "x.npz", "data/mine", "a\\b", "~mine", ".", "..",
                                  "mine.NPZ", "mine.gz", "mine.zip"])
def test_a_name_that_reads_as_a_path_is_refused(datasets, tmp_path, name):
    with pytest.raises(ConfigError, match=r"data set name .* reads as a path"):
        register_dataset(name, lambda **keywords: tiny())
    with pytest.raises(ConfigError, match=r"reads as a path"):
        datasets.register(name, lambda **keywords: tiny())
    assert name not in datasets


def test_a_name_holding_an_equals_sign_is_refused(datasets):
    with pytest.raises(ConfigError, match=r"data set name 'a=b' holds '='"):
        register_dataset("a=b", lambda **keywords: tiny())
    register_dataset("my-set_2.v1", lambda **keywords: tiny())  # a plain name with a dot is fine


def test_rotating_a_set_beyond_the_unit_interval_keeps_its_range():
    signed = tiny(low=-1.0, high=1.0)
    rotated = rotate_dataset(signed, seed=3)
    generator = torch.Generator().manual_seed(3)
    expected = {}
    for split in ("train", "test"):
        pool = getattr(signed, f"{split}_images")
        angles = 2 * math.pi * torch.rand(len(pool), generator=generator, dtype=torch.float64)
        expected[split] = rotate(pool, angles).clamp_(-1.0, 1.0)
    assert torch.equal(rotated.train_images, expected["train"])
    assert torch.equal(rotated.test_images, expected["test"])
    assert rotated.train_images.min() < -0.5  # was clipped to 0


def test_rotating_a_set_in_the_unit_interval_is_clamped_to_it_as_before():
    for dataset in (tiny(), tiny(low=0.0, high=0.5)):
        rotated = rotate_dataset(dataset, seed=1)
        generator = torch.Generator().manual_seed(1)
        pool = dataset.train_images
        angles = 2 * math.pi * torch.rand(len(pool), generator=generator, dtype=torch.float64)
        assert torch.equal(rotated.train_images, rotate(pool, angles).clamp_(0.0, 1.0))
