"""Entries of a benchmark folder side by side against issue 18's targets: mean (std) over the
seeds of every accuracy, the 4-pixel shift, the angle curve's spread, the logit changes and the
minutes of training and evaluation, as a Markdown table (what docs/lifted.md quotes)::

    python benchmarks/compare_entries.py results/benchmark-full gcnn gcnn-centered \\
        lifted-background lifted-centered

Reads the run files (``runs/<entry>-seed<seed>.json``) of finished runs only.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from _args import run

from eqpdenet.app.report import format_number, mean_std
from eqpdenet.app.runstore import load_records
from eqpdenet.errors import InputError

ROWS = [  # label, target, the value of one run
    ("test", "≥ 98.3", lambda r: r["accuracy"]["test"], 2),
    ("iso", "≥ 97", lambda r: r["accuracy"]["iso"], 2),
    ("sca", "≥ 93", lambda r: r["accuracy"]["sca"], 2),
    ("shift", "", lambda r: r["accuracy"]["shift"], 2),
    ("rot", "", lambda r: r["accuracy"]["rot"], 2),
    ("4-pixel shift (curve)", "ahead of the G-CNN", lambda r: r["robustness"]["shift"][-1], 2),
    ("angle curve, max − min", "within 1 point",
     lambda r: max(r["robustness"]["rotation"]) - min(r["robustness"]["rotation"]), 2),
    ("logit change, 37° and back", "≤ the G-CNN's",
     lambda r: r["robustness"]["round_trip_change"]["37"], 3),
    ("training minutes", "≤ 30", lambda r: r["train_seconds"] / 60, 1),
    ("evaluation minutes", "", lambda r: r["eval_seconds"] / 60, 1),
]


def _recorded(run: dict, value) -> float | None:
    """``value(run)``, or None where the run file does not hold it (a folder recorded before
    that measure existed: ``results/benchmark`` has no round-trip change)."""
    try:
        return value(run)
    except (KeyError, TypeError, IndexError):
        return None


def cell(values: list[float | None], digits: int) -> str:
    """Mean (std) as the reports compute and round them; one seed has no spread: none shown. A
    measure some run did not record: ``not recorded``, never a mean of the others."""
    if any(v is None for v in values):
        return "not recorded"
    mean, std = mean_std(values)
    spec = f".{digits}f"
    return f"{format_number(mean, spec)} ({format_number(std, spec) if len(values) > 1 else '–'})"


def _largest(values: list[float | None]) -> str:
    return "not recorded" if any(v is None for v in values) else f"{max(values):.1e}"


def table(folder: Path, entries: list[str]) -> str:
    records = load_records(folder)
    runs = {entry: [r for key, r in sorted(records.items())
                    if r.get("entry") == entry and r.get("status") == "ok"]
            for entry in entries}
    missing = [entry for entry, found in runs.items() if not found]
    if missing:
        # An entry named wrongly is a bad argument: one line, exit 2, by _args.run.
        raise InputError(f"{folder}: no finished run of {', '.join(missing)}")
    head = " | ".join(f"{e} ({runs[e][0]['params']:,}); {len(runs[e])} seeds" for e in entries)
    lines = [f"| | target | {head} |", "|---|---|" + "---:|" * len(entries)]
    for label, target, value, digits in ROWS:
        cells = " | ".join(cell([_recorded(r, value) for r in runs[e]], digits) for e in entries)
        lines.append(f"| {label} | {target} | {cells} |")
    rot90 = " | ".join(_largest([_recorded(r, lambda r: r["robustness"]["logit_change"]["90"])
                                 for r in runs[e]]) for e in entries)
    lines.insert(-3, f"| logit change, rot90 (largest) | < 1e-5 | {rot90} |")
    seeds = "; ".join(f"{e}: " + ", ".join(
        f"{r['accuracy']['test']:.2f} / {r['accuracy']['iso']:.2f} / {r['accuracy']['sca']:.2f}"
        for r in runs[e]) for e in entries)
    return "\n".join(lines) + f"\n\nPer seed (test / iso / sca): {seeds}."


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="a benchmark results folder")
    parser.add_argument("entries", nargs="+", help="benchmark entries, in the table's order")
    args = parser.parse_args()
    if not args.folder.is_dir():
        parser.error(f"no such folder: {args.folder}")
    print(table(args.folder, args.entries))


if __name__ == "__main__":
    run(main)
