"""Why the deep invariant-PDE model is fragile to shifts and resampling: a controlled experiment.

The benchmark's ``invariant-pde`` model (its recipe from ``configs/benchmark-cpu.toml``, fewer
epochs) is trained once per *cell* of a 2x2x2 factorial design of its three suspect parts:

* ``stencil``: the jets' derivatives by ``isotropic`` 3x3 finite differences, or ``gaussian``
  derivatives of scale ``sigma = 1`` pixel (a low-pass built into every derivative);
* ``downsample``: between stages ``pool`` (2x2 average) or ``blur`` (Gaussian low-pass of std 1
  pixel, then one sample per 2x2 cell: :class:`~eqpdenet.models.pooling.AntiAliasedDownsample`);
* ``boundary``: the jets' and low-pass's boundary, ``zeros`` or ``replicate``.

Everything else (architecture, data, seed, epochs, learning rate) is the same in every cell.
Each trained model is measured on the validation split (the last 2,000 training digits; choices
are made on validation, never on test): clean accuracy, the benchmark's shift curve (random
directions: sub-pixel moves, so bilinear resampling), a whole-pixel shift curve along the axes
(no resampling), accuracy at 15, 30, 37 and 45 degrees (the model is exactly rot90-invariant,
so 60 and 75 degrees of the benchmark's angle curve are -30 and -15), and the relative logit change
under 37 degrees and under 37 degrees and back (resampling alone), all from
:mod:`eqpdenet.analysis.robustness`. Main effects and interactions of the factors are tabulated::

    OMP_NUM_THREADS=1 EQPDENET_DATA=/work/shared/data python benchmarks/fragility.py --out results/fragility
    python benchmarks/fragility.py --out results/fragility --cells isotropic-pool-zeros --seeds 1

writes ``OUT/log.jsonl`` (one line per cell and seed, appended atomically), ``table.md``
(rewritten from the log after every cell) and the checkpoints (``checkpoints/CELL-seedS.pt``).
Resumable: a killed run is restarted by the same command and trains only the cells missing from
the log (the cell that was training when killed starts again from its first epoch). ``--out``
has no default, so that a trial run never lands in the committed ``results/fragility``; and a
folder holds one number of epochs (its checkpoints are named by cell and seed): another
``--epochs`` there, training or ``--table-only``, is refused.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import time
from pathlib import Path

import torch
from _args import check_output, nonnegative_int, positive_int, run

from eqpdenet.analysis.equivariance import Transform
from eqpdenet.analysis.predictions import logits_by_image
from eqpdenet.analysis.robustness import (
    accuracy_under,
    axis_shift_curve,
    logit_change,
    rotation_curve,
    round_trip_change,
    shift_curve,
)
from eqpdenet.app.config import BenchmarkConfig, apply_overrides, load_toml
from eqpdenet.app.files import append_jsonl, atomic_write, read_jsonl
from eqpdenet.app.locks import hold
from eqpdenet.app.training import fingerprint, load_checkpoint, prepare_data, run_experiment
from eqpdenet.errors import ConfigError

#: The factors and their two levels (the first is the benchmark model's).
FACTORS = {"stencil": ("isotropic", "gaussian"), "downsample": ("pool", "blur"),
           "boundary": ("zeros", "replicate")}
CELLS = {"-".join(levels): dict(zip(FACTORS, levels, strict=True))
         for levels in itertools.product(*FACTORS.values())}
#: Non-quarter angles: the benchmark curve's in one eighth of a turn (the model is exactly
#: rot90-invariant, so 60 and 75 degrees are -30 and -15), and 37.
ANGLES = [15.0, 30.0, 37.0, 45.0]
SHIFTS = [1, 2, 3, 4]
ROUND_TRIP_DEGREES = 37.0


def cell_config(benchmark: BenchmarkConfig, cell: dict, epochs: int, seed: int,
                extra: list[str]):
    """The benchmark's invariant-pde experiment with the cell's factors, on the validation split
    (``extra``: further overrides, e.g. a small training subset for a smoke run)."""
    recipe = [o for o in benchmark.models["invariant-pde"] if not o.startswith("train.epochs=")]
    factors = [f"model.invariant_pde.{name}='{level}'" for name, level in cell.items()]
    return apply_overrides(benchmark.base, [
        *recipe, *factors, "data.validation=2000", "scenarios=[]", f"train.epochs={epochs}",
        f"train.seed={seed}", *extra])


def basic(model, images, labels, seed: int) -> dict:
    """The benchmark's measures: clean accuracy, angle and shift curves, logit changes."""
    clean = accuracy_under(model, images, labels, lambda x: x)
    return {
        "images": len(images),
        "clean": clean,
        "angles": ANGLES, "rotation": rotation_curve(model, images, labels, ANGLES),
        "shifts": [0, *SHIFTS],
        "shift": [clean, *shift_curve(model, images, labels, [float(s) for s in SHIFTS],
                                      seed=seed)],
        "axis_shift": [clean, *axis_shift_curve(model, images, labels, SHIFTS, seed=seed)],
        "logit_change_37": logit_change(model, images, 37.0),
        "round_trip_37": round_trip_change(model, images, ROUND_TRIP_DEGREES),
    }


def per_image(model, images, labels, seed: int) -> dict:
    """What the batch-wide relative change hides: the per-image logit norms (a few images whose
    logits explode dominate ``||l(g f) - l(f)|| / ||l(f)||``), the median over images of each
    image's relative change under the round trip, and how many predictions it keeps.

    An image on which the model's PDE blows up, before or after the round trip, has no logits
    (:func:`eqpdenet.analysis.predictions.logits_by_image`): it is left out of the norms and
    changes (as the benchmark's logit changes leave it out), counts as a prediction not kept,
    and is counted in ``round_trip_37_no_prediction``."""
    logits, failed = logits_by_image(model, images, 500)
    back_images = Transform.rotation(-ROUND_TRIP_DEGREES)(
        Transform.rotation(ROUND_TRIP_DEGREES)(images))
    back, back_failed = logits_by_image(model, back_images, 500)
    both = ~(failed | back_failed)
    logits, kept_back = logits[both], back[both]
    norms = logits.norm(dim=1)
    kept = int((kept_back.argmax(1) == logits.argmax(1)).sum())
    return {"logit_norm_median": float(norms.median()), "logit_norm_max": float(norms.max()),
            "round_trip_37_median": float(((kept_back - logits).norm(dim=1) / norms).median()),
            "round_trip_37_kept": 100.0 * kept / len(images),
            "round_trip_37_no_prediction": int((~both).sum())}


#: Groups of measures, each with its keys: a logged run missing a group's key is measured again
#: (that group only) from its checkpoint.
MEASURES = {basic: {"clean", "rotation", "shift", "axis_shift", "logit_change_37",
                    "round_trip_37"},
            per_image: {"logit_norm_median", "logit_norm_max", "round_trip_37_median",
                        "round_trip_37_kept"}}


def measure(model, data, seed: int, have: dict | None = None) -> dict:
    """Every fragility measure of ``model`` on the validation split (2,000 digits); the groups
    of :data:`MEASURES` whose keys ``have`` holds already are kept, not measured again."""
    images, labels = data["validation"].images, data["validation"].labels
    out = dict(have or {})
    for group, keys in MEASURES.items():
        if not keys <= set(out):
            out.update(group(model, images, labels, seed))
    return out


def missing(record: dict) -> bool:
    return not set().union(*MEASURES.values()) <= set(record["fragility"])


def remeasure(log: Path, stale: list[dict], data, checkpoints: Path) -> None:
    """Complete logged runs' measures from their checkpoints (after new measures were added)
    and rewrite the log (atomically)."""
    for record in stale:
        model, _, _ = load_checkpoint(checkpoints / f"{record['cell']}-seed{record['seed']}.pt")
        record["fragility"] = measure(model, data, record["seed"], record["fragility"])
        print(f"measured again: {record['cell']} seed {record['seed']}", flush=True)
    by_key = {(r["cell"], r["seed"], r["epochs"]): r for r in stale}
    records = [by_key.get((r["cell"], r["seed"], r["epochs"]), r) for r in read_jsonl(log)]
    atomic_write(log, "".join(json.dumps(r, sort_keys=True) + "\n" for r in records).encode())


def derived(record: dict) -> dict[str, float]:
    """The numbers the tables compare (accuracies in percent, changes relative)."""
    m = record["fragility"]
    return {
        "clean": m["clean"],
        "shift 4 loss": m["shift"][0] - m["shift"][-1],
        "shift 1-4 loss": m["shift"][0] - statistics.fmean(m["shift"][1:]),
        "axis 4 loss": m["axis_shift"][0] - m["axis_shift"][-1],
        "axis 1-4 loss": m["axis_shift"][0] - statistics.fmean(m["axis_shift"][1:]),
        "rotation loss": m["clean"] - statistics.fmean(m["rotation"]),
        "logit change 37": m["logit_change_37"],
        "round trip 37": m["round_trip_37"],
        "round trip 37 median": m["round_trip_37_median"],
        "round trip 37 kept": m["round_trip_37_kept"],
    }


RELATIVE = ("logit change 37", "round trip 37", "round trip 37 median")


def _fmt(name: str, value: float) -> str:
    return f"{value:.3f}" if name in RELATIVE else f"{value:.1f}"


def _signed(name: str, value: float) -> str:
    return f"{value:+.3f}" if name in RELATIVE else f"{value:+.1f}"


def write_table(out: Path, records: list[dict], epochs: int) -> Path:
    """``table.md``: per cell and seed, then the main effects and interactions (on the mean over
    the seeds that every cell has)."""
    runs = [r for r in records if r.get("epochs") == epochs and r.get("status") == "ok"]
    lines = [f"Fragility of `invariant-pde` ({epochs} epochs; validation split, "
             f"{runs[0]['fragility']['images'] if runs else 0:,} digits). Accuracies in percent; "
             "`shift`: the benchmark's shift curve (random directions, bilinear), `axis`: whole "
             "pixels along the axes (no resampling); losses are clean minus shifted (at 4 px, "
             "and the mean over 1-4 px); `rotation loss`: clean minus the mean over 15, 30, 37, "
             "45 degrees; logit changes relative, under 37 degrees and under 37 degrees and back "
             "(over the whole batch, as in the benchmark, and the median over images of each "
             "image's change); `kept`: predictions unchanged by 37 degrees and back (percent); "
             "`logit norm`: median and largest over images of one image's logit norm. From "
             "`log.jsonl` beside this file (`benchmarks/fragility.py`).", ""]
    names = list(derived(runs[0])) if runs else []
    head = ("| cell | seed | " + " | ".join(names)
            + " | shift curve 0-4 | axis curve 0-4 | logit norm | train min |")
    lines += [head, "|---|---:|" + "---:|" * len(names) + "---|---|---|---:|"]
    for r in sorted(runs, key=lambda r: (list(CELLS).index(r["cell"]), r["seed"])):
        d, m = derived(r), r["fragility"]
        lines.append(f"| {r['cell']} | {r['seed']} | " + " | ".join(_fmt(n, d[n]) for n in names)
                     + " | " + " ".join(f"{v:.1f}" for v in m["shift"]) + " | "
                     + " ".join(f"{v:.1f}" for v in m["axis_shift"])
                     + f" | {m['logit_norm_median']:.1f} / {m['logit_norm_max']:.3g}"
                     + f" | {r['train_seconds'] / 60:.1f} |")
    by_cell = {c: [r for r in runs if r["cell"] == c] for c in CELLS}
    seed0 = {r["cell"]: derived(r) for r in runs if r["seed"] == min(x["seed"] for x in runs)}
    baseline = next(iter(CELLS))
    flipped = [c for c in list(CELLS)[1:] if c in seed0]
    if baseline in seed0 and flipped:
        lines += ["", f"From the baseline ({baseline}, the benchmark's model), seed "
                  f"{min(r['seed'] for r in runs)}: each cell minus the baseline", "",
                  "| cell | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
        for c in flipped:
            lines.append(f"| {c} | " + " | ".join(_signed(n, seed0[c][n] - seed0[baseline][n])
                                                  for n in names) + " |")
    common = set.intersection(*({r["seed"] for r in rs} for rs in by_cell.values())) \
        if all(by_cell.values()) else set()
    if common:
        mean = {c: {n: statistics.fmean(derived(r)[n] for r in rs if r["seed"] in common)
                    for n in names} for c, rs in by_cell.items()}
        sign = {c: {f: (1 if CELLS[c][f] == FACTORS[f][1] else -1) for f in FACTORS}
                for c in CELLS}
        contrasts = [(f"{f}: {FACTORS[f][0]} -> {FACTORS[f][1]}", (f,)) for f in FACTORS]
        contrasts += [(" x ".join(pair), pair) for pair in itertools.combinations(FACTORS, 2)]
        contrasts += [(" x ".join(FACTORS), tuple(FACTORS))]
        lines += ["", f"Effects (mean over the cells at the second level minus the mean at the "
                  f"first; an interaction: the same with the product of the signs), seeds "
                  f"{sorted(common)}:", "", "| effect | " + " | ".join(names) + " |",
                  "|---|" + "---:|" * len(names)]
        for label, factors in contrasts:
            values = []
            for n in names:
                plus = [mean[c][n] for c in CELLS if _product(sign[c], factors) > 0]
                minus = [mean[c][n] for c in CELLS if _product(sign[c], factors) < 0]
                values.append(_signed(n, statistics.fmean(plus) - statistics.fmean(minus)))
            lines.append(f"| {label} | " + " | ".join(values) + " |")
    replicated = {c: rs for c, rs in by_cell.items() if len(rs) > 1}
    if replicated:
        lines += ["", "Seed to seed (cells trained with several seeds): largest minus smallest",
                  "", "| cell | seeds | " + " | ".join(names) + " |",
                  "|---|---|" + "---:|" * len(names)]
        for c, rs in replicated.items():
            spread = [max(derived(r)[n] for r in rs) - min(derived(r)[n] for r in rs)
                      for n in names]
            lines.append(f"| {c} | {sorted(r['seed'] for r in rs)} | "
                         + " | ".join(_fmt(n, v) for n, v in zip(names, spread, strict=True)) + " |")
    path = out / "table.md"
    atomic_write(path, ("\n".join(lines) + "\n").encode())
    return path


def _listed(values) -> str:
    return ", ".join(str(v) for v in values)


def _product(signs: dict, factors: tuple) -> int:
    value = 1
    for f in factors:
        value *= signs[f]
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True,
                        help="the experiment's folder (results/fragility resumes the committed one)")
    parser.add_argument("--epochs", type=positive_int, default=6)
    parser.add_argument("--seeds", type=nonnegative_int, nargs="+", default=[0])
    parser.add_argument("--cells", nargs="+", default=list(CELLS), choices=list(CELLS))
    parser.add_argument("--recipe", type=Path, default=Path("configs/benchmark-cpu.toml"),
                        help="benchmark configuration whose invariant-pde recipe is used")
    parser.add_argument("--threads", type=positive_int, default=1, help="torch threads (default 1)")
    parser.add_argument("--data-dir", default=os.environ.get("EQPDENET_DATA"))
    parser.add_argument("--set", nargs="*", default=[], metavar="SECTION.FIELD=VALUE",
                        help="further overrides of every cell (a smoke run: data.train_subset=200)")
    parser.add_argument("--table-only", action="store_true", help="rewrite table.md and stop")
    args = parser.parse_args()
    check_output(parser, "--out", args.out, folder=True)
    if not args.recipe.is_file():
        parser.error(f"--recipe {args.recipe}: no such file")
    torch.set_num_threads(args.threads)
    benchmark = load_toml(BenchmarkConfig, args.recipe)
    log = args.out / "log.jsonl"
    with hold(args.out, "fragility"):
        records = read_jsonl(log)
        other = sorted({r["epochs"] for r in records} - {args.epochs})
        if other:
            parser.error(f"--epochs {args.epochs}: {log} holds runs of {_listed(other)} epochs, "
                         f"whose checkpoints the new runs would replace (they are named by cell "
                         f"and seed): give another --out")
        if args.table_only:
            if not records:
                parser.error(f"--table-only: no runs in {log} to tabulate")
            print(write_table(args.out, records, args.epochs))
            return
        todo = [(c, s) for s in args.seeds for c in args.cells]
        try:
            configs = {(c, s): cell_config(benchmark, CELLS[c], args.epochs, s, args.set)
                       for c, s in todo}
        except ConfigError as error:
            parser.error(str(error))
        done = {(r["cell"], r["seed"]): r for r in records}
        for key, config in configs.items():
            if key in done and done[key]["fingerprint"] != fingerprint(config):
                parser.error(f"{log} holds {key[0]} seed {key[1]} with another configuration; "
                             "give another --out")
        todo = [key for key in todo if key not in done]
        stale = [r for r in done.values() if r.get("status") == "ok" and missing(r)]
        print(f"fragility: {len(done)} runs in {log}, {len(todo)} to train, {len(stale)} to "
              f"measure again ({args.epochs} epochs, {torch.get_num_threads()} threads)",
              flush=True)
        data = prepare_data(next(iter(configs.values())).data, args.data_dir, None) \
            if todo or stale else None
        if stale:
            remeasure(log, stale, data, args.out / "checkpoints")
        for number, (cell, seed) in enumerate(todo, 1):
            config = configs[(cell, seed)]
            start = time.perf_counter()
            print(f"[{number}/{len(todo)}] {cell} seed {seed}: training ...", flush=True)
            checkpoint = args.out / "checkpoints" / f"{cell}-seed{seed}.pt"
            record = run_experiment(
                config, data, progress=False, checkpoint=checkpoint,
                extra_evaluation=lambda model, data, seed=seed: {
                    "fragility": measure(model, data, seed)})
            record.update(cell=cell, seed=seed, epochs=args.epochs, factors=CELLS[cell],
                          fingerprint=fingerprint(config),
                          seconds=time.perf_counter() - start)
            append_jsonl(log, record)
            if record.get("status") == "ok":
                d = derived(record)
                print(f"[{number}/{len(todo)}] {cell} seed {seed}: "
                      + ", ".join(f"{n} {_fmt(n, v)}" for n, v in d.items())
                      + f" ({record['seconds'] / 60:.1f} min)", flush=True)
            else:
                print(f"[{number}/{len(todo)}] {cell} seed {seed}: {record.get('status')} "
                      f"{record.get('error', '')}", flush=True)
            write_table(args.out, read_jsonl(log), args.epochs)
        print(write_table(args.out, read_jsonl(log), args.epochs))


if __name__ == "__main__":
    run(main)
