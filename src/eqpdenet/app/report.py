"""Reports: our results side by side with the paper's Tables 1 and 2, and an accuracy plot.

The paper's numbers (``paper_tables.csv``, copied from Lagrave & Riou 2021, CC BY 4.0) are
accuracies in percent, mean and standard deviation over 10 instances. Ours are aggregated from a
``results.jsonl`` written by :func:`eqpdenet.app.sweeps.reproduce`: mean and sample standard
deviation (``ddof = 1``) over the seeds of each (model, hidden size). The difference is reported
in percentage points and in units of the paper's standard deviation. The paper's numbers are
ROTMNIST's: runs on any other data set (:func:`on_paper_data`) are tabled and plotted without
them, and the table's header says so. A cell whose parameter count is not the paper's for its
model and hidden size is of another architecture than the paper's row: it shows the paper's
count beside ours (``[paper: 13033]``), leaves out Δ and Δ/σ, and the header names it
(:func:`other_models_note`).

A run counts once: records with the same run key (model, hidden size, seed) that agree are one
run (:func:`deduplicate`); records of the same key that disagree are refused, since neither can
be trusted to be the run the configuration describes. A record whose numbers are not finite (an
accuracy of NaN) or not what a run writes is refused too (:func:`check_records`): a mean over it
would be NaN or wrong, printed as if it were a result. A run that failed (diverged) is counted,
never dropped: ``(+N failed)`` in its cell's runs, and named in the header; a folder whose runs
all failed is tabled too, a row of "–" per cell, and its plot draws the paper's lines with a note
that none of ours finished (:func:`accuracy_figure`). The runs of one
cell are of one model: runs that disagree on ``params`` are refused (:func:`common_params`).

Both reports (this one and the benchmark's) average with one function, :func:`mean_std` (the
mean ``math.fsum``-based, :func:`statistics.fmean`), and print their numbers through one,
:func:`format_number`, which rounds a tie half away from zero as a reader does (96.25 and 96.35
print 96.3 and 96.4; ``format`` gave 96.2 and 96.3, of the binary values).

EqPdeNet − FCNN is paired by seed on the seeds both cells have, saying so where they are fewer
than a cell's (``[paired on 1 of 3 seeds]``), and of the means where none is shared
(``(unpaired)``).

The tables hold the paper's two models only (``reproduce`` runs no other kind); runs of other
kinds in a folder made before that was refused are named in the header, and a folder holding
no run of the two is refused rather than reported as an empty table.

A report says whether its sweep is complete: the runs the folder's ``config.toml`` describes that
have no record are listed at the top of ``table.md`` (:func:`missing_runs`), and ``eqpdenet
report`` then warns and exits with status 3. A table holds exactly those runs
(:func:`sweep_records`): runs the configuration no longer lists are left out and named, runs of
another base configuration, or whose own configuration is not the one ``config.toml`` gives
their key (a benchmark entry's recipe edited since), refused, as the sweep refuses them. Without
a ``config.toml`` it can read, a folder's runs are tabled if they share one base configuration,
and refused if they do not (a cell would average two). With or without one, a run whose own
configuration contradicts its key (model kind, hidden size, seed: :func:`key_differences`) is
refused: a cell would count it as a run it is not. A benchmark's runs (:func:`benchmark_records`)
are refused too: they have a report of their own. The records are read from
``results.jsonl`` after regenerating it from the run files (:func:`read_results`), and every output
is checked before any is written (:func:`check_outputs`).
"""

from __future__ import annotations

import csv
import decimal
import math
import statistics
from importlib import resources
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ..data.datasets import is_built_in
from ..errors import ConfigError, DataFileError
from .files import (
    atomic_write,
    check_output_file,
    figure_bytes,
    import_pyplot,
    read_jsonl,
    write_set,
)
from .locks import hold
from .runstore import SAME_RUN_FIELDS, mend_advice, non_finite_fields, write_aggregate

__all__ = ["RUN_STATUSES", "SAME_RUN_FIELDS", "Described", "Report", "aggregate", "check_outputs",
           "benchmark_records", "check_records", "common_params", "dataset_name", "deduplicate",
           "described_runs", "failed_note", "finite_number", "format_number", "has_results",
           "key_differences", "left_out_note", "mean_std", "other_models_note",
           "missing_runs", "nothing_described", "on_paper_data", "paper_run_key", "paper_table",
           "accuracy_figure", "plot_accuracy", "protocol_table", "read_results", "recipe_differences",
           "rerun_advice", "subset_note", "sweep_records", "untabled_note", "validation_table",
           "write_report"]

SCENARIOS = ("test", "iso", "sca")
#: The paper's two models (Tables 1 and 2) and their printed names: the kinds
#: :data:`eqpdenet.app.config.PAPER_MODELS` that ``reproduce`` runs (tests/app/test_config_reproduce.py
#: keeps the two equal).
MODEL_NAMES = {"eqpdenet": "EqPdeNet", "fcnn": "FCNN"}
PAPER_MODELS = tuple(MODEL_NAMES)
#: Every status a run record is written with: ``"ok"``, or ``"diverged"`` for a run without a
#: result (:func:`eqpdenet.app.training.run_experiment`, and
#: :func:`eqpdenet.app.runstore.with_finite_numbers` for non-finite results). Any other is refused
#: (:func:`check_records`): a report counted it as a failed run and dropped its accuracies.
RUN_STATUSES = ("ok", "diverged")


def paper_table() -> dict[tuple[str, int], dict]:
    """``{(model, hidden): {"params": int, "test": (mean, std), "iso": ..., "sca": ...}}``."""
    text = resources.files("eqpdenet.app").joinpath("paper_tables.csv").read_text(encoding="utf-8")
    table = {}
    for row in csv.DictReader(text.splitlines()):
        kind = row["model"].lower()
        table[kind, int(row["hidden"])] = {
            "params": int(row["params"]), "n": 10,
            **{s: (float(row[f"{s}_mean"]), float(row[f"{s}_std"])) for s in SCENARIOS},
        }
    return table


def mean_std(values) -> tuple[float, float]:
    """Mean (:func:`statistics.fmean`, a ``math.fsum``: the same values give the same mean in
    any order) and sample std (``ddof = 1``) of ``values``: the one averaging of both reports.
    NaN for both where a value is not finite (the reports refuse such records first,
    :func:`check_records`; :func:`statistics.stdev` of NaN and inf raised an AttributeError) or
    there is none, NaN std for one value. (The paper's report took ``numpy.mean``, the
    benchmark's ``fmean``: the same three runs printed 95.9 in one and 96.0 in the other.)"""
    values = [float(value) for value in values]
    if not values or not all(math.isfinite(value) for value in values):
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else math.nan


def format_number(value: float, spec: str = ".1f") -> str:
    """``value`` as ``format(value, spec)`` writes it (``spec`` a fixed-point ``f`` or exponent
    ``e`` format, a sign allowed: ``"+.1f"``, ``".1e"``), but rounded half away from zero as a
    reader rounds the number he sees: the decimal number rounded is the shortest that reads
    back as ``value`` (its ``repr``, as ``results.jsonl`` holds it). ``format`` rounds the
    binary value, an exact tie half to even (96.25 -> 96.2) and 96.35, held as 96.3499..., down
    (96.3); here they are 96.3 and 96.4. Every rounded number of both reports' tables is written
    by it.
    """
    value = float(value)
    if not math.isfinite(value):
        return format(value, spec)
    with decimal.localcontext() as context:
        context.rounding = decimal.ROUND_HALF_UP
        text = format(decimal.Decimal(repr(value)), spec)
    # Decimal writes an exponent with as few digits as it needs (1.3e-5), float with two or more
    return format(float(text), spec) if spec.endswith(("e", "E")) else text


def common_params(runs: list[dict], name: str, source: str = "results", *,
                  key=None) -> int | None:
    """The parameter count the successful ``runs`` of one table row (``name``: a benchmark
    entry, a model and hidden size) share, None where there is none; a
    :class:`~eqpdenet.errors.DataFileError` naming the runs where they disagree: they are not
    runs of one model, and a row of them would average two models under the first one's count."""
    key = key or paper_run_key
    counts: dict[int, list[str]] = {}
    for record in runs:
        counts.setdefault(record["params"], []).append(key(record))
    if len(counts) > 1:
        shown = "; ".join(f"{count:,} ({_shown(keys)})" for count, keys in counts.items())
        raise DataFileError(source, f"the runs of {name} disagree on params: {shown}; they are "
                                    f"not runs of one model, and a row would average them "
                                    f"under one count. Keep the runs of one configuration "
                                    f"({rerun_advice('<key>')})")
    return next(iter(counts), None)


def finite_number(value) -> bool:
    """Whether ``value`` is a finite number as JSON holds one: not a bool, not a string."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def rerun_advice(key: str) -> str:
    """How to run the run ``key`` of a sweep's folder again: its line in ``results.jsonl`` and
    its run file both go (``docs/distributed.md``). ``results.jsonl`` is regenerated from the
    run files, so a line deleted alone comes back; a line left without its run file counts as a
    finished run of a folder written before run files existed."""
    return (f"to rerun it, delete both runs/{key}.json (if there is one) and its line in "
            f"results.jsonl, then rerun the sweep's command")


def check_records(records: list[dict], source: str = "results") -> list[dict]:
    """``records`` if each is a run record a report can use, else a
    :class:`~eqpdenet.errors.DataFileError` naming the record and the field: a dict with
    ``model``, an integer ``hidden`` and ``seed`` and a ``status`` of :data:`RUN_STATUSES`; a
    successful run's accuracies finite percentages (``validation_accuracy`` too) and its
    ``params`` a count. The message of a bad status, or of a successful run's bad number, says
    how to run it again (:func:`rerun_advice`)."""
    for number, record in enumerate(records, 1):
        where = f"record {number}"
        if not isinstance(record, dict):
            raise DataFileError(source, f"{where} is not a run record (a JSON object)")
        for field, kind in (("model", str), ("hidden", int), ("seed", int), ("status", str)):
            value = record.get(field)
            if not isinstance(value, kind) or isinstance(value, bool):
                raise DataFileError(source, f"{where}: {field} is {value!r}, not a run's "
                                            f"{kind.__name__}")
        key = f"{record['model']}-h{record['hidden']}-seed{record['seed']}"
        where = f"{where} ({key})"
        # a benchmark's keys are its entries' names (<entry>-seed<seed>)
        advice = rerun_advice(record["key"] if isinstance(record.get("key"), str) else key)
        if record["status"] not in RUN_STATUSES:  # "OK" was tabled as a failed run
            raise DataFileError(source, f"{where}: status is {record['status']!r}, not a run's "
                                        f"status ({' or '.join(map(repr, RUN_STATUSES))}); "
                                        f"{advice}")
        if record["status"] != "ok":
            continue
        accuracy = record.get("accuracy")
        if not isinstance(accuracy, dict):
            raise DataFileError(source, f"{where}: a successful run without accuracies; {advice}")
        numbers = [(f"accuracy {k}", v) for k, v in accuracy.items()]
        if "validation_accuracy" in record:
            numbers.append(("validation_accuracy", record["validation_accuracy"]))
        for name, value in numbers:
            if not finite_number(value) or not 0 <= value <= 100:
                raise DataFileError(source, f"{where}: {name} is {value!r}, not a finite "
                                            f"percentage; a report cannot average it ({advice})")
        params = record.get("params")
        if not isinstance(params, int) or isinstance(params, bool) or params < 0:
            raise DataFileError(source, f"{where}: params is {params!r}, not a parameter count "
                                        f"({advice})")
        # a benchmark's curves and logit changes are averaged too (statistics.stdev of NaN and
        # inf crashed with "'float' object has no attribute 'numerator'")
        bad = non_finite_fields(record.get("robustness"), "robustness")
        if bad:
            raise DataFileError(source, f"{where}: {bad[0]}, not a finite number; a report "
                                        f"cannot average it ({advice})")
    return records


def paper_run_key(record: dict) -> str:
    """The run key of a ``reproduce`` record: ``<model>-h<hidden>-seed<seed>``."""
    return f"{record['model']}-h{int(record['hidden'])}-seed{record['seed']}"


#: The fields only a benchmark's records carry (its entry's name, its curves): what tells a
#: benchmark's runs from a paper sweep's where no marker or readable config.toml does.
BENCHMARK_FIELDS = ("entry", "robustness")


def benchmark_records(records) -> list[dict]:
    """The records of ``records`` that carry a field only a benchmark's do
    (:data:`BENCHMARK_FIELDS`)."""
    return [r for r in records if isinstance(r, dict) and any(f in r for f in BENCHMARK_FIELDS)]


def deduplicate(records: list[dict], source: str = "results", *, key=paper_run_key,
                fields: tuple[str, ...] = SAME_RUN_FIELDS) -> list[dict]:
    """One record per run key (``key(record)``: by default model, hidden size and seed), in
    first-seen order; a :class:`~eqpdenet.errors.DataFileError` if two records of one key
    disagree on any of ``fields`` (contradictory duplicates)."""
    first: dict[str, dict] = {}
    for number, record in enumerate(check_records(records, source), 1):
        name = key(record)
        if name not in first:
            first[name] = record
            continue
        differ = [f for f in fields if first[name].get(f) != record.get(f)]
        if differ:
            raise DataFileError(source, f"run {name} is recorded twice with different "
                                        f"{', '.join(differ)} (record {number}); keep one and "
                                        f"rerun `eqpdenet report`")
    return list(first.values())


def failed_note(records: list[dict], key=paper_run_key) -> str:
    """``", F of them failed (key: status, ...)"`` for the runs of ``records`` that did not
    finish with a result (a diverged run), else ``""``: a report counts them, never silently."""
    failed = [f"{key(r)}: {r.get('status')}" for r in records if r.get("status") != "ok"]
    if not failed:
        return ""
    shown = ", ".join(failed[:4]) + (", ..." if len(failed) > 4 else "")
    return f", {len(failed)} of them failed ({shown})"


def dataset_name(records: list[dict]) -> str:
    """The data set the records were made on, as a reader knows it (``ROTMNIST``, a file's
    name); several, joined with "and". A record without a configuration tells nothing; one
    from before ``data.dataset`` existed was made on ROTMNIST. A built-in name that a plugin
    of this process registers anew (:func:`~eqpdenet.data.datasets.is_built_in`) is the user's
    set, named as the configuration names it (``mnist``), as a registered name of one's own."""
    names = []
    for record in records:
        data = (record.get("config") or {}).get("data")
        if not isinstance(data, dict):
            continue
        spec = data.get("dataset", "rotmnist")
        # a replaced 'mnist' was called MNIST: "the whole test set of MNIST" of a plugin's set
        known = ({"rotmnist": "ROTMNIST", "mnist": "MNIST"}
                 if isinstance(spec, str) and is_built_in(spec) else {})
        name = known.get(spec, Path(str(spec)).name)
        name = f"rotated {name}" if data.get("rotated") else name
        if name not in names:
            names.append(name)
    return " and ".join(names) or "ROTMNIST"


def on_paper_data(records: list[dict]) -> bool:
    """Whether every record was made on the paper's data: ROTMNIST as the paper generates it
    (``data.dataset = 'rotmnist'`` with its built-in loader, not a plugin's set registered anew
    under the name; not rotated again, digits rotated about the frame's centre); a record
    without a configuration, or from before those fields existed, was. The paper's numbers are
    set against no other data set's (:func:`write_report`)."""
    for record in records:
        data = (record.get("config") or {}).get("data")
        if not isinstance(data, dict):
            continue
        spec = data.get("dataset", "rotmnist")
        # a plugin's 'rotmnist' is the user's data: its table was set against the paper's
        if (spec != "rotmnist" or not is_built_in(spec) or data.get("rotated")
                or data.get("rotation_centre", "frame") != "frame"):
            return False
    return True


def subset_note(records: list[dict], fields=("train_subset", "test_subset")) -> str:
    """Sentences naming what of the data the records did not use, else ``""``:
    ``data.train_subset`` and ``data.test_subset`` (those of ``fields``) where the records used
    them (the numbers then come from part of the data), and, with ``train_subset`` in
    ``fields``, a non-zero ``data.validation``, the training images held out for validation,
    which the runs did not train on either."""
    def sizes(field):
        return sorted({((r.get("config") or {}).get("data") or {}).get(field) or 0
                       for r in records} - {0})

    parts = []
    for field, what in (("train_subset", "training"), ("test_subset", "test")):
        if field in fields and sizes(field):
            parts.append(f"the first {' or '.join(f'{n:,}' for n in sizes(field))} {what} "
                         f"images (`data.{field}`)")
    note = f" Runs used only {' and '.join(parts)}." if parts else ""
    # validation shrinks the training set as train_subset does (the last images of the
    # training split): a header that named only train_subset said nothing of 11,000 of 12,000
    held = sizes("validation") if "train_subset" in fields else []
    if held:
        note += (f" Runs had {' or '.join(f'{n:,}' for n in held)} training images held out "
                 f"for validation (`data.validation`).")
    return note


def untabled_note(records: list[dict], source: str = "results") -> str:
    """A sentence naming the runs of ``records`` of kinds other than :data:`PAPER_MODELS`,
    which the tables leave out (a folder made before ``reproduce`` refused other kinds), else
    ``""``; a :class:`~eqpdenet.errors.DataFileError` when no run is of the paper's models (the
    report would be a table without a row)."""
    others: dict[str, int] = {}
    for record in records:
        if record["model"] not in PAPER_MODELS:
            others[record["model"]] = others.get(record["model"], 0) + 1
    if not others:
        return ""
    kinds = ", ".join(f"{kind} ({count} runs)" for kind, count in sorted(others.items()))
    if sum(others.values()) == len(records):
        raise DataFileError(source, f"its runs are of {kinds}, none of the paper's models "
                                    f"({', '.join(PAPER_MODELS)}), the only ones this report "
                                    f"tables; compare other kinds with `eqpdenet benchmark`")
    return (f" Runs of {kinds} are not in the tables, which hold the paper's models "
            f"({', '.join(MODEL_NAMES.values())}) only.")


def aggregate(records: list[dict], source: str = "results") -> dict[tuple[str, int], dict]:
    """Mean and sample std (:func:`mean_std`) per (model, hidden) and scenario over the
    successful runs, each run key counted once (:func:`deduplicate`); ``validation`` likewise,
    of the runs that recorded a validation accuracy. The runs of a cell that disagree on
    ``params`` are refused (:func:`common_params`)."""
    groups: dict[tuple[str, int], list[dict]] = {}
    failures: dict[tuple[str, int], int] = {}
    for record in deduplicate(records, source):
        key = (record["model"], int(record["hidden"]))
        if record.get("status") == "ok":
            groups.setdefault(key, []).append(record)
        else:
            failures[key] = failures.get(key, 0) + 1
    table = {}
    for key in sorted(set(groups) | set(failures)):
        runs = groups.get(key, [])
        params = common_params(runs, f"{MODEL_NAMES.get(key[0], key[0])} h = {key[1]}", source)
        entry = {"params": params, "n": len(runs),
                 "failed": failures.get(key, 0), "seeds": sorted(r["seed"] for r in runs),
                 "by_seed": {r["seed"]: r["accuracy"] for r in runs}, "covered": {}}
        for scenario in (*SCENARIOS, "validation"):
            values = [r["validation_accuracy"] if scenario == "validation"
                      else r["accuracy"][scenario] for r in runs
                      if (scenario == "validation" and "validation_accuracy" in r)
                      or scenario in r["accuracy"]]
            if values:
                entry[scenario] = mean_std(values)
                entry["covered"][scenario] = len(values)
        table[key] = entry
    return table


def _cell(value: tuple[float, float] | None) -> str:
    if value is None:
        return "–"
    mean, std = value
    return (f"{format_number(mean)} ({format_number(std)})" if math.isfinite(std)
            else format_number(mean))


def protocol_table(ours: dict, paper: dict | None = None, *, compare: bool = True) -> str:
    """Markdown: per model and hidden size, paper | ours | difference | difference / sigma_paper;
    with ``compare=False`` (runs on another data set than the paper's: :func:`on_paper_data`)
    ours alone, without the paper's columns. A cell whose parameter count is not the paper's
    row's (another architecture: :func:`other_models_note`) shows both counts (``50660 [paper:
    13033]``) and "–" for its Δ and Δ/σ."""
    paper = (paper_table() if paper is None else paper) if compare else {}
    lines = []
    for kind in PAPER_MODELS:
        sizes = sorted({h for k, h in ours if k == kind})
        if not sizes:
            continue
        title = "Table 1" if kind == "eqpdenet" else "Table 2"
        if compare:
            lines += [f"### {MODEL_NAMES[kind]} ({title} of the paper)", "",
                      "| h | #params | runs | " + " | ".join(
                          f"{s} paper | {s} ours | Δ | Δ/σ" for s in SCENARIOS) + " |",
                      "|---:|---:|---:|" + "---:|" * (4 * len(SCENARIOS))]
        else:
            lines += [f"### {MODEL_NAMES[kind]}", "",
                      "| h | #params | runs | " + " | ".join(SCENARIOS) + " |",
                      "|---:|---:|---:|" + "---:|" * len(SCENARIOS)]
        for hidden in sizes:
            mine, theirs = ours[kind, hidden], paper.get((kind, hidden))
            runs = f"{mine['n']}" + (f" (+{mine['failed']} failed)" if mine.get("failed") else "")
            other = _paper_params(mine, theirs)
            cells = [str(hidden), _params(mine) + (f" [paper: {other}]" if other else ""), runs]
            for scenario in SCENARIOS:
                ref, got = (theirs or {}).get(scenario), mine.get(scenario)
                if not compare:
                    cells.append(_cell(got) + _coverage(mine, scenario))
                    continue
                cells += [_cell(ref), _cell(got) + _coverage(mine, scenario)]
                # another model than the paper's row: a difference of two models is no
                # reproduction result, and Δ/σ would read as one
                if ref and got and not other:
                    delta = got[0] - ref[0]
                    cells += [format_number(delta, "+.1f"),
                              format_number(delta / ref[1], "+.1f") if ref[1] else "–"]
                else:
                    cells += ["–", "–"]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    # The paper's claim: EqPdeNet beats FCNN at every size. Show the gap, paper vs ours.
    sizes = sorted({h for k, h in ours if k == "eqpdenet"} & {h for k, h in ours if k == "fcnn"})
    if sizes:
        sources = (paper, ours) if compare else (ours,)
        lines += ["### EqPdeNet − FCNN (percentage points)", "",
                  "Ours: mean (std) of the difference between the two models trained with the "
                  "same seed (same perceptron initialisation, batch order and scenario draws).", "",
                  "| h | " + " | ".join(f"{s} paper | {s} ours" if compare else f"{s} ours"
                                        for s in SCENARIOS) + " |",
                  "|---:|" + "---:|" * (len(sources) * len(SCENARIOS))]
        for hidden in sizes:
            cells = [str(hidden)]
            for scenario in SCENARIOS:
                for table in sources:
                    a, b = table.get(("eqpdenet", hidden), {}), table.get(("fcnn", hidden), {})
                    cells.append(_gap(a, b, scenario))
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def _params(cell: dict) -> str:
    """A cell's parameter count; "–" where none of its runs finished (none recorded one)."""
    return "–" if cell.get("params") is None else str(cell["params"])


def _paper_params(mine: dict, theirs: dict | None) -> int | None:
    """The paper's parameter count of the row ``theirs`` where it is not our cell ``mine``'s
    (our runs are of another model than the paper's of that model and hidden size: another
    layer reduction, other invariants), else None; None too where either has no count (a cell
    whose runs all failed, a paper row without one)."""
    count = (theirs or {}).get("params")
    return count if mine.get("params") is not None and count is not None \
        and mine["params"] != count else None


def other_models_note(ours: dict, paper: dict | None = None) -> str:
    """A sentence naming the cells of ``ours`` whose parameter count is not the paper's for
    their model and hidden size (:func:`paper_table`, or ``paper``), with both counts, and
    saying that their Δ and Δ/σ are left out (:func:`protocol_table`) and, where the
    EqPdeNet − FCNN section has their size, that the paper's gap there is other models', else
    ``""``: the paper's accuracy beside theirs is that of another model."""
    paper = paper_table() if paper is None else paper
    cells, sizes = [], []
    for kind in PAPER_MODELS:
        for hidden in sorted(h for k, h in ours if k == kind):
            count = _paper_params(ours[kind, hidden], paper.get((kind, hidden)))
            if count:
                cells.append(f"{MODEL_NAMES[kind]} h = {hidden} ({ours[kind, hidden]['params']:,} "
                             f"parameters, the paper's {count:,})")
                sizes.append(hidden)
    if not cells:
        return ""
    both = sorted({h for h in sizes if ("eqpdenet", h) in ours and ("fcnn", h) in ours})
    gap = (f", and the paper's EqPdeNet − FCNN gap at h = {', '.join(map(str, both))} is that "
           f"of other models than ours" if both else "")
    return (f" Not the paper's models: {'; '.join(cells)}. Their rows (`[paper: N]` beside "
            f"#params) set the paper's accuracy beside another architecture's: their Δ and Δ/σ "
            f"are left out{gap}.")


def validation_table(ours: dict) -> str:
    """Markdown: per model and hidden size, the validation accuracy (mean (std) over the runs),
    for runs that evaluated no test scenario (the validation study's), which the paper's tables
    cannot be compared with."""
    lines = []
    for kind in PAPER_MODELS:
        sizes = sorted({h for k, h in ours if k == kind})
        if not sizes:
            continue
        lines += [f"### {MODEL_NAMES[kind]} (validation split)", "",
                  "| h | #params | runs | validation ours |", "|---:|---:|---:|---:|"]
        for hidden in sizes:
            mine = ours[kind, hidden]
            runs = f"{mine['n']}" + (f" (+{mine['failed']} failed)" if mine.get("failed") else "")
            lines.append(f"| {hidden} | {_params(mine)} | {runs} | "
                         f"{_cell(mine.get('validation'))}{_coverage(mine, 'validation')} |")
        lines.append("")
    return "\n".join(lines)


def _coverage(cell: dict, scenario: str) -> str:
    """`` [k of n runs]`` where only some of a cell's runs have ``scenario``."""
    covered = cell.get("covered", {}).get(scenario, cell.get("n", 0))
    return f" [{covered} of {cell['n']} runs]" if covered < cell.get("n", 0) else ""


def _gap(a: dict, b: dict, scenario: str) -> str:
    """EqPdeNet − FCNN: paired on the seeds both models have (one is enough: the difference of
    the means of cells with other seeds mixes seed-to-seed spread into it), saying so when they
    are fewer than either cell's; of the means where no seed is shared, or no per-seed result
    exists (the paper's)."""
    if scenario not in a or scenario not in b:
        return "–"
    mine, theirs = a.get("by_seed"), b.get("by_seed")
    if mine is None or theirs is None:  # the paper's table: means only
        return format_number(a[scenario][0] - b[scenario][0], "+.1f")
    seeds = sorted(s for s in set(mine) & set(theirs)
                   if scenario in mine[s] and scenario in theirs[s])
    if not seeds:
        return format_number(a[scenario][0] - b[scenario][0], "+.1f") + " (unpaired)"
    mean, std = mean_std(mine[s][scenario] - theirs[s][scenario] for s in seeds)
    cell = format_number(mean, "+.1f") + (f" ({format_number(std)})" if len(seeds) > 1 else "")
    everyone = max(len([s for s in mine if scenario in mine[s]]),
                   len([s for s in theirs if scenario in theirs[s]]))
    return cell + (f" [paired on {len(seeds)} of {everyone} seeds]" if len(seeds) < everyone else "")


def plot_accuracy(ours: dict, path: Path, paper: dict | None = None,
                  scenarios: tuple[str, ...] = SCENARIOS) -> Path:
    """PNG: accuracy against #params for both models and the three scenarios (or
    ``scenarios``, e.g. ``("validation",)``), paper dashed where it has the scenario
    (:func:`accuracy_figure`), written atomically to ``path``."""
    atomic_write(Path(path), accuracy_figure(ours, paper, scenarios))
    return Path(path)


def accuracy_figure(ours: dict, paper: dict | None = None,
                    scenarios: tuple[str, ...] = SCENARIOS) -> bytes:
    """The bytes of :func:`plot_accuracy`'s PNG (for a report's set of files). ``ours`` must
    hold an accuracy of one of the paper's models on one of ``scenarios`` (a ConfigError
    before anything is drawn: a figure of the paper's lines alone would pass for a result),
    or be cells of the paper's models whose runs all failed (``n`` 0, ``failed`` > 0): the
    figure then draws the paper's lines, and says on each panel that none of our runs
    finished."""
    scenarios = tuple(scenarios)
    if not scenarios:
        raise ConfigError("plot_accuracy: scenarios is empty; give one or more of "
                          f"{', '.join(SCENARIOS)} (or 'validation')")
    ours_cells = [cell for key, cell in ours.items() if isinstance(key, tuple) and key
                  and key[0] in PAPER_MODELS and isinstance(cell, dict)]
    # every run failed: the report tables them (counted, never dropped), so the plot is drawn
    failed = sum(cell.get("failed", 0) for cell in ours_cells) if ours_cells and all(
        cell.get("n") == 0 and cell.get("failed") for cell in ours_cells) else 0
    if not failed and not any(s in cell for cell in ours_cells for s in scenarios):
        raise ConfigError(f"plot_accuracy: ours holds no accuracy of the paper's models "
                          f"({', '.join(PAPER_MODELS)}) on {', '.join(scenarios)}, so there is "
                          f"nothing of ours to draw (ours is an aggregate of runs: "
                          f"eqpdenet.app.report.aggregate)")
    plt = import_pyplot("plot_accuracy")
    import matplotlib.ticker

    paper = paper_table() if paper is None else paper
    fig, axes = plt.subplots(1, len(scenarios), figsize=(max(13 * len(scenarios) / 3, 5), 4),
                             sharex=True, squeeze=False)
    axes = axes[0]
    colours = {"eqpdenet": "tab:blue", "fcnn": "tab:orange"}
    for axis, scenario in zip(axes, scenarios, strict=True):
        for kind in PAPER_MODELS:
            for source, table, style in (("paper", paper, "--"), ("ours", ours, "-")):
                keys = sorted((k for k in table if k[0] == kind and scenario in table[k]),
                              key=lambda k: k[1])
                if not keys:
                    continue
                x = [table[k]["params"] for k in keys]
                mean = np.array([table[k][scenario][0] for k in keys])
                std = np.nan_to_num(np.array([table[k][scenario][1] for k in keys]))
                axis.errorbar(x, mean, yerr=std, fmt="o" + style, color=colours[kind], capsize=3,
                              alpha=0.6 if source == "paper" else 1.0,
                              label=f"{MODEL_NAMES[kind]} ({source})")
        if failed:
            axis.text(0.5, 0.5, f"none of our {failed} runs finished\n(all failed): nothing of "
                                f"ours to draw", transform=axis.transAxes, ha="center",
                      va="center", color="tab:red", bbox={"facecolor": "white", "alpha": 0.8})
        axis.set_xscale("log")
        ticks = sorted({table[k]["params"] for table in (ours,) for k in table if table[k]["params"]})
        if failed:  # ours has no count: the paper's lines are the ones to read
            ticks = sorted({paper[k]["params"] for k in paper if k[0] in PAPER_MODELS})
        axis.set_xticks(ticks, [f"{t / 1000:.0f}k" for t in ticks])
        axis.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        axis.set_title(scenario)
        axis.set_xlabel("#params")
        axis.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy (%)")
    if axes[0].get_legend_handles_labels()[0]:  # (none: all failed, off the paper's data)
        axes[0].legend(fontsize=8)
    fig.tight_layout()
    return figure_bytes(fig, dpi=120)


class Described(NamedTuple):
    """What a sweep folder's ``config.toml`` describes: ``keys``, its runs' keys in the sweep's
    order, ``fingerprints``, the base fingerprints its runs may have recorded (the first,
    today's; a benchmark's earlier schemas too), and ``runs``, key -> the configuration it gives
    that run (:class:`~eqpdenet.app.config.ExperimentConfig`; a benchmark's
    ``config.experiment(entry, seed)``), which each run's recorded one must be
    (:func:`sweep_records`); None: not compared."""

    keys: list[str]
    fingerprints: tuple[str, ...]
    runs: dict | None = None


def described_runs(results_dir: Path) -> Described | None:
    """The runs the folder's ``config.toml`` (a ``reproduce`` sweep: models x hidden sizes x
    seeds) describes; None where there is no such configuration to tell."""
    from .config import ReproduceConfig, load_toml
    from .sweeps import grid, run_key
    from .training import fingerprint

    path = Path(results_dir) / "config.toml"
    if not path.is_file():
        return None
    try:
        config = load_toml(ReproduceConfig, path)
    except ConfigError:
        return None
    runs = {run_key(run.model.kind, run.model.hidden, run.train.seed): run
            for run in grid(config)}
    return Described(list(runs), (fingerprint(config.base),), runs)


def missing_runs(results_dir: Path, records: list[dict]) -> list[str] | None:
    """The run keys that the folder's ``config.toml`` (a reproduce sweep) describes and
    ``records`` lack, in the sweep's order; None when there is no such configuration to tell."""
    described = described_runs(results_dir)
    if described is None:
        return None
    present = {paper_run_key(r) for r in records}
    return [key for key in described.keys if key not in present]


def sweep_records(records: list[dict], described: Described | None, source: str = "results", *,
                  key=paper_run_key, command: str = "reproduce",
                  folder: Path | str = "<folder>") -> tuple[list[dict], list[str]]:
    """The records a table is made of, and the keys of those it leaves out.

    With ``described`` (what the folder's ``config.toml`` describes; None: every record is
    tabled), exactly the runs it describes: a record of another key (a seed, hidden size or
    benchmark entry the configuration no longer lists, whose run the sweep keeps: listed again,
    it counts as done) is left out, and named (:func:`left_out_note`). A record whose base
    fingerprint is not one of ``described.fingerprints``, whatever its key, was made under
    another base configuration: a :class:`~eqpdenet.errors.DataFileError` naming the runs, as
    the sweep's ``command`` refuses them (it sets them aside with ``--rerun-changed``; the
    message gives its command line for ``folder``). A record
    without a base fingerprint (written by hand, or before fingerprints) tells nothing to
    compare and is judged by its key alone.

    So is a record of a listed key whose own configuration is not the one ``config.toml`` gives
    that key (``described.runs``; :func:`recipe_differences`, the sweep's comparison): a
    benchmark entry's overrides, which the base fingerprint does not cover, edited since its
    runs were made (the table printed the old runs' numbers under the new recipe), or a run
    file of another recipe put among them. The error names the runs, the first field that
    differs and the two ways out: the sweep's command with ``--rerun-changed``, or
    ``config.toml`` restored.

    Without ``described`` (no ``config.toml``, or one that cannot be read), records of more than
    one base fingerprint are a :class:`~eqpdenet.errors.DataFileError` naming the runs of each:
    nothing tells which configuration is the sweep's, and a cell averaged runs of two.

    With or without ``described``, a tabled record whose own configuration contradicts a field
    its key is made of (``config.model.kind``, ``config.model.hidden``, ``config.train.seed``
    against its ``model``, ``hidden`` and ``seed``: all three of a paper sweep's key, the seed
    of a benchmark's), or whose stored ``key`` is not its run key (:func:`key_differences`), is
    a :class:`~eqpdenet.errors.DataFileError` naming the runs and the first such field: a cell
    averaged it as a run it is not (without ``config.toml``, that went unsaid)."""
    if described is None:
        prints: dict[str, list[str]] = {}
        for record in records:
            recorded = record.get("base_fingerprint")
            if recorded is not None:
                prints.setdefault(str(recorded), []).append(key(record))
        if len(prints) > 1:
            shown = "; ".join(f"base fingerprint {print_}: {_shown(keys)}"
                              for print_, keys in prints.items())
            raise DataFileError(source, f"its runs were made under {len(prints)} base "
                                        f"configurations ({shown}) and no config.toml it can "
                                        f"read says which is the sweep's; a table would average "
                                        f"runs of different configurations. Move the runs of all "
                                        f"but one configuration (their runs/<key>.json and "
                                        f"results.jsonl lines) to another folder")
        _refuse_mislabelled(records, source, key)
        return records, []
    other_base = {}
    for record in records:
        recorded = record.get("base_fingerprint")
        if recorded is not None and recorded not in described.fingerprints:
            other_base.setdefault(recorded, []).append(key(record))
    if other_base:
        runs = sum(len(keys) for keys in other_base.values())
        shown = "; ".join(f"{_shown(keys)} (base fingerprint {print_} recorded, "
                          f"{described.fingerprints[0]} in config.toml)"
                          for print_, keys in other_base.items())
        raise DataFileError(source, f"{runs} run(s) were made under another base configuration "
                                    f"than its config.toml describes: {shown}; a table of them "
                                    f"is not config.toml's. `eqpdenet {command} --config "
                                    f"{folder}/config.toml --out {folder} --rerun-changed` sets "
                                    f"them aside and runs those config.toml lists anew")
    wanted = set(described.keys)
    def differences(record: dict) -> list[str]:
        run = (described.runs or {}).get(key(record))
        return [] if run is None else recipe_differences(record.get("config"), run)

    changed = _runs_by_first_difference(records, differences, key)
    if changed:
        runs, shown = changed
        raise DataFileError(source, f"{runs} run(s) were made with another configuration than "
                                    f"its config.toml gives them: {shown}; a table of them is "
                                    f"not config.toml's. `eqpdenet {command} --config "
                                    f"{folder}/config.toml --out {folder} --rerun-changed` sets "
                                    f"them aside and runs them as config.toml says, or restore "
                                    f"in config.toml the configuration they were made with")
    # a record of a listed key whose configuration is no whole run's (recipe_differences
    # compares none) may still contradict its key
    # by its key, or by its stored key (its run file's name, by which a sweep counts it done:
    # a record stored under a wanted key whose fields give another was neither tabled nor
    # rerun, "incomplete" at every report; round 18 review)
    _refuse_mislabelled([r for r in records if key(r) in wanted or r.get("key") in wanted],
                        source, key)
    return ([r for r in records if key(r) in wanted],
            list(dict.fromkeys(key(r) for r in records if key(r) not in wanted)))


#: The fields of a run record that a run key may be made of, and where its own configuration
#: holds each (``run_experiment`` writes one from the other): (record field, section, field).
KEY_FIELDS = (("model", "model", "kind"), ("hidden", "model", "hidden"), ("seed", "train", "seed"))


def key_differences(record: dict, key=paper_run_key) -> list[str]:
    """Where ``record``'s own configuration (``config``) contradicts a field of :data:`KEY_FIELDS`
    that its run key ``key(record)`` is made of (``"model.kind: 'eqpdenet' recorded, 'fcnn' as
    its model"``; a paper sweep's key is made of all three, a benchmark's,
    ``<entry>-seed<seed>``, of the seed), and where its stored ``key`` (its run file's name, by
    which a sweep counts it done) is not ``key(record)`` (by which a report tables it): every
    such field, [] where none. A field the configuration does not hold (a record written by
    hand) tells nothing and is not compared."""
    config = record.get("config")
    out = []
    for name, section, field in KEY_FIELDS:
        table = config.get(section) if isinstance(config, dict) else None
        if not isinstance(table, dict) or field not in table or table[field] == record.get(name):
            continue
        if _is_key_field(record, name, key):  # its value differs: "8" and 8.5 are not 8
            out.append(f"{section}.{field}: {table[field]!r} recorded, {record.get(name)!r} as "
                       f"its {name}")
    stored = record.get("key")
    if isinstance(stored, str) and stored != key(record):
        out.append(f"key: {stored!r} recorded, {key(record)!r} of its fields")
    return out


def _is_key_field(record: dict, name: str, key) -> bool:
    """Whether the run key ``key(record)`` is made of ``record[name]``: whether another value
    there gives another key. Comparing the keys of the two values instead let ``"8"`` and
    ``8.5`` pass for 8 (the key takes ``int()`` of them), and a value that makes no key at all
    (null, a word, inf) crashed in ``int()`` (round 18 review)."""
    value = record.get(name)
    other = (value + 1 if isinstance(value, int) and not isinstance(value, bool)
             else f"{value}~")
    try:
        return key({**record, name: other}) != key(record)
    except (TypeError, ValueError, OverflowError):  # a field the key reads as a number
        return True


def _refuse_mislabelled(records: list[dict], source: str, key=paper_run_key) -> None:
    """A :class:`~eqpdenet.errors.DataFileError` naming the runs of ``records`` whose key
    contradicts their own configuration or stored key (:func:`key_differences`), as
    :func:`sweep_records` names runs of another configuration than ``config.toml``'s: a table
    would count each in a cell (a model, a hidden size, a seed) that is not its run's."""
    wrong = _runs_by_first_difference(records, lambda record: key_differences(record, key), key)
    if wrong:
        runs, shown = wrong
        raise DataFileError(source, f"{runs} run(s) were made with another configuration than "
                                    f"their record's key gives them: {shown}; a table would "
                                    f"count them as runs they are not. Move them to another "
                                    f"folder (their runs/<key>.json and results.jsonl lines), "
                                    f"or run them anew ({rerun_advice('<key>')})")


def _runs_by_first_difference(records: list[dict], differences, key) -> tuple[int, str] | None:
    """``(runs, shown)`` for the records whose ``differences(record)`` is not empty: how many,
    and their keys grouped by their first difference (``"a-seed0, a-seed1 (train.epochs: 6
    recorded, 12 now)"``); None where there is none."""
    groups: dict[str, list[str]] = {}
    for record in records:
        found = differences(record)
        if found:
            groups.setdefault(found[0], []).append(key(record))
    if not groups:
        return None
    return (sum(len(keys) for keys in groups.values()),
            "; ".join(f"{_shown(keys)} ({first})" for first, keys in groups.items()))


def recipe_differences(recorded, run) -> list[str]:
    """The fields (``"train.epochs: 6 recorded, 12 now"``) where a record's configuration
    ``recorded`` is not ``run`` (an :class:`~eqpdenet.app.config.ExperimentConfig`), compared as
    the sweep compares them (:func:`eqpdenet.app.sweeps.changed_runs`: fields added since at
    their earlier behaviour, those taken from the data through the data's own). [] where the
    record holds no run's whole configuration (its ``model``, ``data`` and ``train`` tables:
    one written by hand, or before records held it), which tells nothing to compare. The data
    file itself is not hashed here (a report reads no data)."""
    from .sweeps import _config_differences

    if not isinstance(recorded, dict) or not all(isinstance(recorded.get(section), dict)
                                                 for section in ("model", "data", "train")):
        return []
    return _config_differences(recorded, run)


def _shown(keys: list[str], count: int = 4) -> str:
    return ", ".join(keys[:count]) + (f", ... ({len(keys)} runs)" if len(keys) > count else "")


def left_out_note(left_out: list[str]) -> str:
    """A sentence naming the runs :func:`sweep_records` left out of the table, else ``""``."""
    if not left_out:
        return ""
    return (f" Not in the table: {len(left_out)} run(s) of the folder that its `config.toml` "
            f"does not list (seeds, hidden sizes or entries since removed; kept, and counted "
            f"as done if listed again): {_shown(left_out)}.")


def nothing_described(left_out: list[str], described: Described, source: str) -> DataFileError:
    """The error for a folder none of whose runs its ``config.toml`` describes."""
    return DataFileError(source, f"none of its {len(left_out)} run(s) ({_shown(left_out)}) is "
                                 f"one its config.toml lists ({_shown(described.keys)}): a table "
                                 f"would have no row")


def read_results(results_dir: Path) -> list[dict]:
    """The records of ``results_dir/results.jsonl``, regenerated first from the run files
    (:func:`~eqpdenet.app.runstore.write_aggregate`: ``runs/`` are the truth, and a sweep
    stopped between a run file and the aggregate left it behind); a
    :class:`FileNotFoundError` where there are none. The caller holds the folder's lock."""
    path = Path(results_dir) / "results.jsonl"
    write_aggregate(results_dir)
    try:
        records = read_jsonl(path)
    except DataFileError as error:  # a line not UTF-8 or not JSON: named, and how to mend it
        raise DataFileError(error.path, f"{error.problem}; {mend_advice(path)}") from None
    if not records:
        raise FileNotFoundError(f"no results in {path}")
    return records


def has_results(results_dir: Path) -> bool:
    """Whether ``results_dir`` holds results to report (``results.jsonl`` or run files): checked
    before a report takes the folder's lock, which would leave its lock file in any folder."""
    results_dir = Path(results_dir)
    return (results_dir / "results.jsonl").is_file() or (results_dir / "runs").is_dir()


def check_outputs(*paths: Path) -> None:
    """Before a report writes anything: each of ``paths`` can be written (a folder in the way,
    a folder that cannot be written into), so that it never writes its table and then fails on
    its plot, leaving a table beside the plot of earlier results."""
    for path in paths:
        check_output_file(path, "the report's output")


class Report(tuple):
    """What :func:`write_report` wrote: ``(table, plot)`` paths; ``runs``, the runs tabled;
    ``missing``, the runs of the sweep without a record (None: no ``config.toml`` to tell);
    ``left_out``, the keys of the folder's runs that its ``config.toml`` does not list
    (:func:`sweep_records`), not tabled."""

    runs: int
    missing: list[str] | None
    left_out: list[str]

    def __new__(cls, table: Path, plot: Path, runs: int, missing: list[str] | None,
                left_out: list[str] = ()):
        report = super().__new__(cls, (table, plot))
        report.runs, report.missing, report.left_out = runs, missing, list(left_out)
        return report

    @property
    def incomplete(self) -> str | None:
        """The line saying which runs are missing, or None."""
        return incomplete_line(self.missing, self.runs + len(self.missing)) if self.missing \
            else None


def incomplete_line(missing: list[str], total: int) -> str:
    shown = ", ".join(missing[:4]) + (", ..." if len(missing) > 4 else "")
    return (f"the sweep is incomplete: {len(missing)} of {total} runs have no result ({shown}); "
            f"its cells average the runs that finished")


def write_report(results_dir: Path) -> Report:
    """``table.md`` and ``accuracy_vs_params.png`` from ``results_dir/results.jsonl``
    (regenerated from the run files first: :func:`read_results`).

    The table holds exactly the runs the folder's ``config.toml`` describes
    (:func:`sweep_records`: others are named in its header, runs of another base configuration
    refused) and says at its top when some of them are missing (:func:`missing_runs`). Runs
    that evaluated none of the paper's scenarios but recorded a validation accuracy (a
    validation study's, ``scenarios = []``) are tabled by validation accuracy
    (:func:`validation_table`), without the paper's numbers; runs with neither are refused, as
    a table of dashes. Both outputs are checked before either is written, and matplotlib is
    imported first (:func:`~eqpdenet.app.files.import_pyplot`): without it nothing is written.
    The table and the plot are rendered, then written as one set
    (:func:`~eqpdenet.app.files.write_set`): a plot that cannot be written (a full disk, the
    file size limit) leaves the previous table and plot as they were, never a new table beside
    the plot of other runs."""
    results_dir = Path(results_dir)
    if results_dir.exists() and not results_dir.is_dir():
        raise DataFileError(results_dir, "a file, not a results folder (the folder that holds "
                                         "results.jsonl)")
    path = results_dir / "results.jsonl"
    if not has_results(results_dir):
        raise FileNotFoundError(f"no results in {path}")
    import_pyplot("the report's plot (accuracy_vs_params.png)")  # or no table without its plot
    table_path, plot_path = results_dir / "table.md", results_dir / "accuracy_vs_params.png"
    with hold(results_dir, "report", create=False):
        records = read_results(results_dir)
        bench = benchmark_records(records)
        if bench:  # its entries' keys read as paper keys: two entries of one model "collided"
            field = next(f for f in BENCHMARK_FIELDS if f in bench[0])
            raise DataFileError(path, f"its runs are a benchmark's (run {bench[0].get('key')!r} "
                                      f"records {field}, as only a benchmark's runs do), not a "
                                      f"paper sweep's: their table is the benchmark's "
                                      f"(eqpdenet.app.benchmark.write_benchmark_report, which "
                                      f"`eqpdenet report` writes for such a folder)")
        records = deduplicate(records, source=str(path))
        described = described_runs(results_dir)
        records, left_out = sweep_records(records, described, str(path), folder=results_dir)
        if not records:
            raise nothing_described(left_out, described, str(path))
        untabled = untabled_note(records, str(path))
        paper = None  # the paper's numbers, drawn beside ours (None: paper_table())
        ours = aggregate(records, str(path))
        scenarios = _scenarios_of(records, str(path))
        missing = None if described is None else missing_runs(results_dir, records)
        check_outputs(table_path, plot_path)
        # a folder without config.toml (made by hand, or copied without it) cites none
        config = ("config in `config.toml`" if (results_dir / "config.toml").is_file()
                  else "no `config.toml`: each run's configuration is in its record")
        runs = (f"From `results.jsonl` beside this file ({len(records)} runs"
                f"{failed_note(records)}; {config}).{subset_note(records)}"
                f"{untabled}{left_out_note(left_out)}")
        if scenarios == ("validation",):
            header = (f"Validation accuracy in percent on {dataset_name(records)}: mean (sample "
                      f"std) over the runs of each cell. These runs evaluated none of the test "
                      f"scenarios the paper's Tables 1-2 report (`scenarios = []` in "
                      f"`config.toml`, as in a validation study, which never uses the test "
                      f"set), so there is nothing of the paper's to compare. " + runs + "\n\n")
            table = validation_table(ours)
        elif on_paper_data(records):
            header = (f"Accuracy in percent on {dataset_name(records)} test, `iso` and `sca`: "
                      f"mean (sample std) over the runs of each cell; paper = Lagrave & Riou "
                      f"2021, Tables 1-2. Δ = ours − paper; Δ/σ in units of the paper's std. "
                      + runs + other_models_note(ours) + "\n\n")
            table = protocol_table(ours)
        else:  # the paper's numbers are ROTMNIST's: set against another data set's, meaningless
            header = (f"Accuracy in percent on {dataset_name(records)} test, `iso` and `sca`: "
                      f"mean (sample std) over the runs of each cell. The paper's columns "
                      f"(Lagrave & Riou 2021, Tables 1-2, on ROTMNIST) are left out: these runs "
                      f"were made on another data set, which the paper's numbers do not "
                      f"describe. " + runs + "\n\n")
            table = protocol_table(ours, compare=False)
            paper = {}
        if missing:
            header = (f"**Incomplete:** {incomplete_line(missing, len(records) + len(missing))}; "
                      f"rerun the sweep's command to finish it.\n\n{header}")
        write_set(results_dir, {table_path.name: (header + table).encode(),
                                plot_path.name: accuracy_figure(ours, paper=paper,
                                                                scenarios=scenarios)})
    return Report(table_path, plot_path, len(records), missing, left_out)


def _scenarios_of(records: list[dict], source: str) -> tuple[str, ...]:
    """What the report tables: the paper's scenarios, or ``("validation",)`` where no
    successful run evaluated any of them but some recorded a validation accuracy; a
    :class:`~eqpdenet.errors.DataFileError` where successful runs have neither (a table of
    dashes, said to be a result)."""
    ok = [r for r in records if r.get("status") == "ok"]
    if not ok or any(s in r["accuracy"] for r in ok for s in SCENARIOS):
        return SCENARIOS
    if any("validation_accuracy" in r for r in ok):
        return ("validation",)
    found = sorted({s for r in ok for s in r["accuracy"]})
    raise DataFileError(source, f"its runs evaluated none of the scenarios the paper's tables "
                                f"report ({', '.join(SCENARIOS)}; they have "
                                f"{', '.join(found) or 'none'}) and recorded no validation "
                                f"accuracy: there is nothing to table")
