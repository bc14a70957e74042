"""``benchmarks/round_trip_probe.py``: the split of the 37-and-back change in docs/lifted.md."""

import importlib.util
from pathlib import Path

import pytest
import torch
from torch import nn

from eqpdenet.models.centering import centering_shift
from eqpdenet.models.pooling import gaussian_lowpass_weights

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "round_trip_probe.py"
_SPEC = importlib.util.spec_from_file_location("round_trip_probe", _PATH)
probe_script = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(probe_script)


class _Mass(nn.Module):
    """Logits ``(m, 2 m, 1)``, ``m`` the image's total intensity: unchanged by every whole-pixel
    move and every blur that keeps the digit inside the frame."""

    def forward(self, images):
        mass = images.sum((1, 2, 3), dtype=torch.float64)[:, None]
        return (mass * torch.tensor([1.0, 2.0, 0.0], dtype=torch.float64)
                + torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)).float()


def _digits():
    torch.manual_seed(0)  # fixed digits: blobs well inside a 20x20 frame
    images = torch.zeros(6, 1, 20, 20)
    images[:, :, 7:12, 6:13] = torch.rand(6, 1, 5, 7)
    return images


def test_moved_by_moves_each_image_by_its_own_shift():
    images = torch.arange(32.0).view(2, 1, 4, 4)
    out = probe_script.moved_by(images, torch.tensor([[1, 0], [0, -1]]))
    assert torch.equal(out[0, 0, 1:], images[0, 0, :3]) and torch.equal(out[0, 0, 0], torch.zeros(4))
    assert torch.equal(out[1, 0, :, :3], images[1, 0, :, 1:]) and torch.equal(out[1, 0, :, 3],
                                                                               torch.zeros(4))


def test_blurred_is_the_separable_gaussian():
    delta = torch.zeros(1, 1, 15, 15, dtype=torch.float64)
    delta[0, 0, 7, 7] = 1.0
    weight = gaussian_lowpass_weights(0.8)
    radius = (len(weight) - 1) // 2
    expected = torch.zeros(15, 15, dtype=torch.float64)
    expected[7 - radius:8 + radius, 7 - radius:8 + radius] = torch.outer(weight, weight)
    torch.testing.assert_close(probe_script.blurred(delta, 0.8)[0, 0], expected)


def test_a_model_of_the_total_mass_loses_nothing_to_moves_and_blurs():
    record = probe_script.probe(_Mass(), _digits(), 37.0, 0.5)
    assert record["moved_1px"] == pytest.approx(0.0, abs=1e-6)
    assert record["blur_0.5"] == pytest.approx(0.0, abs=1e-6)
    assert record["half_px_and_back"] == pytest.approx(0.0, abs=1e-6)
    assert "pinned" not in record  # no centring to pin
    # The ratio's two parts: ||l(f') - l(f)|| / ||l(f)|| over the batch.
    total = (record["round_trip"] * record["logit_rms"]) ** 2
    assert record["change_rms"] ** 2 == pytest.approx(total, rel=1e-6)


def test_pinning_the_centring_separates_the_flip_from_the_resampling():
    class Centred(_Mass):
        def __init__(self):
            super().__init__()
            self.config = type("Config", (), {"center": True})()
            self.seen = []

        def forward(self, images):
            self.seen.append((self.config.center, images))
            return super().forward(images)

    model = Centred()
    images = _digits()
    record = probe_script.probe(model, images, 37.0, 0.5)
    assert model.config.center is True  # restored
    # The pinned pass runs with centring off, on images moved by the original's own shift.
    off = [x for center, x in model.seen if not center]
    assert off, "the pinned change must be measured with the model's centring off"
    shift = centering_shift(images)
    assert torch.equal(off[0], probe_script.moved_by(images, shift))
    assert record["moved_1px"] == pytest.approx(0.0, abs=1e-6)
