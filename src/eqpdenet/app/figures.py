"""The paper's Figure 2: the commutative diagram of an equivariant PDE.

::

    I0      --PDE-->  u_T(I0)
    | g                  \\ g
    v                     v
    g·I0    --PDE-->  u_T(g·I0)   ≟   g·u_T(I0)     difference u_T(g·I0) − g·u_T(I0)

For any sample, any group element ``g: p -> λ R(θ) p + t`` (push-forward, conventions of
:mod:`eqpdenet.geometry`) and any PDE (the heat equation ``u_t = u_xx + u_yy`` by default, or one
of a checkpoint's learned PDEs). The difference is drawn on the same scale as the evolved images
(so "commutes" looks like a blank panel) and its relative size and largest value on the central
disk are printed. ``g`` fills the frame's new corners with the blank value of what it moves (for
``u_T(I0)``, the PDE's evolved blank image: :func:`diagram_arrays`). A ``g`` that leaves no point
of the disk on real pixels is refused, by the equivariance study's rule. A PDE that is an
``nn.Module`` is run in evaluation mode, as :func:`~eqpdenet.analysis.equivariance.equivariance_error`
runs it (every submodule's own mode restored afterwards).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from ..analysis.equivariance import (
    DISK_FRACTION,
    Similarity,
    _require_points,
    central_disk,
    filled_region,
)
from ..analysis.predictions import evaluation_mode
from ..errors import ConfigError, InputError, InputTypeError
from ..pde.integrators import EulerFlow, EulerStep
from ..pde.layer import PDELayer
from .files import import_pyplot, save_figure

__all__ = ["diagram_arrays", "evolution_grid", "evolution_trajectories", "figure_diagram",
           "frame_steps", "grey_range"]


@torch.no_grad()
def diagram_arrays(image: Tensor, pde: Callable[[Tensor], Tensor], angle: float = 30.0,
                   factor: float = 1.0, shift=(0.0, 0.0)) -> dict[str, Tensor]:
    """The six panels, each ``(H, W)``: ``I0, gI0, uT, uT_g, g_uT, difference``, plus
    ``relative_error`` and ``max_difference`` (both on the central disk, over every channel) as
    0-d tensors and ``background``, ``u_T`` of a blank image. ``image``: ``(1, C, H, W)``, its
    blank value 0; the panels are its first channel (a checkpoint's image of several channels).

    ``g`` fills what it moves into the frame with the blank value of the image it moves: 0 for
    ``I0``, ``background`` for ``u_T(I0)``, the value the PDE gives the blank part of the frame
    (``-mean / std`` and its evolution for a checkpoint's PDE, which standardises its input), so
    ``g·u_T(I0)`` matches ``u_T(g·I0)`` where the frame is blank; a zero fill would show a
    difference of ``|background|`` there even for the identity map. The background is the mean
    of the evolved blank image, taken in float64 and cast back to the image's dtype: exactly its
    value where it is uniform (as for every PDE of the library with a replicating boundary; the
    float32 mean was one rounding off it, and drew as a frame of another shade).

    Refused before any PDE runs: a ``g`` that keeps no point of the disk on real pixels both
    ways (a shift past the frame, a scaling by 0.001): the equivariance study's rule
    (:func:`~eqpdenet.analysis.equivariance.filled_region`), a
    :class:`~eqpdenet.errors.ConfigError` naming ``g`` (every panel but ``I0`` was the zero fill,
    and the difference read 0, "exactly equivariant"). Within that rule the difference is
    measured on the whole disk, where ``g`` fills with each image's blank value.

    A ``pde`` that is an ``nn.Module`` is called in evaluation mode and every submodule is left
    in the mode it had (:func:`~eqpdenet.analysis.predictions.evaluation_mode`, as
    :func:`~eqpdenet.analysis.equivariance.equivariance_error`): in training mode a batch norm
    normalised by each call's own statistics (and moved its running ones) and a dropout drew
    new masks, so a map of error 0.019 was drawn with 0.57. Each of its outputs must be one
    tensor of maps ``(1, C', H, W)`` on the image's grid, else an
    :class:`~eqpdenet.errors.InputTypeError` (not a tensor: a tuple) or
    :class:`~eqpdenet.errors.InputError` (another shape: a frame cut or grown, a classifier's
    logits) naming the PDE's output, after that one call; a ``pde`` that cannot be called is an
    :class:`~eqpdenet.errors.InputTypeError` before any work."""
    _check_one_image(image)
    if not callable(pde):  # "'str' object is not callable", after the checks of g
        raise InputTypeError(f"pde must be a callable that evolves an image (1, C, H, W) into "
                             f"maps of its size (a flow such as heat_pde(...), a module, a "
                             f"function), got {type(pde).__name__}")
    height, width = image.shape[-2:]
    disk = central_disk(height, width)
    if not bool(disk.any()):
        raise InputError(f"the image is {height}x{width} pixels: its central "
                         f"disk (radius {DISK_FRACTION:g} x the shorter side) holds no pixel to "
                         f"measure on")
    g = Similarity(angle, factor, shift)
    moved = g(image)  # checks g's values (finite, invertible) first
    _require_points(disk & filled_region(g, height, width), g, (height, width))
    with evaluation_mode(pde):  # a module's own modes restored after
        evolved = _check_pde_output(pde(image), image, pde)
        evolved_moved = _check_pde_output(pde(moved), image, pde)
        blank = _check_pde_output(pde(torch.zeros_like(image)), image, pde)
    background = blank.double().mean().to(image.dtype)
    moved_evolved = g(evolved - background) + background
    difference = evolved_moved - moved_evolved
    mask = disk.to(image.dtype)
    reference = torch.linalg.vector_norm(evolved * mask)
    if not reference > 0:  # 0 / 0 was a silent NaN, printed "= nan"
        raise InputError("u_T(I0) is 0 on the central disk (a blank image?): the relative "
                         "difference is undefined; draw another image")
    relative = torch.linalg.vector_norm(difference * mask) / reference
    panels = {"I0": image, "gI0": moved, "uT": evolved, "uT_g": evolved_moved,
              "g_uT": moved_evolved, "difference": difference}
    out = {key: value[0, 0] for key, value in panels.items()}
    out["relative_error"] = relative
    out["max_difference"] = difference[0][:, disk].abs().max()
    out["background"] = background
    return out


def _check_one_image(image) -> None:
    """An :class:`~eqpdenet.errors.InputError` unless ``image`` is one image ``(1, C, H, W)``:
    a batch of two was measured over both and drawn of the first, without a word."""
    if not isinstance(image, Tensor) or image.dim() != 4 or len(image) != 1:
        shape = tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__
        raise InputError(f"the diagram is of one image (1, C, H, W), got {shape}")


def _check_pde_output(out, image: Tensor, pde) -> Tensor:
    """``out``, what ``pde`` returned for an image of ``image``'s shape, if it is maps
    ``(1, C', H, W)`` on the image's grid; else an :class:`~eqpdenet.errors.InputTypeError` (not
    a tensor) or :class:`~eqpdenet.errors.InputError` (another shape) naming the PDE's output
    (a tuple had no attribute 'double'; a cut frame was a bare size mismatch of two tensors;
    a model's logits were blamed on "images")."""
    height, width = image.shape[-2:]
    expected = (f"expected maps (1, C', {height}, {width}), an image's evolution on its own "
                f"pixel grid")
    if not isinstance(out, Tensor):
        raise InputTypeError(f"the PDE's output is {_returned(out)} for an image of shape "
                             f"{tuple(image.shape)}; {expected}")
    if out.dim() != 4 or out.shape[0] != 1 or tuple(out.shape[-2:]) != (height, width):
        hint = ""
        if isinstance(getattr(pde, "pde_layer", None), PDELayer):
            hint = ("; pde is a model: pass its PDE (e.g. lambda u: "
                    "model.pde_layer.pdes[i](model.standardize(u)), as figure --pde i draws)")
        raise InputError(f"the PDE's output has shape {tuple(out.shape)} for an image of "
                         f"shape {tuple(image.shape)}; {expected}{hint}")
    return out


def _returned(value) -> str:
    if isinstance(value, tuple | list):
        return (f"a {type(value).__name__} of {len(value)} "
                f"item{'' if len(value) == 1 else 's'}")
    return f"a {type(value).__name__}"


def figure_diagram(image: Tensor, pde: Callable[[Tensor], Tensor], path, *, angle: float = 30.0,
                   factor: float = 1.0, shift=(0.0, 0.0), pde_label: str = "heat equation",
                   title: str | None = None, guard=None, image_label: str | None = None) -> float:
    """Write the diagram as PNG (1200 x 620 pixels at dpi 100); returns the relative error.
    ``guard``: a context manager factory held around the write (:func:`save_figure`).
    ``image_label``: what ``image`` is (``"MNIST test #0"``), shown with the PDE; an image of
    several channels is drawn by its first, and measured on all (said in the figure). A ``pde``
    that is an ``nn.Module`` runs in evaluation mode, its modes restored, and its outputs are
    checked (:func:`diagram_arrays`)."""
    import textwrap

    plt = import_pyplot("figure_diagram")
    from matplotlib.patches import Circle, ConnectionPatch

    panels = diagram_arrays(image, pde, angle, factor, shift)
    pde_label = "\n".join(textwrap.fill(line, 62, subsequent_indent="    ")
                          for line in pde_label.splitlines())
    g_text = f"g: {Similarity(angle, factor, shift).description}"
    channels = image.shape[1]
    if image_label is not None or channels > 1:
        g_text = (f"I0: {image_label or 'the image'}"
                  + (f" (channel 0 of {channels} drawn; measured on all)" if channels > 1 else "")
                  + f"\n{g_text}")
    fig, axes = plt.subplots(2, 4, figsize=(12, 6.2))
    inputs_range = grey_range(float(min(panels["I0"].min(), panels["gI0"].min())),
                              float(max(panels["I0"].max(), panels["gI0"].max())))
    evolved = torch.stack([panels["uT"], panels["uT_g"], panels["g_uT"]])
    evolved_range = grey_range(float(evolved.min()), float(evolved.max()))
    bound = max(abs(evolved_range[0]), abs(evolved_range[1]), 1e-12)
    layout = {
        (0, 0): ("I0", "$I_0$", inputs_range, "gray"),
        (1, 0): ("gI0", "$g\\cdot I_0$", inputs_range, "gray"),
        (0, 1): ("uT", "$u_T(I_0)$", evolved_range, "gray"),
        (1, 1): ("uT_g", "$u_T(g\\cdot I_0)$", evolved_range, "gray"),
        (1, 2): ("g_uT", "$g\\cdot u_T(I_0)$", evolved_range, "gray"),
        (1, 3): ("difference", "$u_T(g\\cdot I_0) - g\\cdot u_T(I_0)$", (-bound, bound), "RdBu_r"),
    }
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    for (r, c), (key, label, (vmin, vmax), cmap) in layout.items():
        ax = axes[r, c]
        shown = ax.imshow(panels[key].numpy(), cmap=cmap, vmin=vmin, vmax=vmax)
        ax.set_title(label, fontsize=11)
        if key == "difference":
            fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.04)
            # central_disk's: centred in the frame, radius DISK_FRACTION x the shorter side
            height, width = panels[key].shape[-2:]
            ax.add_patch(Circle(((width - 1) / 2, (height - 1) / 2),
                                DISK_FRACTION * min(height, width),
                                fill=False, ls="--", lw=0.8, color="k"))
    axes[0, 2].axis("off")
    axes[0, 3].axis("off")
    error = float(panels["relative_error"])
    axes[0, 2].text(
        0.35, 0.62,
        f"PDE: {pde_label}\n{g_text}\n\nrelative difference on the\ndashed disk "
        f"(radius {DISK_FRACTION:g} × shorter side):\n"
        f"‖u_T(g·I0) − g·u_T(I0)‖ / ‖u_T(I0)‖ = {error:.2e}\n\n"
        f"max |difference| on the disk = {float(panels['max_difference']):.2e}\n"
        f"(difference on the scale of the evolved images)",
        fontsize=9.5, va="center", ha="left", transform=axes[0, 2].transAxes)

    def arrow(a, b, text, start=(1.0, 0.5), end=(0.0, 0.5)):
        patch = ConnectionPatch(start, end, "axes fraction", "axes fraction", axesA=a, axesB=b,
                                arrowstyle="-|>", mutation_scale=15, lw=1.5, color="tab:blue")
        fig.add_artist(patch)
        xa, ya = fig.transFigure.inverted().transform(a.transAxes.transform(start))
        xb, yb = fig.transFigure.inverted().transform(b.transAxes.transform(end))
        fig.text((xa + xb) / 2, (ya + yb) / 2 + 0.015, text, ha="center", va="bottom",
                 fontsize=11, color="tab:blue")

    fig.subplots_adjust(left=0.02, right=0.95, top=0.88, bottom=0.02, wspace=0.35, hspace=0.45)
    arrow(axes[0, 0], axes[0, 1], "PDE")
    arrow(axes[1, 0], axes[1, 1], "PDE")
    arrow(axes[0, 0], axes[1, 0], "g   ", start=(0.5, -0.02), end=(0.5, 1.14))
    arrow(axes[0, 1], axes[1, 2], "g", start=(1.0, 0.0), end=(0.2, 1.14))
    fig.text(*_between(fig, axes[1, 1], axes[1, 2]), "≟", ha="center", va="center", fontsize=18)
    fig.text(*_between(fig, axes[1, 2], axes[1, 3]), "−", ha="center", va="center", fontsize=18)
    fig.suptitle(title or "Equivariance as a commutative diagram (Figure 2 of the paper)",
                 fontsize=12)
    save_figure(fig, path, guard=guard)
    return error if math.isfinite(error) else float("nan")


#: The narrowest grey scale, relative to the magnitude of its values (at least 1): float32
#: round-off of a constant image (a few units of 1.2e-7 relative) then stays under one of the 256
#: grey levels; a scale one rounding wide drew it as black and white blocks.
MIN_GREY_RANGE = 1e-4


def grey_range(low: float, high: float) -> tuple[float, float]:
    """``(vmin, vmax)`` of a grey scale for values from ``low`` to ``high``: those, widened
    upwards to :data:`MIN_GREY_RANGE` ``x max(1, |low|, |high|)`` where narrower (a constant
    panel is drawn in the scale's lowest grey, and its rounding noise does not show)."""
    width = MIN_GREY_RANGE * max(1.0, abs(low), abs(high))
    return low, (high if high - low >= width else low + width)


def _between(fig, a, b) -> tuple[float, float]:
    inverse = fig.transFigure.inverted()
    xa, ya = inverse.transform(a.transAxes.transform((1.0, 0.5)))
    xb, _ = inverse.transform(b.transAxes.transform((0.0, 0.5)))
    return (xa + xb) / 2, ya


def _check_layer(layer, function: str) -> None:
    """An :class:`~eqpdenet.errors.InputTypeError` of ``function`` unless ``layer`` is a
    :class:`~eqpdenet.pde.layer.PDELayer`, saying how to pass what was given (a model's
    ``model.pde_layer``, a flow wrapped in a layer) in describe's refusal style; the first
    attribute read was missing instead (``'EqPdeNet' object has no attribute 'pdes'``)."""
    if isinstance(layer, PDELayer):
        return
    given = type(layer).__name__
    if isinstance(getattr(layer, "pde_layer", None), PDELayer):
        fix = ("its PDE layer is model.pde_layer (with standardize=model.standardize, the "
               "model's input standardisation)")
    elif isinstance(layer, EulerFlow | EulerStep):
        rhs = (layer.step if isinstance(layer, EulerFlow) else layer).rhs
        given += f" of {type(rhs).__name__}"
        fix = ("pass a layer of its flow, PDELayer([flow])"
               + (" (one of EulerFlow(step, steps))" if isinstance(layer, EulerStep) else ""))
    else:
        fix = "a PDELayer's evolutions are drawn (PDELayer.build(...), or model.pde_layer)"
    raise InputTypeError(f"{function} takes a PDELayer, got {given}: {fix}")


@torch.no_grad()
def evolution_trajectories(layer: PDELayer, images: Tensor, standardize=None) -> list[Tensor]:
    """Per PDE of ``layer``, ``u(0), u(dt), ..., u(T)`` of ``images`` ``(N, C, H, W)``
    (``standardize`` applied first): ``(steps + 1, N, C, H, W)`` each, every channel evolved.
    The flows run in evaluation mode, each submodule's own mode restored afterwards (an ``F``
    of one's own may hold a batch norm or a dropout). A PDE that is not finite on them raises
    :class:`~eqpdenet.errors.NonFiniteStateError`; ``layer`` not a
    :class:`~eqpdenet.pde.layer.PDELayer` (a model, a flow) is an
    :class:`~eqpdenet.errors.InputTypeError` saying what to pass (``model.pde_layer``)."""
    _check_layer(layer, "evolution_trajectories")
    u0 = standardize(images) if standardize is not None else images
    with evaluation_mode(layer):
        return [pde(u0, return_trajectory=True) for pde in layer.pdes]


def frame_steps(steps: int, frames: int) -> list[int]:
    """The Euler steps drawn as ``frames`` columns of a trajectory of ``steps`` steps: evenly
    spaced from ``u(0)`` to ``u(T)``, both included; one frame is ``u(T)``, what the layer passes
    on (as many columns as distinct steps, at most ``steps + 1``).

    Example:
        >>> frame_steps(10, 6), frame_steps(10, 1), frame_steps(2, 5)
        ([0, 2, 4, 6, 8, 10], [10], [0, 1, 2])
    """
    if not (isinstance(steps, int) and steps >= 0 and isinstance(frames, int) and frames >= 1):
        raise ConfigError(f"frames: at least 1 of a trajectory of 0 or more steps, got "
                          f"frames={frames!r}, steps={steps!r}")
    if frames == 1:
        return [steps]
    return sorted({round(k * steps / (frames - 1)) for k in range(frames)})


@torch.no_grad()
def evolution_grid(layer: PDELayer, images: Tensor, path, *, frames: int = 6,
                   labels: Sequence[str] | None = None, standardize=None,
                   title: str | None = None, trajectories: Sequence[Tensor] | None = None) -> None:
    """PNG grid: one row per (sample, PDE), ``frames`` columns ``u(t)`` from ``t = 0`` to ``T``
    (:func:`frame_steps`: one frame is ``u(T)``); fewer where no PDE has that many distinct
    steps (at most ``steps + 1`` columns), a row of fewer steps ending in blank cells. The
    times ``t = ...`` head a sample's first row and every row whose times differ from the row
    above (PDEs of another ``dt`` or number of steps), so each cell is read under its own time.

    Each row has its own grey scale, shared across its frames so the change in time shows: from
    the row's minimum to its 99.5th percentile (isolated spikes saturate; at least
    :func:`grey_range`'s width); the row label gives the full range. ``images``:
    ``(N, C, H, W)``; ``standardize`` is applied first. Of images of several channels the grid
    draws channel 0, and the rows' ranges are channel 0's: the figure's title says so
    ("channel 0 of C drawn"), as :func:`figure_diagram` does.
    ``trajectories``: those of :func:`evolution_trajectories`, computed already. ``layer`` not a
    :class:`~eqpdenet.pde.layer.PDELayer` is an :class:`~eqpdenet.errors.InputTypeError`
    (:func:`evolution_trajectories`).
    """
    _check_layer(layer, "evolution_grid")
    frame_steps(0, frames)  # frames >= 1, before any work
    if not isinstance(images, Tensor) or images.dim() != 4 or len(images) == 0:
        raise InputError(f"images must be (N, C, H, W) with N >= 1, got "
                         f"{tuple(images.shape) if isinstance(images, Tensor) else images!r}")
    if labels is not None and len(labels) != len(images):
        raise InputError(f"labels: one per image, got {len(labels)} for {len(images)} images")
    plt = import_pyplot("evolution_grid")
    if trajectories is None:
        trajectories = evolution_trajectories(layer, images, standardize)
    rows = [(n, e) for n in range(len(images)) for e in range(layer.n_pdes)]
    # As many columns as the most distinct steps drawn of a PDE: frames beyond its steps + 1
    # repeat none (50 frames of 10 steps drew 11 images and 39 blank columns).
    columns = max(len(frame_steps(t.shape[0] - 1, frames)) for t in trajectories)
    channels = trajectories[0].shape[2]  # what was evolved and drawn
    if channels > 1:  # said, as figure_diagram says it: the other channels are not drawn
        note = f"channel 0 of {channels} drawn (each row's range is channel 0's)"
        title = f"{title}\n{note}" if title else note
    lines = title.count("\n") + 1 if title else 1  # 0.3 in for each line of the title
    fig, axes = plt.subplots(len(rows), columns, squeeze=False,
                             figsize=(1.3 * columns + 1.6, 1.35 * len(rows) + 0.3 * (lines - 1)))
    headers = None  # the times heading the row above
    for r, (n, e) in enumerate(rows):
        trajectory = trajectories[e]
        steps = trajectory.shape[0] - 1
        picks = frame_steps(steps, frames)
        data = trajectory[:, n, 0]
        shown = data[picks].flatten()
        vmin, vmax = grey_range(float(shown.min()), float(torch.quantile(shown, 0.995)))
        dt = layer.pdes[e].step.dt
        times = [f"t = {k * dt:.3g}" for k in picks]
        # Headed where a sample starts and where the times change: a PDE of another dt or
        # number of steps drew u(T) under the row above's "t = 0.8".
        headed = r == 0 or rows[r - 1][0] != n or times != headers
        headers = times
        for c in range(columns):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c >= len(picks):
                ax.set_visible(False)
                continue
            ax.imshow(data[picks[c]].numpy(), cmap="gray", vmin=vmin, vmax=vmax)
            if headed:
                ax.set_title(times[c], fontsize=8)
        name = labels[n] if labels else f"sample {n}"
        full = (float(data.min()), float(data.max()))
        axes[r, 0].set_ylabel(f"{name}\n{layer.pdes[e].name}\n[{full[0]:.2g}, {full[1]:.2g}]",
                              fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.3 * lines / fig.get_figheight()))
    save_figure(fig, path)
