"""The validation study: which training and layer choices make the PDE layer help.

The paper leaves optimiser, schedule, epochs, initialisation, T, dt, the ratio regularisation
and input normalisation open. This study chooses them **on the validation split only** (the last
2,000 of the 12,000 ROTMNIST training digits; the models train on the first 10,000) and never
evaluates on the test set (``scenarios = []``).

It is a greedy search over stages. Each stage tries a few candidates (override lists on top of
the incumbent configuration); every candidate is trained for both models (EqPdeNet and FCNN) at
the study's hidden sizes and seeds. A stage is either

* ``shared`` (the training recipe, applied identically to both models): scored by the mean
  validation accuracy of *both* models, so the recipe is not tuned for one of them; or
* ``layer`` (the PDE layer only; FCNN is unaffected): scored by EqPdeNet's mean validation
  accuracy.

A candidate replaces the incumbent only if it beats it by more than ``margin`` percentage points
(the incumbent is always candidate 0). Runs are stored by configuration under
``out/runs/<fingerprint>/`` so a configuration met again (the incumbent of the next stage) is not
retrained, and rerunning the command resumes where it stopped. The study is summarised in
``out/study.md``.
"""

from __future__ import annotations

import copy
import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from .config import ReproduceConfig, apply_overrides, from_dict, to_dict, to_toml
from .distributed import Executor
from .files import atomic_write, read_jsonl
from .locks import hold
from .report import PAPER_MODELS
from .runfolder import check_claim, claim_folder
from .sweeps import reproduce
from .training import fingerprint

__all__ = ["STAGES", "Stage", "run_study"]


@dataclass
class Stage:
    name: str
    kind: str  # "shared" or "layer"
    question: str
    candidates: dict[str, list[str]] = field(default_factory=dict)


#: The study, in order. Candidate 0 of each stage is "keep the incumbent".
STAGES = [
    Stage("epochs", "shared",
          "How many epochs (the prototype's training loss reached zero: overfitting)?",
          {"20-epochs": [], "10-epochs": ["base.train.epochs=10"]}),
    Stage("pde-lr", "layer",
          "How fast should the PDE coefficients move? (learning-rate multiplier of the PDE layer)",
          {"pde-lr-x1": [], "pde-lr-x0.1": ["base.train.pde_lr_scale=0.1"],
           "pde-lr-x0.01": ["base.train.pde_lr_scale=0.01"]}),
    Stage("init", "layer",
          "Initialise F at zero (identity flow), or break the symmetry between the two PDEs of "
          "each set with small noise, around zero or around a heat flow a (u_xx + u_yy)?",
          {"zeros": [],
           "noise-0.01": ["base.model.layer.init_noise=0.01"],
           "heat-0.25+noise": ["base.model.layer.init='heat'", "base.model.layer.init_scale=0.25",
                               "base.model.layer.init_noise=0.01"]}),
    Stage("standardize", "shared",
          "Standardise the input pixels with MNIST's mean and std (0.1307, 0.3081)?",
          {"raw-pixels": [],
           "standardized": ["base.model.input_mean=0.1307", "base.model.input_std=0.3081"]}),
    Stage("weight-decay", "shared",
          "Decoupled weight decay (AdamW) on every parameter?",
          {"none": [], "wd-0.05": ["base.train.weight_decay=0.05"]}),
    Stage("ratio-eps", "layer",
          "Scale of the ratio regularisation a b / (b^2 + eps^2) of the scaling invariants?",
          {"eps-0.1": [], "eps-1.0": ["base.model.layer.ratio_eps=1.0"]}),
    Stage("stencil", "layer",
          "Central differences or the isotropic 3x3 stencils?",
          {"central": [], "isotropic": ["base.model.layer.stencil='isotropic'"]}),
]


#: A second round, from the configuration chosen by STAGES (``results/study/chosen.toml``): the
#: layer choices re-examined once the input is standardised, and a longer horizon.
REFINE_STAGES = [
    Stage("init-after-standardize", "layer",
          "Now that the input is standardised: noise around zero, or around a heat flow?",
          {"noise-0.01": [],
           "heat-0.25+noise": ["base.model.layer.init='heat'", "base.model.layer.init_scale=0.25"],
           "heat-1.0+noise": ["base.model.layer.init='heat'", "base.model.layer.init_scale=1.0"]}),
    Stage("pde-lr-after-standardize", "layer",
          "Now that the input is standardised and the PDEs differ: how fast should they learn?",
          {"pde-lr-x0.01": [], "pde-lr-x0.1": ["base.train.pde_lr_scale=0.1"],
           "pde-lr-x0.001": ["base.train.pde_lr_scale=0.001"]}),
    Stage("horizon", "layer",
          "Time horizon T (dt = 0.1 fixed: 10 or 20 Euler steps)?",
          {"T-1": [], "T-2": ["base.model.layer.T=2.0"]}),
]

STAGE_SETS = {"main": STAGES, "refine": REFINE_STAGES}


def study_base(hidden_sizes=(256, 32), seeds=(0, 1), epochs: int = 20) -> ReproduceConfig:
    """The prototype of the issue (zero-initialised linear F, central stencil, ratio eps 0.1,
    10 steps of dt 0.1, Adam 1e-3, batch 128), with ``epochs`` (20 by default, not the
    prototype's 30, to fit the study in the time we have); validation 10,000 / 2,000; no test."""
    config = ReproduceConfig()
    config.hidden_sizes, config.seeds = list(hidden_sizes), list(seeds)
    config.base.data.validation = 2000
    config.base.scenarios = []
    config.base.train.epochs = epochs
    return config


def _apply(config: ReproduceConfig, overrides: list[str]) -> ReproduceConfig:
    return apply_overrides(copy.deepcopy(config), overrides)


def _score(records: list[dict], kind: str) -> dict:
    ok = [r for r in records if r.get("status") == "ok"]
    per_model = {}
    for model in PAPER_MODELS:
        values = [r["validation_accuracy"] for r in ok if r["model"] == model]
        if values:
            per_model[model] = statistics.fmean(values)
    failed = len(records) - len(ok)
    if kind == "layer":
        score = per_model.get("eqpdenet", float("-inf"))
    else:
        score = statistics.fmean(per_model.values()) if per_model else float("-inf")
    return {"score": score if not failed else float("-inf"), "per_model": per_model,
            "failed": failed, "runs": len(records)}


def run_study(out: Path, *, base: ReproduceConfig | None = None, stages=STAGES, margin: float = 0.25,
              jobs: int = 1, executor: Executor | None = None, data_dir=None, cache_dir=None,
              progress: bool = True, echo=print) -> ReproduceConfig:
    """Run the greedy study; returns the chosen configuration (also in ``out/chosen.toml``).
    ``out`` has one writer at a time (:func:`eqpdenet.app.locks.hold`)."""
    legacy = ("study.md", "chosen.toml", "runs")
    check_claim(out, "study", legacy)  # before the lock writes into it
    with hold(out, "study"):
        claim_folder(out, "study", legacy)
        return _run_study(Path(out), base=base, stages=stages, margin=margin, jobs=jobs,
                          executor=executor, data_dir=data_dir, cache_dir=cache_dir,
                          progress=progress, echo=echo)


def _run_study(out: Path, *, base, stages, margin, jobs, executor, data_dir, cache_dir, progress,
               echo) -> ReproduceConfig:
    incumbent = base or study_base()
    lines = [f"# Validation study ({len(stages)} stages)", "",
             "Greedy search on the validation split (train 10,000 / validate 2,000 of ROTMNIST's "
             "12,000 training digits; the test set is never used). Scores are mean validation "
             "accuracy in percent over seeds "
             f"{incumbent.seeds} and hidden sizes {incumbent.hidden_sizes}; `shared` stages score "
             "both models, `layer` stages EqPdeNet only. A candidate must beat the incumbent by "
             f"more than {margin} points to replace it.", ""]
    trail = []
    for stage in stages:
        results, folders = {}, {}
        for name, overrides in stage.candidates.items():
            config = _apply(incumbent, overrides)
            if stage.kind == "layer" and overrides:
                config.models = ["eqpdenet"]  # FCNN has no PDE layer: reuse the incumbent's
            folder = folders[name] = out / "runs" / fingerprint(config.base)
            echo(f"study: {stage.name} / {name} -> {folder}")
            reproduce(config, folder, jobs=jobs, executor=executor, data_dir=data_dir,
                      cache_dir=cache_dir, progress=progress, echo=echo)
            records = read_jsonl(folder / "results.jsonl")
            if stage.kind == "layer" and overrides:
                first = folders[next(iter(stage.candidates))]
                records += [r for r in read_jsonl(first / "results.jsonl") if r["model"] == "fcnn"]
            results[name] = (config, _score(records, stage.kind))
        names = list(results)
        best = names[0]
        for name in names[1:]:
            if results[name][1]["score"] > results[best][1]["score"] + margin:
                best = name
        incumbent = results[best][0]
        incumbent.models = list(PAPER_MODELS)
        trail.append((stage, best))
        lines += [f"## {stage.name} ({stage.kind})", "", stage.question, "",
                  "| candidate | overrides | EqPdeNet | FCNN | score | runs | folder |",
                  "|---|---|---:|---:|---:|---:|---|"]
        for name in names:
            score = results[name][1]
            cells = [f"**{name}**" if name == best else name,
                     "<br>".join(f"`{o}`" for o in stage.candidates[name]) or "(incumbent)",
                     f"{score['per_model'].get('eqpdenet', float('nan')):.2f}",
                     f"{score['per_model'].get('fcnn', float('nan')):.2f}",
                     f"{score['score']:.2f}",
                     f"{score['runs']}" + (f" ({score['failed']} failed)" if score["failed"] else ""),
                     f"`{folders[name].relative_to(out)}`"]
            lines.append("| " + " | ".join(cells) + " |")
        lines += ["", f"Chosen: **{best}**.", ""]
        atomic_write(out / "study.md", ("\n".join(lines) + "\n").encode())
    lines += ["## Chosen configuration", "", "```toml", to_toml(incumbent).rstrip(), "```", "",
              "Choices: " + ", ".join(f"{s.name} = {b}" for s, b in trail), ""]
    atomic_write(out / "study.md", ("\n".join(lines) + "\n").encode())
    atomic_write(out / "chosen.toml", to_toml(incumbent).encode())
    atomic_write(out / "chosen.json", json.dumps(to_dict(incumbent), indent=1).encode())
    return from_dict(ReproduceConfig, to_dict(incumbent))
