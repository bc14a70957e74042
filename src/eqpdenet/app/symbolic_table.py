"""The table of ``eqpdenet symbolic``: the invariants :mod:`eqpdenet.pde.symbolic` finds for the
ready groups, with the counts the theory predicts; with ``--channels C``, the joint invariants of
``C`` channels. Groups acting on M2 (:data:`~eqpdenet.pde.symbolic.FRAME_ORDERS`) follow the
planar ones, their invariants derived by the moving frame (one channel by default)."""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Sequence

from ..checks import require, require_int
from ..errors import ConfigError
from ..pde.symbolic import (
    DEFAULT_DEGREES,
    FRAME_ORDERS,
    JOINT_DEGREES,
    MAX_CHANNELS,
    MAX_SEARCH_MONOMIALS,
    JetSpace,
    SymbolicInvariants,
    find_invariants,
    get_group,
    left_invariant_frame,
    unicode_formula,
)
from .plugins import unregistered_hint

__all__ = ["MAX_CHANNELS", "REGISTERED_DEGREES", "print_table", "symbolic_table"]

#: The orders and degrees a group of :data:`DEFAULT_DEGREES` does not list (one registered with
#: ``register_group``) is shown at, with one channel: orders 1 to 3, as ``se2`` (what
#: ``eqpdenet symbolic --help`` says; order 2 alone before round 17). Each takes well under a
#: second for a group of a few generators (SE(2) x contrast: 0.04, 0.11 and 0.43 s).
REGISTERED_DEGREES: list[tuple[int, int]] = [(1, 2), (2, 3), (3, 3)]

# MAX_CHANNELS (the library's bound on --channels) is eqpdenet.pde.symbolic's: one number for
# the command and for find_invariants.


def _cell(text: str) -> str:
    """``text`` as one cell of a markdown table: ``|`` escaped as ``\\|`` (inside a code span
    too, as GitHub's tables read it) and a line break as a space, so that a group's name or an
    expression of a user's group (``register_group``) cannot split or end the row (a name
    ``pipe|name`` added a column)."""
    return " ".join(text.replace("|", "\\|").splitlines())


def symbolic_table(groups: Sequence[str] | None = None, channels: int = 1,
                   on_row: Callable[[str], None] | None = None,
                   max_degree: int | None = None,
                   ) -> tuple[str, list[SymbolicInvariants]]:
    """Markdown table of the ready groups at the orders of :data:`DEFAULT_DEGREES` (one channel;
    a registered group not listed there at :data:`REGISTERED_DEGREES`, orders 1 to 3) or
    :data:`JOINT_DEGREES` (``channels > 1``: orders 1 and 2); by default, with one channel,
    the groups of :data:`FRAME_ORDERS` after them (``max degree`` reads ``frame``: the moving
    frame, no search); ``on_row(line)`` is called with each line as soon as it is computed (the
    header first). A group named more than once is listed once, where first named. An unknown
    name is a :class:`~eqpdenet.errors.ConfigError` listing the known ones, with the hint that a
    plugin not imported may register it (:func:`~eqpdenet.app.plugins.unregistered_hint`).

    ``max_degree`` (``--max-degree``), where given, replaces the degree of every row but those
    of :data:`FRAME_ORDERS` (the frame has none): an integer >= 1 whose search stays within
    :data:`~eqpdenet.pde.symbolic.MAX_SEARCH_MONOMIALS` at every such row, else a
    ``ConfigError`` naming the row and the largest degree it allows, before any computation. A
    group on more than ``x, y`` that the moving frame refuses for not acting freely and
    transitively is searched (``find_invariants``' fallback, with its note)."""

    results = []
    header = ("| group | order | generators | dim J | orbit dim | expected | found | max degree | "
              "invariants found | seconds |\n|---|---|---|---|---|---|---|---|---|---|")
    lines = [header]
    default = list(DEFAULT_DEGREES) + (list(FRAME_ORDERS) if channels == 1 else [])
    # A group named twice is listed once (`eqpdenet symbolic se2 se2` printed its rows twice).
    groups = list(dict.fromkeys(groups or default))
    for name in groups:
        try:
            get_group(name)  # an unknown name before any computation
        except ConfigError as error:  # a group of one's own: registered by a plugin?
            raise ConfigError(unregistered_hint(error)) from None
    if max_degree is not None:
        require_int(max_degree, "--max-degree", 1)
    rows = []
    for name in groups:
        group = get_group(name)
        if channels > 1:
            orders = JOINT_DEGREES
        elif name in FRAME_ORDERS:
            orders = [(order, None) for order in FRAME_ORDERS[name]]
        else:
            orders = DEFAULT_DEGREES.get(name, REGISTERED_DEGREES)
        if max_degree is not None and _frame_applies(group):
            # find_invariants' own route: the frame takes no degree (a registered M2 group's
            # rows, se2_m2 with --channels 2, were refused as searches that never run)
            orders = [(order, None) for order, _ in orders]
        for order, degree in orders:
            rows.append((name, group, order,
                         degree if max_degree is None or degree is None else max_degree))
    if max_degree is not None:
        _require_searchable(rows, max_degree, channels)
    if on_row:
        on_row(header)
    for name, group, order, degree in rows:
        result = find_invariants(group, order, degree or 3, channels=channels)
        results.append(result)
        # Every cell written from a user's text (the name, the generators, the invariants
        # and their names) goes through _cell; the numbers are the table's own.
        generators = _cell(", ".join(str(f) for f in group.fields))
        names = result.names or ("",) * result.found_count
        found = "; ".join(_cell(f"`{label + ' = ' if label and label != str(e) else ''}"
                                f"{unicode_formula(e)}`")
                          for label, e in zip(names, result.expressions, strict=True))
        degree_text = "frame" if result.method == "frame" else result.max_degree
        lines.append(f"| {_cell(name)} | {order} | {generators} | {result.jet_dimension} | "
                     f"{result.orbit_dimension} | {result.expected_count} | "
                     f"{result.found_count} | {degree_text} | {found} | "
                     f"{result.seconds:.2f} |")
        if on_row:
            on_row(lines[-1])
    return "\n".join(lines), results


def _frame_applies(group) -> bool:
    """Whether :func:`~eqpdenet.pde.symbolic.find_invariants` (``method="auto"``) computes the
    group's rows with the moving frame: a group on more than ``x, y`` that the frame takes."""
    if len(group.variables) <= 2:
        return False
    try:
        left_invariant_frame(group)
    except ConfigError:
        return False
    return True


def _require_searchable(rows, max_degree: int, channels: int) -> None:
    """A ConfigError naming ``--max-degree`` unless every row with a degree (not a frame row)
    stays within :data:`MAX_SEARCH_MONOMIALS` at it, before any row is computed (the bound
    ``find_invariants`` itself applies, then only when the row was reached). It names the
    largest degree every row allows, and the row that limits it (the first row's bound was
    refused next at another order)."""
    limit = None  # (largest degree, name, order, jet coordinates)
    for name, group, order, degree in rows:
        if degree is None:
            continue
        n = len(JetSpace(order, channels, group.variables).derivatives)
        # the count grows with d: stop at the first degree past the bound (a loop to
        # --max-degree took seconds at 1e5 and did not end at 1e8)
        largest = max(itertools.takewhile(
            lambda d, n=n: math.comb(n + d, d) - 1 <= MAX_SEARCH_MONOMIALS,
            range(1, max_degree + 1)), default=1)
        if limit is None or largest < limit[0]:
            limit = (largest, name, order, n)
    if limit is None or limit[0] >= max_degree:
        return
    largest, name, order, n = limit
    searched = math.comb(n + max_degree, max_degree) - 1
    raise ConfigError(
        f"invalid config: --max-degree: {max_degree} is {searched:,} monomials to search for "
        f"{name} at order {order} (its {n} jet coordinates), more than the bound of "
        f"{MAX_SEARCH_MONOMIALS:,}; at most {largest} for every row of this table")


def print_table(groups: Sequence[str] | None = None, channels: int = 1,
                max_degree: int | None = None) -> None:
    """``eqpdenet symbolic [group ...] [--channels C] [--max-degree D]``: print the table of
    :func:`symbolic_table`."""
    start = time.perf_counter()
    require_int(channels, "--channels", 1)
    require(channels <= MAX_CHANNELS, "--channels",
            f"{channels} channels: at most {MAX_CHANNELS} (the search grows steeply with the "
            f"channels: 4 take minutes, more take hours)")
    if channels > 1:
        names = "u1, u2" if channels == 2 else f"u1 ... u{channels}"
        print(f"Joint invariants of {channels} channels {names}, transformed alike by each "
              f"group\n")
    _, results = symbolic_table(groups or None, channels,
                                on_row=lambda line: print(line, flush=True),
                                max_degree=max_degree)
    frames = {}
    for result in results:
        for note in result.notes:
            # The notes are find_invariants'; the command's option for its max_degree is
            # --max-degree (the note said "raise max_degree", which the command had no way to).
            note = note.replace("max_degree=", "--max-degree ").replace("max_degree",
                                                                            "--max-degree")
            print(f"\nnote ({result.group.name}, order {result.order}): {note}")
        if result.frame is not None:
            frames[result.group.name] = result.frame
    for name, frame in frames.items():
        commutators = ", ".join(f"[{frame.names[i]}, {frame.names[j]}] = "
                                f"{_in_frame(frame.commutator(i, j), frame.names)}"
                                for i in range(len(frame.names))
                                for j in range(i + 1, len(frame.names)))
        print(f"\nmoving frame ({name}): {'; '.join(str(frame).splitlines())}; {commutators}")
    print(f"\ntotal {time.perf_counter() - start:.1f} s")


def _in_frame(coefficients, names) -> str:
    """``sum_k c^k A_k`` as text: ``-A2``, ``A1``, ``0``."""
    terms = [("" if c == 1 else "-" if c == -1 else f"{c} ") + name
             for c, name in zip(coefficients, names, strict=True) if c != 0]
    return " + ".join(terms).replace("+ -", "- ") or "0"
