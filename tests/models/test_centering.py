"""The whole-pixel centre-of-mass canonicalisation (``eqpdenet.models.centering``) and the
``center`` option of the lifted model and the G-CNN."""

import pytest
import torch

from eqpdenet.errors import ConfigError
from eqpdenet.models.centering import CenterOfMass, center_of_mass, centering_shift, recenter
from eqpdenet.models.lifted_pde import LiftedPDEConfig, LiftedPDENet


def _blob(batch: int = 3, size: int = 28, seed: int = 0) -> torch.Tensor:
    """Strokes off the centre, away from the border (seeded, not drawn per run)."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.zeros(batch, 1, size, size)
    images[:, :, 5:12, 4:10] = torch.rand(batch, 1, 7, 6, generator=generator)
    images[:, :, 9:11, 10:15] = 0.5
    return images


def test_center_of_mass_of_known_weights():
    images = torch.zeros(2, 2, 10, 12)
    images[0, 0, 3, 7] = 2.0                        # one pixel: its own position
    images[1, 0, 2, 1] = 1.0
    images[1, 1, 6, 9] = 3.0                        # weights summed over channels
    images[1, 0, 0, 0] = -5.0                       # below the blank value: no weight
    expected = torch.tensor([[3.0, 7.0], [(2 + 18) / 4, (1 + 27) / 4]], dtype=torch.float64)
    torch.testing.assert_close(center_of_mass(images), expected)


def test_shift_rounds_to_the_nearest_whole_pixel():
    images = torch.zeros(3, 1, 9, 9)                # centre (4, 4)
    images[0, 0, 1, 6] = 1.0                        # -> shift (3, -2)
    images[1, 0, 4, 4] = 1.0                        # already centred
    images[2, 0, 2, 2] = images[2, 0, 2, 3] = 1.0   # column 2.5: offset 1.5 rounds to 2 (even)
    assert centering_shift(images).tolist() == [[3, -2], [0, 0], [2, 2]]


def test_recenter_moves_by_the_shift_and_fills_zeros():
    images = torch.zeros(1, 1, 9, 9)
    images[0, 0, 0:3, 6:9] = torch.arange(1.0, 10.0).view(3, 3)
    out = recenter(images)
    shift = centering_shift(images)[0].tolist()
    expected = torch.zeros_like(images)
    expected[0, 0, shift[0]:shift[0] + 3, 6 + shift[1]:9 + shift[1]] = images[0, 0, 0:3, 6:9]
    assert torch.equal(out, expected)
    assert (center_of_mass(out) - 4.0).abs().max() <= 0.5


def test_blank_image_is_left_unchanged():
    images = torch.zeros(2, 1, 8, 8)
    images[1] = -0.3                                # all below the blank value: no mass either
    assert torch.equal(recenter(images), images)
    assert centering_shift(images).tolist() == [[0, 0], [0, 0]]


def test_whole_pixel_shifts_give_the_same_output():
    images = _blob()
    reference = recenter(images)
    for shift in [(1, 0), (0, 1), (2, 3), (-1, 4), (6, 5)]:
        moved = torch.roll(images, shift, (-2, -1))  # the strokes stay inside the frame
        assert torch.equal(recenter(moved), reference), shift


def test_quarter_turns_commute():
    images = _blob(batch=4)
    for k in (1, 2, 3):
        turned = torch.rot90(images, k, (-2, -1))
        assert torch.equal(recenter(turned), torch.rot90(recenter(images), k, (-2, -1))), k


def test_gradient_is_the_moved_ones():
    images = _blob(batch=2).requires_grad_()
    CenterOfMass()(images).sum().backward()
    # every output pixel reads one input pixel (or a zero): the gradient of the sum is 1 on the
    # pixels that stay inside the frame, 0 on those pushed out of it
    shift = centering_shift(images.detach())
    expected = torch.zeros_like(images)
    for b, (dy, dx) in enumerate(shift.tolist()):
        rows, cols = slice(max(0, -dy), 28 - max(0, dy)), slice(max(0, -dx), 28 - max(0, dx))
        expected[b, :, rows, cols] = 1.0
    assert shift.abs().max() > 0
    assert torch.equal(images.grad, expected)


def test_lifted_model_with_center_ignores_whole_pixel_shifts():
    torch.manual_seed(0)
    net = LiftedPDENet(LiftedPDEConfig(channels=[4, 6], blocks=[1, 1], boundary="background",
                                       center=True)).eval()
    images = _blob(batch=2)
    with torch.no_grad():
        logits = net(images)
        for shift in [(1, 0), (3, -2)]:
            assert torch.equal(net(torch.roll(images, shift, (-2, -1))), logits), shift
        turned = net(torch.rot90(images, 1, (-2, -1)))
    torch.testing.assert_close(turned, logits, rtol=1e-5, atol=1e-5)
    # and without the option, the same network is not shift invariant (what the option buys)
    plain = LiftedPDENet(LiftedPDEConfig(channels=[4, 6], blocks=[1, 1], boundary="background"))
    plain.load_state_dict(net.state_dict())
    plain.eval()
    with torch.no_grad():
        assert (plain(torch.roll(images, (3, -2), (-2, -1))) - plain(images)).abs().max() > 1e-4


def test_gcnn_with_center_ignores_whole_pixel_shifts_and_exports_it():
    pytest.importorskip("e2cnn")
    from eqpdenet.models.gcnn import GCNN, GCNNConfig

    torch.manual_seed(0)
    net = GCNN(GCNNConfig(group_order=4, channels=[2, 3], kernels=[3, 3], pool_after=[1],
                          center=True)).eval()
    images = _blob(batch=2)
    with torch.no_grad():
        logits = net(images)
        assert torch.equal(net(torch.roll(images, (2, 1), (-2, -1))), logits)
        torch.testing.assert_close(net.export_module()(images), logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("value", ["yes", 1, None])
def test_center_must_be_a_bool(value):
    with pytest.raises(ConfigError, match="lifted_pde.center"):
        LiftedPDEConfig(center=value)
