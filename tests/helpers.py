"""Analytic test functions and patch-wise jets shared by the tests."""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from eqpdenet.pde.stencils import jet


def jet_at(function, points: torch.Tensor, spacing: float, stencil: str = "central",
           order: int = 2) -> torch.Tensor:
    """Numerical jet of an analytic ``function(x, y)`` at arbitrary ``points`` ``(N, 2)``.

    Samples ``function`` on a small grid of spacing ``spacing`` centred on each point (rows
    downwards, so ``y`` decreases with the row index) and returns the jet at the centre, ``(N, D)``.
    """
    radius = 2
    offsets = torch.arange(-radius, radius + 1, dtype=points.dtype) * spacing
    dy, dx = torch.meshgrid(-offsets, offsets, indexing="ij")
    x = points[:, 0, None, None] + dx
    y = points[:, 1, None, None] + dy
    patches = function(x, y)[:, None]
    return jet(patches, order=order, stencil=stencil, spacing=spacing)[:, 0, :, radius, radius]


def bump(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """A smooth, non-symmetric, non-polynomial test function."""
    return (torch.exp(-((x - 0.3) ** 2 + 2.0 * (y + 0.2) ** 2 + 0.5 * x * y))
            + 0.3 * torch.sin(1.3 * x - 0.7 * y + 0.4))


def convex(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Smooth, with all second derivatives far from zero near the origin (for ratios)."""
    return torch.exp(0.3 * x + 0.2 * y + 0.4 * x * y + 0.35 * x**2 + 0.25 * y**2)


def assert_equivariant(module, images: torch.Tensor, *, invariant: bool = False,
                       rtol: float | None = None, angle: float | None = None,
                       angle_tolerance: float | None = None) -> None:
    """Assert that ``module`` commutes with rotations of ``images`` ``(B, C, H, W)``.

    Quarter turns are exact on the pixel grid (no interpolation), so the outputs must agree to
    rounding: ``rtol`` (default 1e-5 in float32, 1e-10 in float64) relative to the output's
    largest magnitude. ``invariant=True`` is for models whose output must not change (logits);
    otherwise the output is rotated with the input. With ``angle`` (degrees), the relative error
    on the central disk (or the relative change of an invariant output) must also be at most
    ``angle_tolerance``: interpolation makes other angles approximate.
    """
    from eqpdenet.analysis.equivariance import Transform, equivariance_error, model_invariance

    if rtol is None:
        rtol = 1e-5 if images.dtype in (torch.float32, torch.float16, torch.bfloat16) else 1e-10
    with torch.no_grad():
        out = module(images)
        scale = float(out.abs().max())
        for k in (1, 2, 3):
            moved = module(torch.rot90(images, k, (-2, -1)))
            expected = out if invariant else torch.rot90(out, k, (-2, -1))
            error = float((moved - expected).abs().max())
            assert error <= rtol * max(scale, 1e-30), (
                f"not equivariant under a rotation by {90 * k}°: max |difference| {error:.3g} "
                f"for outputs of size {scale:.3g}")
        if angle is not None:
            transform = Transform.rotation(angle)
            if invariant:
                error = model_invariance(module, images, transform)["logit_change"]
            else:
                error = equivariance_error(module, images, transform)
            assert error <= angle_tolerance, (
                f"relative error {error:.3g} at {angle:g}° exceeds {angle_tolerance:g}")


@contextlib.contextmanager
def registered(registry, name, item, replace=False):
    """``item`` registered as ``name`` in ``registry`` for the block; the previous entry (if
    any) restored, so that a test's registrations do not reach the tests after it."""
    previous = registry._items.get(name)
    registry.register(name, item, replace=replace)
    try:
        yield item
    finally:
        if previous is None:
            registry._items.pop(name, None)
        else:
            registry._items[name] = previous


@contextlib.contextmanager
def torch_threads(count: int):
    """Run the block with ``count`` torch threads (the reduction order of the run it is compared
    with, e.g. one Ray task or one torchrun process), then restore the previous count."""
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


class BatchRecorder(torch.nn.Module):
    """A linear classifier on 12x12 images that keeps a copy of every batch it sees in training
    (what the training loop fed it, in order)."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(144, 4)
        self.seen = []

    def forward(self, x):
        if self.training:
            self.seen.append(x.detach().clone())
        return self.linear(x.flatten(1))


def framed_data(n: int = 70):
    """``n`` random 12x12 training images with a 3-pixel empty frame (sub-pixel shifts and slight
    blurs keep every image's mass), 4 classes, empty validation and test splits."""
    from eqpdenet.app.training import Data, Split

    generator = torch.Generator().manual_seed(4)
    images = torch.zeros(n, 1, 12, 12)
    images[:, :, 3:9, 3:9] = torch.rand(n, 1, 6, 6, generator=generator)
    labels = torch.arange(n) % 4
    empty = Split(images[:0], labels[:0])
    return Data(train=Split(images, labels), validation=empty, test=empty, classes=4)


def save_blowing_up_checkpoint(path):
    """An EqPdeNet checkpoint (the default configuration) whose first learned PDE is
    ``u_t = 100 |∇u|²``: it blows up on a bright bar within its Euler steps (describe's and
    figure's explanations of such a PDE). Returns ``(model, config)``."""
    from eqpdenet.app.config import ExperimentConfig, build_model
    from eqpdenet.app.training import save_checkpoint

    config = ExperimentConfig()
    model = build_model(config.model)
    rhs = model.pde_layer.pdes[0].step.rhs
    with torch.no_grad():
        rhs.F.weight[rhs.invariant_set.names.index("grad_sq")] = 100.0
    save_checkpoint(path, model, config)
    return model, config


def central_stencil(order: int = 2) -> dict:
    """The 3x3 central differences up to order 2, as a stencil builder returns them
    (``{(a, b): kernel}``, ``y`` up: ``u_y`` is the upper row minus the lower), for registering
    a family of one's own."""
    import numpy as np

    return {(0, 0): np.array([[0, 0, 0], [0, 1.0, 0], [0, 0, 0]]),
            (1, 0): np.array([[0, 0, 0], [-0.5, 0, 0.5], [0, 0, 0]]),
            (0, 1): np.array([[0, 0.5, 0], [0, 0, 0], [0, -0.5, 0]]),
            (2, 0): np.array([[0, 0, 0], [1.0, -2, 1], [0, 0, 0]]),
            (1, 1): np.array([[-0.25, 0, 0.25], [0, 0, 0], [0.25, 0, -0.25]]),
            (0, 2): np.array([[0, 1.0, 0], [0, -2, 0], [0, 1, 0]])}


def full_disk_for(monkeypatch, name: str, code: int | None = None) -> None:
    """Writing a file called ``name`` (through :mod:`eqpdenet.app.files`) fails as on a full
    disk, ``ENOSPC`` (or the errno ``code``): its temporary file cannot be made."""
    import errno
    import os
    from pathlib import Path

    from eqpdenet.app import files

    code = errno.ENOSPC if code is None else code
    real = files.temporary_beside

    def full(path, suffix):
        if Path(path).name == name:
            raise OSError(code, os.strerror(code), str(path))
        return real(path, suffix)

    monkeypatch.setattr(files, "temporary_beside", full)


def banded_loader(name: str, size: int = 8, classes: int = 3):
    """A data set loader (``loader(data_dir, cache_dir, seed)``) of 60 training and 30 test
    images of ``size`` x ``size`` pixels in ``classes`` classes (a bright band per class), named
    ``name`` whatever name it is registered under."""
    from eqpdenet.data.datasets import ImageDataset

    def load(data_dir=None, cache_dir=None, seed=0):
        labels = torch.arange(90) % classes
        images = torch.rand(90, 1, size, size, generator=torch.Generator().manual_seed(0)) * 0.5
        for index, label in enumerate(labels.tolist()):
            images[index, 0, 2 * label:2 * label + 2] += 0.5
        return ImageDataset(name, images[:60], labels[:60], images[60:], labels[60:],
                            classes=classes)

    return load


def report_folder(folder, capsys) -> tuple[int, str]:
    """``eqpdenet report FOLDER``: its exit status and what it wrote to stderr."""
    from eqpdenet.app.cli import main

    capsys.readouterr()
    status = main(["report", str(folder)])
    return status, capsys.readouterr().err


def error_line(err: str) -> str:
    """The one line of a CLI error, without its prefix and the hint at the traceback."""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    prefix, suffix = "eqpdenet: error: ", " (EQPDENET_DEBUG=1 shows the traceback)"
    assert lines[0].startswith(prefix) and lines[0].endswith(suffix), err
    return lines[0][len(prefix):-len(suffix)]


class Recorder(nn.Module):
    """Logits = the flattened image (so a logit change is the image's change); keeps every batch
    it is given."""

    def __init__(self):
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(()))  # robustness asks the model for its device
        self.seen: list[torch.Tensor] = []

    def forward(self, x):
        self.seen.append(x.clone())
        return x.flatten(1) + self.anchor


def run_cli(argv, capsys) -> tuple[int, str]:
    """``eqpdenet ARGV``: its exit status (argparse's too) and what it wrote to stderr."""
    from eqpdenet.app.cli import main

    try:
        status = main([str(a) for a in argv])
    except SystemExit as exit_:
        status = exit_.code
    return status, capsys.readouterr().err
