"""One training recipe scored on the validation split (the last 2,000 training digits), never on
the test set: how the benchmark's per-model recipes were chosen (docs/benchmark.md).

    python benchmarks/recipe_validation.py NAME EPOCHS [section.field=value ...] \
        --log results/benchmark-recipes/log.jsonl

``NAME`` is a free label of the run (the model and its recipe are the overrides); appends one
JSON line (name, overrides, parameters, validation accuracy, seconds, torch threads, the history
of (epoch, loss, validation accuracy, seconds)) to ``--log`` (default
``results/benchmark-recipes/log.jsonl``: the committed log of the validation runs behind the
benchmark's recipes, which the commands in docs/ extend; give another ``--log`` for a trial run
that should not join it); the overrides, scenarios and
``--log`` are checked before the data is read or anything trains. ``--scenarios iso sca shift``
also scores the trained model on those scenarios applied to the validation digits (draws seeded
by the run's seed, as the benchmark seeds its test scenarios), and ``--round-trip
37`` measures the relative change of its logits when the validation digits are rotated by 37
degrees and back (the benchmark's "37° and back", :func:`~eqpdenet.analysis.robustness.
round_trip_change`, there on 2,000 test digits): how a recipe's robustness is judged without
the test set. ``--threads N`` sets
torch's threads (default: as ``OMP_NUM_THREADS`` says, else torch's default). Example (the CNN's recipe)::

    python benchmarks/recipe_validation.py cnn-10k-b64-lr2e3 6 "model.kind='cnn'" \
        "train.lr_schedule='cosine'" train.batch_size=64 train.lr=0.002 \
        --log results/benchmark-recipes/log.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch
from _args import check_output, positive_int, run

from eqpdenet.analysis.robustness import round_trip_change
from eqpdenet.app.config import ExperimentConfig, apply_overrides
from eqpdenet.app.files import append_jsonl
from eqpdenet.app.training import evaluate_scenarios, prepare_data, run_experiment
from eqpdenet.data.scenarios import get_scenario
from eqpdenet.errors import ConfigError


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("name", help="a label of the run in the log (free text)")
    parser.add_argument("epochs", type=positive_int)
    parser.add_argument("overrides", nargs="*", help="section.field=value")
    parser.add_argument("--log", type=Path, default=Path("results/benchmark-recipes/log.jsonl"),
                        help="append the run's JSON line here (default: %(default)s, the "
                        "committed log of the validation runs behind the recipes)")
    parser.add_argument("--data-dir", default=os.environ.get("EQPDENET_DATA"))
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--threads", type=positive_int, default=None, help="torch threads")
    parser.add_argument("--scenarios", nargs="*", default=[],
                        help="scenarios to apply to the validation digits (e.g. iso sca shift)")
    parser.add_argument("--round-trip", nargs="*", type=float, default=[], metavar="DEGREES",
                        help="angles of the rotate-and-back logit change on the validation "
                             "digits (e.g. 37)")
    args = parser.parse_args()
    check_output(parser, "--log", args.log)
    try:  # before the long work: a typo fails at once
        config = apply_overrides(ExperimentConfig(), [
            "data.validation=2000", "scenarios=[]", f"train.epochs={args.epochs}",
            *args.overrides])
        for name in args.scenarios:
            get_scenario(name)
    except ConfigError as error:
        parser.error(str(error))
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    data = prepare_data(config.data, args.data_dir, args.cache_dir)

    def validation_extras(model, data) -> dict:
        scores = evaluate_scenarios(model, data["validation"], args.scenarios, config.train.seed)
        images = data["validation"].images
        return {"validation_scenarios": {name: round(value, 2) for name, value in scores.items()},
                "validation_round_trip": {f"{a:g}": round(round_trip_change(model, images, a), 4)
                                          for a in args.round_trip}}

    extra = validation_extras if args.scenarios or args.round_trip else None
    record = run_experiment(config, data, progress=False, extra_evaluation=extra)
    out = {key: record.get(key) for key in ("status", "params", "validation_accuracy",
                                            "validation_scenarios", "validation_round_trip",
                                            "train_seconds", "error")}
    out["threads"] = torch.get_num_threads()
    out["history"] = [(h.get("epoch"), round(h.get("loss", 0), 4),
                       round(h.get("validation_accuracy", 0), 4), round(h.get("seconds", 0)))
                      for h in record.get("history", [])]
    print(args.name, json.dumps(out), flush=True)
    append_jsonl(args.log, {"name": args.name, "overrides": args.overrides, **out})


if __name__ == "__main__":
    run(main)
