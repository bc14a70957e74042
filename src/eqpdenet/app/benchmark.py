"""The robustness benchmark behind ``eqpdenet benchmark``: every model trained with every seed by
the same code on the same data, evaluated on the scenarios and on robustness curves.

Each run (one model, one seed) is trained and evaluated as in :func:`eqpdenet.app.training.
run_experiment`; :func:`robustness` then adds, on the first ``curves.images`` test images, the
accuracy against rotation angle, scale factor and shift distance and the relative change of the
logits under rotations (:mod:`eqpdenet.analysis.robustness`). Runs are written to
``runs/<key>.json`` and aggregated in ``results.jsonl`` as they finish (resumable; a folder
holding another configuration is refused);
:func:`write_benchmark_report` turns them into ``table.md`` and ``robustness.png``.
"""

from __future__ import annotations

import copy
import functools
import json
import math
import os
import statistics
from pathlib import Path

from torch import nn

from ..analysis.robustness import (
    logit_change,
    rotation_curve,
    round_trip_change,
    scale_curve,
    shift_curve,
)
from ..data.datasets import mnist_family
from ..errors import ConfigError, DataFileError
from .config import (
    BenchmarkConfig,
    CurvesConfig,
    ExperimentConfig,
    to_dict,
    to_toml,
)
from .distributed import Executor
from .files import atomic_write, figure_bytes, import_pyplot, read_jsonl_lines, write_set
from .locks import hold
from .plugins import unregistered_hint
from .report import (
    SAME_RUN_FIELDS,
    Described,
    Report,
    benchmark_records,
    check_outputs,
    check_records,
    common_params,
    dataset_name,
    deduplicate,
    failed_note,
    finite_number,
    format_number,
    has_results,
    incomplete_line,
    left_out_note,
    mean_std,
    nothing_described,
    read_results,
    rerun_advice,
    subset_note,
    sweep_records,
)
from .runfolder import check_claim, claiming
from .runstore import load_records, run_file
from .sweeps import (
    SWEEP_FILES,
    check_before_writing,
    check_checkpoints,
    run_sweep,
    set_aside_lacking,
)
from .training import (
    BENCHMARK_LATER_FROM,
    Data,
    fingerprint,
    run_experiment,
    without_inert_fields,
    without_later_fields,
)
from .workers import refuse_while_starting

__all__ = ["benchmark", "check_benchmark_records", "check_curves_for_data", "robustness",
           "summarise", "write_benchmark_report"]


def robustness(model: nn.Module, data: Data, curves: CurvesConfig, seed: int) -> dict:
    """Curves and invariance errors of ``model`` on the first ``curves.images`` test images."""
    images = data["test"].images[:curves.images]
    labels = data["test"].labels[:curves.images]
    return {
        "images": len(images),
        "angles": curves.angles,
        "rotation": rotation_curve(model, images, labels, curves.angles),
        "scales": curves.scales,
        "scale": scale_curve(model, images, labels, curves.scales),
        "shifts": curves.shifts,
        "shift": shift_curve(model, images, labels, curves.shifts, seed=seed),
        "logit_change": {f"{a:g}": logit_change(model, images, a)
                         for a in curves.invariance_angles},
        "round_trip_change": {f"{a:g}": round_trip_change(model, images, a)
                              for a in curves.invariance_angles},
    }


def _run(config, data, *, progress, checkpoint, curves: dict) -> dict:
    """One benchmark run: :func:`run_experiment` plus :func:`robustness` (picklable)."""
    extra = functools.partial(_robustness_of, curves=curves, seed=config.train.seed)
    return run_experiment(config, data, progress=progress, checkpoint=checkpoint,
                          extra_evaluation=extra)


def _robustness_of(model, data, *, curves: dict, seed: int) -> dict:
    return {"robustness": robustness(model, data, CurvesConfig(**curves), seed)}


def benchmark_fingerprint(config: BenchmarkConfig) -> str:
    """What every run of a benchmark folder shares: the base experiment and the curves. Fields
    added to the experiment since (:data:`~eqpdenet.app.training.LATER_FIELDS`) leave it
    unchanged while they keep their earlier behaviour, so a folder recorded before them resumes."""
    base = without_inert_fields(to_dict(config.base))
    return fingerprint({"base": without_later_fields(base, BENCHMARK_LATER_FROM),
                        "curves": to_dict(config.curves)})


#: Schemas of the configuration that recorded benchmark folders were made under: the fields
#: each lacked (added since), whose values its base fingerprint therefore does not cover. The
#: reduced benchmark (results/benchmark, configs/benchmark-cpu.toml) predates the lifted model's
#: table and three pooling options; LATER_FIELDS could not stand for them, since their values
#: now differ from the defaults of their first versions. Each run's own configuration is still
#: compared field by field (sweeps.changed_runs), so accepting such a fingerprint lets a folder
#: resume without letting a changed run pass.
BENCHMARK_SCHEMAS: tuple[tuple[tuple[str, ...], ...], ...] = (
    (("model", "lifted_pde"), ("model", "gcnn", "pool"), ("model", "gcnn", "pool_sigma"),
     ("model", "invariant_pde", "downsample_sigma")),
)


def benchmark_fingerprints(config: BenchmarkConfig) -> tuple[str, ...]:
    """:func:`benchmark_fingerprint`, then the fingerprints the same configuration has under each
    earlier schema (:data:`BENCHMARK_SCHEMAS`): those a benchmark folder may have recorded."""
    base = without_later_fields(without_inert_fields(to_dict(config.base)), BENCHMARK_LATER_FROM)
    prints = [benchmark_fingerprint(config)]
    for lacking in BENCHMARK_SCHEMAS:
        earlier = copy.deepcopy(base)
        for path in lacking:
            node = earlier
            for key in path[:-1]:
                node = node.get(key, {}) if isinstance(node, dict) else {}
            if isinstance(node, dict):
                node.pop(path[-1], None)
        prints.append(fingerprint({"base": earlier, "curves": to_dict(config.curves)}))
    return tuple(dict.fromkeys(prints))


def benchmark(config: BenchmarkConfig, out_dir: Path, *, models: list[str] | None = None,
              jobs: int = 1, executor: Executor | None = None, data_dir=None, cache_dir=None,
              progress: bool = True, echo=print, rerun_changed: bool = False) -> Path:
    """Run every missing (model, seed) of the benchmark into ``out_dir`` (``runs/<key>.json`` and
    their aggregate ``results.jsonl``) with ``executor`` (default: local, ``jobs`` processes).

    ``models`` restricts the run to some of ``config.models`` (the others stay in the config);
    a name given twice is run, and named, once.
    Runs finished under another configuration of the same entry and seed (a recipe changed),
    those of an entry's seeds the configuration no longer lists included, are
    refused, or with ``rerun_changed`` set aside and run again
    (:func:`~eqpdenet.app.sweeps.check_before_writing`), and so are the finished runs of
    ``checkpoint_seeds`` without a checkpoint (:func:`~eqpdenet.app.sweeps.check_checkpoints`).
    """
    refuse_while_starting("benchmark")  # a script's call without a __main__ guard, in a worker
    out_dir = Path(os.path.realpath(out_dir))
    chosen = list(dict.fromkeys(models or config.models))  # each once, in order (as --scenarios)
    for name in chosen:
        config.experiment(name, 0)  # unknown names and bad overrides fail before any work
        for seed in config.seeds:  # and entry names that cannot name a run file
            run_file(Path(out_dir), f"{name}-seed{seed}")
    if jobs < 1:
        raise ConfigError(f"jobs must be >= 1, got {jobs}")
    check_curves_for_data(config, [config.experiment(name, seed) for name in chosen
                                   for seed in config.seeds], data_dir, cache_dir)
    check_claim(out_dir, "benchmark", legacy=SWEEP_FILES)  # before the lock writes into it
    # one writer per results folder; a benchmark refused (its preflight, its data) leaves no
    # folder it made behind it
    with claiming(out_dir, "benchmark", legacy=SWEEP_FILES):
        base_print = benchmark_fingerprint(config)
        # One sweep over every (model, seed): with --jobs N the pool stays full across models
        # (per model, 3 seeds on 2 processes would leave one idle for a whole run).
        runs, entry_of = {}, {}
        for name in chosen:
            for seed in config.seeds:
                key = f"{name}-seed{seed}"
                runs[key], entry_of[key] = config.experiment(name, seed), name
        keep = {key for key, run in runs.items() if run.train.seed in config.checkpoint_seeds}
        # A changed [base] or [curves] is refused naming its fields, or set aside with
        # --rerun-changed, as a changed entry is: the folder never holds two of them. The
        # entries --models leaves out are checked too: config.toml describes their recipes.
        others = {f"{name}-seed{seed}": config.experiment(name, seed)
                  for name in config.models if name not in chosen for seed in config.seeds}
        # So are the finished runs of an entry's seeds the configuration no longer lists: the
        # entry's recipe describes them too (a recipe changed while its seeds shrank kept its
        # old runs beside the new, to be averaged with them when the seed came back).
        others |= _unlisted_seeds(config, load_records(out_dir), set(runs) | set(others))
        lacking = check_checkpoints(out_dir, keep, rerun_changed)
        check_before_writing(runs, out_dir, jobs, executor, keep, rerun_changed=rerun_changed,
                             echo=echo, base_fingerprint=benchmark_fingerprints(config),
                             base={"base": config.base, "curves": config.curves}, others=others,
                             every_kind=True, data_dir=data_dir, cache_dir=cache_dir)
        set_aside_lacking(out_dir, lacking, echo)
        atomic_write(out_dir / "config.toml", to_toml(config).encode())
        run_sweep(f"benchmark {', '.join(chosen)}", runs, out_dir, base_fingerprint=base_print,
                  checkpoint_keys=keep, runner=_run, runner_options={"curves": to_dict(config.curves)},
                  jobs=jobs, executor=executor, data_dir=data_dir, cache_dir=cache_dir,
                  progress=progress, echo=echo, annotate=lambda key: {"entry": entry_of[key]})
    return out_dir / "results.jsonl"


def check_curves_for_data(config: BenchmarkConfig, runs: list[ExperimentConfig],
                          data_dir=None, cache_dir=None) -> None:
    """Before any run: ``config.curves`` against the data of ``runs``, read without loading it
    (:func:`~eqpdenet.data.datasets.dataset_shape`, which refuses what loading would refuse,
    in its words, and loads what its headers cannot tell). A shift of at least the images'
    smaller side (nothing of the image would be left:
    :func:`~eqpdenet.analysis.robustness.shift_curve` refuses it) and a data set whose
    test split keeps no image (the curves and logit changes are measured on test images) are a
    :class:`ConfigError` naming the field. They were found only when the first run had trained,
    and that run was lost. (The other curves' parameters do not depend on the data: any angle,
    any scale factor ``curves.scales`` allows (1e-6 to 1e6); ``curves.images`` beyond the test
    images measures them all, and the records and the table say how many.)"""
    from ..data.datasets import dataset_shape

    checked = set()
    for run in runs:
        data = run.data
        if (data.dataset, data.test_subset) in checked:
            continue
        checked.add((data.dataset, data.test_subset))
        shape = dataset_shape(data.dataset, data_dir, cache_dir)
        _, height, width = shape.image_shape
        side = min(height, width)
        for index, shift in enumerate(config.curves.shifts):
            if abs(shift) >= side:
                raise ConfigError(f"invalid config: curves.shifts[{index}] = {shift:g} pixels "
                                  f"moves the whole {height}x{width} image of {data.dataset} out "
                                  f"of its frame; use shifts below {side}")
        if (data.test_subset or shape.test) < 1:
            raise ConfigError(f"invalid config: curves: {data.dataset} has no test image to "
                              f"measure the curves and logit changes on")


def _unlisted_seeds(config: BenchmarkConfig, records: dict[str, dict],
                    listed: set[str]) -> dict[str, ExperimentConfig]:
    """Key -> configuration of the finished runs in ``records`` of an entry of ``config`` with a
    seed it does not list (``listed``: the keys it does)."""
    unlisted = {}
    for key, record in records.items():
        entry, seed = record.get("entry", record.get("model")), record.get("seed")
        if (key not in listed and entry in config.models and isinstance(seed, int)
                and not isinstance(seed, bool) and key == f"{entry}-seed{seed}"):
            unlisted[key] = config.experiment(entry, seed)
    return unlisted


def benchmark_run_key(record: dict) -> str:
    """The run key of a benchmark record: ``<entry>-seed<seed>`` (the model kind for a record
    from before entries were recorded)."""
    return f"{record.get('entry', record['model'])}-seed{record['seed']}"


#: What two records of one benchmark run must agree on to be the same run: the paper's fields
#: and the curves.
SAME_BENCHMARK_RUN_FIELDS = (*SAME_RUN_FIELDS, "robustness")


def _ordered_union(lists) -> list:
    return list(dict.fromkeys(item for values in lists for item in values))


def summarise(records: list[dict], source: str = "results") -> dict[str, dict]:
    """Per entry: parameters, seeds, the failed runs (``failed``: their seeds), mean and std of
    every accuracy over the runs that have it (``covered``: how many), training minutes, curves,
    averaged as the paper's report averages (:func:`~eqpdenet.app.report.mean_std`).
    An entry whose runs all failed is kept, with no numbers. Curves of one entry recorded on
    other axes (angles, scales, shifts) cannot be averaged point by point, and runs of one
    entry that disagree on ``params`` are not runs of one model
    (:func:`~eqpdenet.app.report.common_params`): a :class:`~eqpdenet.errors.DataFileError`
    naming them (``source``: the file)."""
    by_entry: dict[str, list[dict]] = {}
    for record in records:
        by_entry.setdefault(record.get("entry", record["model"]), []).append(record)
    summary = {}
    for entry, found in by_entry.items():
        runs = sorted((r for r in found if r.get("status") == "ok"), key=lambda r: r["seed"])
        scenarios = _ordered_union(r["accuracy"] for r in runs)
        item = {"params": common_params(runs, entry, source, key=benchmark_run_key),
                "seeds": [r["seed"] for r in runs],
                "failed": sorted(r["seed"] for r in found if r.get("status") != "ok"),
                "train_minutes": mean_std([r["train_seconds"] / 60 for r in runs]),
                "cpu": sorted({r.get("environment", {}).get("cpu_capability") or "–" for r in runs}),
                "accuracy": {s: mean_std([r["accuracy"][s] for r in runs if s in r["accuracy"]])
                             for s in scenarios},
                "covered": {s: sum(s in r["accuracy"] for r in runs) for s in scenarios}}
        validation = [r["validation_accuracy"] for r in runs if "validation_accuracy" in r]
        if validation:
            item["validation"] = mean_std(validation)
        with_curves = [r for r in runs if "robustness" in r]
        curves = [r["robustness"] for r in with_curves]
        if curves:
            first = curves[0]
            for kind, axis in (("rotation", "angles"), ("scale", "scales"), ("shift", "shifts")):
                other = next((r for r in with_curves if r["robustness"][axis] != first[axis]), None)
                if other is not None:
                    raise DataFileError(source, f"the runs of {entry} recorded their curves on "
                                                f"other {axis}: {first[axis]} "
                                                f"({benchmark_run_key(with_curves[0])}), "
                                                f"{other['robustness'][axis]} "
                                                f"({benchmark_run_key(other)}); they are not runs "
                                                f"of one configuration: keep those of one")
                item[kind] = (first[axis], [statistics.fmean(c[kind][i] for c in curves)
                                            for i in range(len(first[axis]))])
            item["logit_change"] = {a: mean_std([c["logit_change"][a] for c in curves])
                                    for a in first["logit_change"]
                                    if all(a in c["logit_change"] for c in curves)}
            if all("round_trip_change" in c for c in curves):
                item["round_trip_change"] = {
                    a: mean_std([c["round_trip_change"][a] for c in curves])
                    for a in first["round_trip_change"]
                    if all(a in c["round_trip_change"] for c in curves)}
            item["curve_images"] = first["images"]
            item["curve_runs"] = len(curves)
        summary[entry] = item
    return summary


def _fmt(value: tuple[float, float], digits: int = 1) -> str:
    """``mean (std)`` as the paper's report writes a cell
    (:func:`~eqpdenet.app.report.format_number`: a tie rounded half away from zero)."""
    mean, std = value
    if math.isnan(mean):
        return "–"
    spec = f".{digits}f"
    return format_number(mean, spec) + (f" ({format_number(std, spec)})"
                                        if not math.isnan(std) else "")


def _part(covered: int, runs: int) -> str:
    """`` [k of n runs]`` where a number averages only some of an entry's runs."""
    return f" [{covered} of {runs} runs]" if covered < runs else ""


#: Column order of the scenarios in the table (others follow, alphabetically).
SCENARIO_ORDER = ("test", "iso", "sca", "rot", "shift")


def benchmark_table(summary: dict[str, dict], noted: set[str] | frozenset = frozenset()) -> str:
    """Markdown: accuracy per scenario (mean (std) over seeds), curves' spread, invariance. The
    columns are every scenario of any entry ("–" where an entry has none); the seeds column
    counts an entry's failed runs as ``(+N failed)``, and an entry whose runs all failed has a
    row of "–". The rot90 logit change of the entries in ``noted`` is marked ``[k]``, the k-th
    of them, for a footnote (:func:`_quarter_turn_notes`)."""
    marks = {entry: f" [{k}]" for k, entry in enumerate(
        (entry for entry in summary if entry in noted), start=1)}
    found = _ordered_union(item["accuracy"] for item in summary.values())
    scenarios = [s for s in SCENARIO_ORDER if s in found] + sorted(set(found) - set(SCENARIO_ORDER))
    # cells as one list: with no scenario, a join of none left an empty header cell
    header = ["model", "params", "seeds", *scenarios, "angle curve: min–max",
              "logit change rot90", "logit change 37°", "37° and back", "train min", "cpu"]
    lines = ["| " + " | ".join(header) + " |",
             "|---|---:|---:|" + "---:|" * len(scenarios) + "---:|---:|---:|---:|---:|---|"]
    for entry, item in summary.items():
        runs = len(item["seeds"])
        failed = len(item.get("failed", []))
        cells = [entry, "–" if item["params"] is None else f"{item['params']:,}",
                 f"{runs}" + (f" (+{failed} failed)" if failed else "")]
        cells += [_fmt(item["accuracy"][s]) + _part(item["covered"].get(s, runs), runs)
                  if s in item["accuracy"] else "–" for s in scenarios]
        if "rotation" in item:
            curve = item["rotation"][1]
            # a run recorded with no angle (curves.angles = [] before it was refused) has none
            cells.append(f"{format_number(min(curve))}–{format_number(max(curve))}"
                         + _part(item["curve_runs"], runs) if curve else "–")
            changes = item["logit_change"]
            cells += [format_number(changes[a][0], ".1e") + (marks.get(entry, "") if a == "90"
                                                              else "")
                      if a in changes else "–" for a in ("90", "37")]
            back = item.get("round_trip_change", {})
            cells.append(format_number(back["37"][0], ".1e") if "37" in back else "–")
        else:
            cells += ["–", "–", "–", "–"]
        cells.append("–" if not runs else format_number(item["train_minutes"][0]))
        cells.append(", ".join(item["cpu"]) or "–")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_robustness(summary: dict[str, dict], path: Path, data: str = "ROTMNIST") -> Path:
    """PNG: accuracy against rotation angle, scale factor and shift (mean over seeds); ``data``,
    the data set's name, in the title (:func:`robustness_figure`), written atomically to
    ``path``."""
    atomic_write(Path(path), robustness_figure(summary, data))
    return Path(path)


def robustness_figure(summary: dict[str, dict], data: str = "ROTMNIST") -> bytes:
    """The bytes of :func:`plot_robustness`'s PNG (for the report's set of files)."""
    plt = import_pyplot("plot_robustness")
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    panels = (("rotation", "rotation angle (degrees)"), ("scale", "scale factor"),
              ("shift", "shift (pixels)"))
    for axis, (kind, label) in zip(axes, panels, strict=True):
        for entry, item in summary.items():
            if kind in item:
                # joined from left to right: curves.angles may be in any order ([0, 90, -90]
                # zig-zagged back across the panel)
                x, y = _by_x(*item[kind])
                # matplotlib leaves a label starting with "_" out of the legend: a zero-width
                # space before it keeps an entry named so (a valid run key) in it
                axis.plot(x, y, "o-", ms=3, lw=1.2,
                          label="\u200b" + entry if entry.startswith("_") else entry)
        axis.set_xlabel(label)
        axis.set_ylabel("accuracy (%)")
        axis.grid(alpha=0.3)
    images = next((item["curve_images"] for item in summary.values() if "curve_images" in item),
                  None)
    if images is not None:
        what = "digits" if data == "ROTMNIST" else "images"
        fig.suptitle(f"Robustness on the first {images:,} {data} test {what} (mean over seeds)")
    angles = [a for item in summary.values() if "rotation" in item for a in item["rotation"][0]]
    if angles:  # else matplotlib's own ticks (no run recorded an angle)
        axes[0].set_xticks(_angle_ticks(angles))
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    return figure_bytes(fig)


def _by_x(x: list[float], y: list[float]) -> tuple[list[float], list[float]]:
    """A curve's points ``(x, y)`` sorted by ``x`` (ties keep their order)."""
    order = sorted(range(len(x)), key=lambda i: x[i])
    return [x[i] for i in order], [y[i] for i in order]


def _angle_ticks(angles: list[float]) -> list[int]:
    """The ticks of the rotation panel: multiples of 45 degrees from the largest one at or below
    the smallest angle to the smallest one at or above the largest (``0 ... 360`` for the default
    ``0 ... 345``), every 90, 180, 360, ... degrees instead where that would be more than 9
    ticks."""
    # from the data: fixed at 0-360, a negative angle or one beyond a turn had no tick
    low, high, step = min(angles), max(angles), 45
    while (math.ceil(high / step) - math.floor(low / step)) > 8:
        step *= 2
    return [step * k for k in range(math.floor(low / step), math.ceil(high / step) + 1)]


def is_benchmark_folder(folder: Path) -> bool:
    """Whether ``folder`` was written by ``eqpdenet benchmark``: its marker; else (a folder made
    before markers, as the committed results/benchmark*) a record carrying a field only a
    benchmark's carry (:func:`~eqpdenet.app.report.benchmark_records`); else a ``config.toml``
    that is a benchmark configuration. The records come before the configuration, which may not
    be readable here (a plugin's model kind not imported): taken for a paper sweep's, such a
    benchmark's runs were refused under a wrong cause or tabled against the paper's."""
    from .config import load_toml
    from .runfolder import folder_kind

    folder = Path(folder)
    if folder_kind(folder) == "benchmark":
        return True
    if _has_benchmark_record(folder):
        return True
    try:
        load_toml(BenchmarkConfig, folder / "config.toml")
    except (ConfigError, OSError, ValueError):
        return False
    return True


def _has_benchmark_record(folder: Path) -> bool:
    """Whether a run file or a line of ``results.jsonl`` of ``folder`` is a benchmark's record,
    read without the folder's lock (recognition only: the report reads them again under it); a
    file that cannot be read tells nothing (the report names it)."""
    runs = folder / "runs"
    for path in sorted(runs.glob("*.json")) if runs.is_dir() else []:
        try:
            if benchmark_records([json.loads(path.read_text(encoding="utf-8"))]):
                return True
        except (OSError, ValueError):
            continue
    try:
        return bool(benchmark_records(value for _, _, value in
                                      read_jsonl_lines(folder / "results.jsonl")))
    except (OSError, ValueError):
        return False


def described_benchmark_runs(out_dir: Path) -> Described | None:
    """The runs (``<entry>-seed<seed>``, in the configuration's order), base fingerprints
    (:func:`benchmark_fingerprints`) and each run's configuration (``config.experiment(entry,
    seed)``: the entry's recipe, which the base fingerprint does not cover) the folder's
    ``config.toml`` describes; None without a benchmark configuration
    (:func:`benchmark_config_problem` says why)."""
    config, _ = _benchmark_config(out_dir)
    if config is None:
        return None
    runs = {f"{name}-seed{seed}": config.experiment(name, seed)
            for name in config.models for seed in config.seeds}
    return Described(list(runs), benchmark_fingerprints(config), runs)


def benchmark_config_problem(out_dir: Path) -> str | None:
    """Why the folder's ``config.toml`` describes no benchmark's runs, in one line naming the
    file (missing; or the :class:`~eqpdenet.errors.ConfigError` reading it gives, e.g. a model
    kind, data set or scenario that a plugin registers and this process has not imported, with
    that hint); None where it describes them."""
    return _benchmark_config(out_dir)[1]


def _benchmark_config(out_dir: Path) -> tuple[BenchmarkConfig | None, str | None]:
    from .config import file_prefix, load_toml

    path = Path(out_dir) / "config.toml"
    if not path.is_file():
        return None, f"{path} is missing"
    try:
        return load_toml(BenchmarkConfig, path), None
    except (ConfigError, OSError, ValueError) as error:
        return None, (f"{path} cannot be read as a benchmark configuration: "
                      f"{unregistered_hint(error).removeprefix(file_prefix(path))}")


def missing_benchmark_runs(out_dir: Path, records: list[dict]) -> list[str] | None:
    """The run keys (``<entry>-seed<seed>``) that the folder's ``config.toml`` lists and
    ``records`` lack, in the configuration's order; None without a benchmark configuration."""
    described = described_benchmark_runs(out_dir)
    if described is None:
        return None
    present = {r.get("key") for r in records}
    return [key for key in described.keys if key not in present]


def _image_word(records: list[dict]) -> str:
    """What a table calls the test images: digits on MNIST's family
    (:func:`~eqpdenet.data.datasets.mnist_family`: not a built-in name a plugin registered
    anew), else images."""
    specs = {((r.get("config") or {}).get("data") or {}).get("dataset", "rotmnist")
             for r in records}
    return "digits" if all(mnist_family(spec) for spec in specs) else "images"


def _quarter_turn_notes(summary: dict[str, dict], records: list[dict]) -> dict[str, str]:
    """Entry -> a footnote for each entry whose rot90 logit change the table shows, built to
    be invariant under quarter turns (:attr:`quarter_turn_invariant` at a size that every
    pooling halves evenly) but not at the size it ran on (a 2x2 pooling meets an odd size: a
    G-CNN on 25x25 images): its rot90 column is then a real change, not rounding."""
    from .config import ModelConfig, build_model, from_dict

    notes = {}
    for entry, item in summary.items():
        if "90" not in item.get("logit_change", {}):
            continue
        found = next((r for r in records if r.get("entry", r.get("model")) == entry
                      and r.get("status") == "ok" and isinstance((r.get("config") or {})
                                                                 .get("model"), dict)), None)
        if found is None:
            continue
        try:
            config = from_dict(ModelConfig, found["config"]["model"])
            size = config.image_size
            if getattr(build_model(config), "quarter_turn_invariant", False):
                continue
            config.image_size = 64  # halved evenly by up to 6 poolings
            if not getattr(build_model(config), "quarter_turn_invariant", False):
                continue  # never invariant (a CNN, a perceptron): nothing to say
        except Exception:  # noqa: BLE001 - a model that cannot be built here: nothing said
            continue
        notes[entry] = (f"[{len(notes) + 1}] {entry}: not invariant under quarter turns at "
                        f"{size}x{size} (`quarter_turn_invariant` is False there: a 2x2 pooling "
                        f"meets a map of odd size, and a quarter turn moves the row and column "
                        f"it drops), so its rot90 logit change is the model's own, not "
                        f"rounding.")
    return notes


def _finite(value, *, integer: bool = False) -> bool:
    """Whether ``value`` is a finite number (an ``int`` where ``integer``) as JSON holds one:
    not a bool, not a string of digits."""
    return finite_number(value) and (not integer or isinstance(value, int))


def _number(value, *, integer: bool = False) -> bool:
    """Whether ``value`` is a :func:`_finite` number >= 0."""
    return _finite(value, integer=integer) and value >= 0


def _value(table: dict, field: str) -> str:
    """``table[field]`` as a message shows it, ``missing`` where there is none."""
    return repr(table[field]) if field in table else "missing"


def _record_problem(record: dict) -> str | None:
    """The first field of a benchmark record that :func:`write_benchmark_report` reads and that
    is not what a benchmark run writes (``"train_seconds is '12', not a number of seconds"``),
    None where every one is. Beyond :func:`~eqpdenet.app.report.check_records`'s fields: the
    entry, the configuration's data (subsets, data set), and a successful run's times, CPU
    record and curves (each curve as long as its axis, every number finite)."""
    entry = record.get("entry")
    if "entry" in record and not isinstance(entry, str):
        return f"entry is {entry!r}, not an entry's name"
    config = record.get("config")
    if "config" in record and not isinstance(config, dict):
        return f"config is {config!r}, not a run's configuration (a table)"
    data = (config or {}).get("data")
    if data is not None and not isinstance(data, dict):
        return f"config.data is {data!r}, not a table"
    for field in ("train_subset", "test_subset"):
        value = (data or {}).get(field)
        if value is not None and not _number(value, integer=True):
            return f"config.data.{field} is {value!r}, not a number of images"
    if not isinstance((data or {}).get("dataset", ""), str):
        return f"config.data.dataset is {data['dataset']!r}, not a data set's name"
    if record["status"] != "ok":
        return None
    for field in ("train_seconds", "eval_seconds"):
        if (field in record or field == "train_seconds") and not _number(record.get(field)):
            return f"{field} is {_value(record, field)}, not a finite number of seconds"
    environment = record.get("environment", {})
    if not isinstance(environment, dict) or not isinstance(
            environment.get("cpu_capability", ""), str | None):
        return f"environment is {environment!r}, not a table with a cpu_capability text"
    return None if "robustness" not in record else _curves_problem(record["robustness"])


def _curves_problem(curves) -> str | None:
    """:func:`_record_problem` of a run's ``robustness`` (what :func:`robustness` writes)."""
    if not isinstance(curves, dict):
        return f"robustness is {curves!r}, not a table of curves"
    if not _number(curves.get("images"), integer=True):
        return f"robustness.images is {_value(curves, 'images')}, not a number of images"
    for kind, axis in (("rotation", "angles"), ("scale", "scales"), ("shift", "shifts")):
        for field in (axis, kind):
            values = curves.get(field)
            if not isinstance(values, list) or not all(_finite(v) for v in values):
                return (f"robustness.{field} is {_value(curves, field)}, not a list of finite "
                        f"numbers")
        if len(curves[kind]) != len(curves[axis]):
            return (f"robustness.{kind} has {len(curves[kind])} points for the "
                    f"{len(curves[axis])} of robustness.{axis}")
    for field in ("logit_change", "round_trip_change"):
        if field not in curves and field == "round_trip_change":  # older records lack it
            continue
        values = curves.get(field)
        if not isinstance(values, dict) or not all(_finite(v) for v in values.values()):
            return (f"robustness.{field} is {_value(curves, field)}, not a table of finite "
                    f"changes by angle")
    return None


def check_benchmark_records(records: list[dict], out_dir: Path) -> list[dict]:
    """``records`` (of ``out_dir/results.jsonl``, as :func:`~eqpdenet.app.report.read_results`
    returns them) if each is a run record the benchmark's report can use
    (:func:`~eqpdenet.app.report.check_records`, then every further field the report reads:
    :func:`_record_problem`), else a :class:`~eqpdenet.errors.DataFileError` in one line naming
    the file (the run's ``runs/<key>.json``, or the line of ``results.jsonl`` of a run without
    one) and the field, with how to rerun the run. A missing ``train_seconds``, a ``"config":
    null``, a curve shorter than its axis ended in a KeyError, AttributeError or IndexError; a NaN
    time printed "nan" in the table."""
    out_dir = Path(out_dir)
    source = out_dir / "results.jsonl"
    check_records(records, str(source))
    lines = [number for number, _, _ in read_jsonl_lines(source)]
    for number, record in zip(lines, records, strict=False):
        problem = _record_problem(record)
        if problem is None:
            continue
        key = record.get("key") if isinstance(record.get("key"), str) else None
        try:
            path = run_file(out_dir, key) if key else None
        except ConfigError:  # a key that names no file has no run file
            path = None
        where = path if path is not None and path.is_file() else f"{source}:{number}"
        raise DataFileError(where, f"{problem}; the report cannot table it "
                                   f"({rerun_advice(key or benchmark_run_key(record))})")
    return records


def _by_entry(pairs, describe) -> str:
    """``describe(value)`` of the one value of the ``(entry, value)`` pairs; where entries
    differ, each value's, naming its entries (``the whole test set (a) or the first 10 test
    digits (b)``); ``""`` for no pair."""
    groups: dict = {}
    for entry, value in pairs:
        entries = groups.setdefault(value, [])
        if entry not in entries:
            entries.append(entry)
    if len(groups) == 1:
        return describe(next(iter(groups)))
    return " or ".join(f"{describe(value)} ({', '.join(entries)})"
                       for value, entries in sorted(groups.items()))


def _cpu_hours(records: list[dict]) -> str:
    seconds = sum(r.get("train_seconds", 0.0) + r.get("eval_seconds", 0.0) for r in records
                  if r.get("status") == "ok")
    return f"; training and evaluation {format_number(seconds / 3600)} hours, the runs' times " \
           f"summed" if seconds else ""


#: How an incomplete benchmark folder is finished (its table.md, ``report`` and ``benchmark``
#: say it alike): a command with ``--models`` runs only the entries it names, so rerunning it as
#: it was finishes nothing.
FINISH_ADVICE = "rerun the benchmark's command, without --models if it named some, to finish it"


def write_benchmark_report(out_dir: Path) -> Report:
    """``table.md`` and ``robustness.png`` from ``out_dir/results.jsonl`` (regenerated from the
    run files first: :func:`~eqpdenet.app.report.read_results`), under the folder's lock; the
    table's first line says so when runs of the folder's configuration have no result yet
    (``Report.missing``). The table holds exactly the runs the folder's ``config.toml``
    describes (:func:`~eqpdenet.app.report.sweep_records`: runs of entries or seeds it no
    longer lists are named in the header, runs of another base or curves refused).
    Each run (``<entry>-seed<seed>``) counts once (:func:`~eqpdenet.app.report.deduplicate`: a
    run recorded with two outcomes, or with numbers that are not finite, is refused); failed
    runs are counted and named (:func:`benchmark_table`). Both outputs are checked before
    either is written, and matplotlib is imported first
    (:func:`~eqpdenet.app.files.import_pyplot`): without it nothing is written. The table and
    the plot are rendered, then written as one set (:func:`~eqpdenet.app.files.write_set`):
    a plot that cannot be written leaves the previous table and plot as they were."""
    out_dir = Path(out_dir)
    source = str(out_dir / "results.jsonl")
    if not has_results(out_dir):
        raise FileNotFoundError(f"no results in {source}")
    import_pyplot("the benchmark's plot (robustness.png)")  # or no table without its plot
    table, plot = out_dir / "table.md", out_dir / "robustness.png"
    with hold(out_dir, "report", create=False):
        # checked (a line that is not a run record is named, not a crash here), and each run
        # counted once, as the paper's report does: a record written twice by two writers is
        # one run, and a run recorded with two outcomes is refused rather than averaged
        records = deduplicate(check_benchmark_records(read_results(out_dir), out_dir), source,
                              key=benchmark_run_key, fields=SAME_BENCHMARK_RUN_FIELDS)
        described = described_benchmark_runs(out_dir)
        records, left_out = sweep_records(records, described, source, key=benchmark_run_key,
                                          command="benchmark", folder=out_dir)
        if not records:
            raise nothing_described(left_out, described, source)
        summary = summarise(records, source)
        missing = None if described is None else missing_benchmark_runs(out_dir, records)
        check_outputs(table, plot)
        name = dataset_name(records)
        # ROTMNIST's tables (the committed ones) as they were: their data set goes unnamed
        of, what = ("", "digits") if name == "ROTMNIST" else (f" of {name}", _image_word(records))
        # data.test_subset 0 is the whole test set (subset_note's reading), not "the first 0"
        where = _by_entry(((r.get("entry", r["model"]),
                            ((r.get("config") or {}).get("data") or {}).get("test_subset") or 0)
                           for r in records),
                          lambda n: f"the first {n:,} test {what}{of}" if n
                          else f"the whole test set{of}")
        curves = _by_entry(((r.get("entry", r["model"]), r["robustness"]["images"])
                            for r in records if r["status"] == "ok" and "robustness" in r),
                           lambda n: f"the first {n:,} test {what}") or f"the first few test {what}"
        cited = ("see `config.toml`" if (out_dir / "config.toml").is_file()
                 else "no `config.toml`: each run's configuration is in its record")
        header = (f"Accuracy in percent, mean (sample std) over seeds; scenarios on {where}, "
                  f"curves and logit changes (relative: ||l(g f) − l(f)|| / ||l(f)|| over the "
                  f"batch) on {curves} ({cited}). From "
                  f"`results.jsonl` beside this file ({len(records)} runs"
                  f"{failed_note(records, benchmark_run_key)}{_cpu_hours(records)})."
                  f"{subset_note(records, ['train_subset'])} Train min: one run's training, "
                  f"mean over seeds, on the CPU of column cpu (PyTorch's vector capability "
                  f"there, as recorded; – where the run predates the record): one seed repeats "
                  f"its numbers on one kind of CPU only.{left_out_note(left_out)}\n\n")
        if missing:
            header = (f"**Incomplete:** {incomplete_line(missing, len(records) + len(missing))}; "
                      f"{FINISH_ADVICE}.\n\n{header}")
        notes = _quarter_turn_notes(summary, records)
        write_set(out_dir, {table.name: (header + benchmark_table(summary, set(notes)) + "\n"
                                         + "".join(f"\n{line}\n"
                                                   for line in notes.values())).encode(),
                            plot.name: robustness_figure(summary, dataset_name(records))})
    return Report(table, plot, len(records), missing, left_out)
