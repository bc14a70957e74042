"""The table of ``eqpdenet symbolic``: the invariants :mod:`eqpdenet.pde.symbolic` finds for the
ready groups, with the counts the theory predicts."""

from __future__ import annotations

import time
from collections.abc import Sequence

from ..pde.symbolic import (
    DEFAULT_DEGREES,
    SymbolicInvariants,
    find_invariants,
    get_group,
    unicode_formula,
)

__all__ = ["print_table", "symbolic_table"]


def symbolic_table(groups: Sequence[str] | None = None) -> tuple[str, list[SymbolicInvariants]]:
    """Markdown table of the ready groups at the orders of :data:`DEFAULT_DEGREES`."""
    results = []
    header = ("| group | order | generators | dim J | orbit dim | expected | found | max degree | "
              "invariants found | seconds |\n|---|---|---|---|---|---|---|---|---|---|")
    lines = [header]
    for name in groups or list(DEFAULT_DEGREES):
        group = get_group(name)
        for order, degree in DEFAULT_DEGREES.get(name, [(2, 3)]):
            result = find_invariants(group, order, degree)
            results.append(result)
            generators = ", ".join(str(f) for f in group.fields)
            found = "; ".join(f"`{unicode_formula(e)}`" for e in result.expressions)
            lines.append(f"| {name} | {order} | {generators} | {result.jet_dimension} | "
                         f"{result.orbit_dimension} | {result.expected_count} | "
                         f"{result.found_count} | {degree} | {found} | {result.seconds:.2f} |")
    return "\n".join(lines), results


def print_table(groups: Sequence[str] | None = None) -> None:
    """``eqpdenet symbolic [group ...]``: print the table of :func:`symbolic_table`."""
    start = time.perf_counter()
    table, results = symbolic_table(groups or None)
    print(table)
    for result in results:
        for note in result.notes:
            print(f"\nnote ({result.group.name}, order {result.order}): {note}")
    print(f"\ntotal {time.perf_counter() - start:.1f} s")

