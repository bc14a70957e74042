"""The table of ``eqpdenet symbolic``: the invariants :mod:`eqpdenet.pde.symbolic` finds for the
ready groups, with the counts the theory predicts; with ``--channels C``, the joint invariants of
``C`` channels."""

from __future__ import annotations

import time
from collections.abc import Sequence

from ..pde.symbolic import (
    DEFAULT_DEGREES,
    JOINT_DEGREES,
    SymbolicInvariants,
    find_invariants,
    get_group,
    unicode_formula,
)

__all__ = ["print_table", "symbolic_table"]


def symbolic_table(groups: Sequence[str] | None = None,
                   channels: int = 1) -> tuple[str, list[SymbolicInvariants]]:
    """Markdown table of the ready groups at the orders of :data:`DEFAULT_DEGREES` (one channel)
    or :data:`JOINT_DEGREES` (``channels > 1``: orders 1 and 2)."""
    results = []
    header = ("| group | order | generators | dim J | orbit dim | expected | found | max degree | "
              "invariants found | seconds |\n|---|---|---|---|---|---|---|---|---|---|")
    lines = [header]
    for name in groups or list(DEFAULT_DEGREES):
        group = get_group(name)
        orders = DEFAULT_DEGREES.get(name, [(2, 3)]) if channels == 1 else JOINT_DEGREES
        for order, degree in orders:
            result = find_invariants(group, order, degree, channels=channels)
            results.append(result)
            generators = ", ".join(str(f) for f in group.fields)
            found = "; ".join(f"`{unicode_formula(e)}`" for e in result.expressions)
            lines.append(f"| {name} | {order} | {generators} | {result.jet_dimension} | "
                         f"{result.orbit_dimension} | {result.expected_count} | "
                         f"{result.found_count} | {degree} | {found} | {result.seconds:.2f} |")
    return "\n".join(lines), results


def print_table(groups: Sequence[str] | None = None, channels: int = 1) -> None:
    """``eqpdenet symbolic [group ...] [--channels C]``: print the table of :func:`symbolic_table`."""
    start = time.perf_counter()
    if channels > 1:
        names = "u1, u2" if channels == 2 else f"u1 ... u{channels}"
        print(f"Joint invariants of {channels} channels {names}, transformed alike by each "
              f"group\n")
    table, results = symbolic_table(groups or None, channels)
    print(table)
    for result in results:
        for note in result.notes:
            print(f"\nnote ({result.group.name}, order {result.order}): {note}")
    print(f"\ntotal {time.perf_counter() - start:.1f} s")
