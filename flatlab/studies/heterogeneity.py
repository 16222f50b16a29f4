"""Data-heterogeneity study: is Momentum Tracking more robust to heterogeneity than the others?

The question is its paper's claim against DSGDm, QG-DSGDm and DecentLaM (Takezawa et al., TMLR;
docs/reference/algorithms.md §6.2, §13.2). mnist1d with the 1-D CNN (GroupNorm) on a ring;
heterogeneity by k classes per node (and, at ``full`` scale, a Dirichlet label split); momentum
0.9 heavy ball where a method has one, weight decay 1e-4 inside the gradient, cosine schedule,
batch 32 per node. Gradient tracking runs in its default DIGing form and, as
``gradient-tracking-atc``, its adapt-then-combine form.

Tuning: the learning rate per method and setting on 3 seeds, 10% of the training set held out.
Claims (accuracy of x̄, higher is better, equivalence margin one point): Momentum Tracking
against each momentum method per setting and in its drop from the mildest to the strongest skew;
gradient tracking's adapt-then-combine form against its default DIGing form.

Run: ``python -m flatlab.studies heterogeneity --scale small`` (``make heterogeneity``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

from flatlab.experiment.evidence import Claim, change_between
from flatlab.plots import heterogeneity, sensitivity
from flatlab.studies.spec import Point, Scale, Stage, Study

# study label -> (registered algorithm, hyper-parameters)
ALGORITHMS = {"gradient-tracking-atc": ("gradient-tracking", {"form": "atc"})}
MOMENTUM = {"dsgdm", "qg-dsgdm", "decentlam", "momentum-tracking"}
SIX = ("dsgdm", "qg-dsgdm", "decentlam", "gradient-tracking", "gradient-tracking-atc",
       "momentum-tracking")
#: One accuracy point: the smallest difference the Momentum Tracking paper's tables discuss,
#: and ten test samples of 1000 per seed.
POINT = 0.01
WHY = "one accuracy point: the smallest gap the paper's tables discuss (10 of 1000 test samples)"


def _settings(*pairs: tuple[str, float], nodes: tuple[int, ...]) -> tuple[dict[str, Any], ...]:
    return tuple({"nodes": n, "partition": p, "level": level} for n in nodes
                 for p, level in pairs)


SCALES = {
    # the mildest and the strongest skew of the official demo (k classes per node)
    "small": Scale(settings=_settings(("classes", 10), ("classes", 2), nodes=(8,)),
                   methods=SIX, seeds=(0, 1, 2, 3, 4), tune_seeds=(0, 1, 2), steps=3000,
                   every=150, options={"lrs": {"momentum": (0.003, 0.01, 0.03, 0.1),
                                               "plain": (0.01, 0.03, 0.1, 0.3)}}),
    "full": Scale(settings=_settings(("dirichlet", 10.0), ("dirichlet", 1.0), ("dirichlet", 0.1),
                                     ("classes", 10), ("classes", 4), ("classes", 2),
                                     nodes=(8, 16)),
                  methods=("dsgd", *SIX), seeds=(0, 1, 2, 3, 4), tune_seeds=(0, 1, 2),
                  steps=6000, every=300,
                  options={"lrs": {"momentum": (0.001, 0.003, 0.01, 0.03, 0.1),
                                   "plain": (0.003, 0.01, 0.03, 0.1, 0.3)}}),
    # the test suite's: a few steps, so the study cannot rot
    "tiny": Scale(settings=_settings(("classes", 10), ("classes", 4), nodes=(4,)),
                  methods=("dsgdm", "momentum-tracking"), seeds=(0, 1), tune_seeds=(0, 1),
                  steps=10, every=2, options={"lrs": {"momentum": (0.01, 0.03),
                                                      "plain": (0.03, 0.1)}, "extensions": 1,
                           "measure": {"train_subset": 256, "test_subset": 256}}),
}


def level_label(partition: str, level: float) -> str:
    """``k=10`` for k classes per node, ``alpha=0.1`` for a Dirichlet split."""
    return f"alpha={level:g}" if partition == "dirichlet" else f"k={int(level)}"


def config(point: Point, scale: Scale, seed: int, holdout: float) -> dict[str, Any]:
    """The run config of a point (``every`` is the run's length when tuning: one measurement)."""
    data: dict[str, Any] = {"name": "mnist1d", "partition": point["partition"], "seed": seed,
                            "batch_size": 32, "holdout": holdout}
    if point["partition"] == "dirichlet":
        data["alpha"] = float(point["level"])
    else:
        data["classes_per_node"] = int(point["level"])
    name, params = ALGORITHMS.get(point["method"], (point["method"], {}))
    params = {**params, **({"momentum": 0.9} if point["method"] in MOMENTUM else {})}
    steps = scale.steps
    cfg = {"name": "heterogeneity", "seed": seed, "device": "auto", "data": data,
           "model": {"name": "cnn1d"}, "topology": {"name": "ring", "nodes": point["nodes"]},
           "algorithm": {"name": name, "params": params},
           "optim": {"lr": point["lr"], "schedule": "cosine", "weight_decay": 1e-4},
           "train": {"steps": steps},
           "measure": {"every": steps if holdout else scale.every,
                       "metrics": ["loss", "accuracy", "consensus_distance"],
                       "per_node": False},
           "checkpoint_every": max(steps // 2, 1)}
    # a scale may measure on subsets (the test suite's tiny scale: the whole sets dominate it)
    cfg["measure"].update(scale.options.get("measure", {}))
    return cfg


def run_name(point: Point, seed: int) -> str:
    """``n=8,k=10,dsgdm,lr=0.01,seed=0``."""
    return (f"n={point['nodes']},{level_label(point['partition'], point['level'])},"
            f"{point['method']},lr={point['lr']:g},seed={seed}")


def setting_label(setting: Mapping[str, Any]) -> str:
    """``n=8, k=10``; a claim on the change between skews names only ``n``."""
    if "level" not in setting:
        return ", ".join(f"n={v}" for k, v in setting.items() if k == "nodes")
    return f"n={setting['nodes']}, {level_label(setting['partition'], setting['level'])}"


def _lr_grid(point: Point, scale: Scale) -> tuple[float, ...]:
    return scale.options["lrs"]["momentum" if point["method"] in MOMENTUM else "plain"]


def claims(scale: Scale) -> list[Claim | tuple[str, Claim]]:
    """The Momentum Tracking paper's claims, and gradient tracking's two forms.

    Momentum Tracking against each momentum method per setting and in its loss of accuracy from
    the mildest to the strongest skew; DecentLaM > QG-DSGDm > DSGDm (the official demo's
    ordering, one pair at a time); gradient tracking's ATC form beating its DIGing form.
    """
    methods = set(scale.methods)
    pairs = [("momentum-tracking", b, "greater") for b in ("dsgdm", "qg-dsgdm", "decentlam")]
    pairs += [("decentlam", "qg-dsgdm", "greater"), ("qg-dsgdm", "dsgdm", "greater"),
              ("gradient-tracking-atc", "gradient-tracking", "greater")]
    pairs = [p for p in pairs if {p[0], p[1]} <= methods]
    out: list[Claim | tuple[str, Claim]] = []
    for s in scale.settings:
        out += [Claim(f"{a} beats {b}", a, b, c, dict(s), margin=POINT, why=WHY)
                for a, b, c in pairs]
    mild, strong = scale.settings[0], scale.settings[-1]
    if mild["partition"] == strong["partition"] and "momentum-tracking" in methods:
        for n in sorted({s["nodes"] for s in scale.settings}):
            out += [("change", Claim(f"momentum-tracking loses less than {b} "
                                     f"({level_label(mild['partition'], mild['level'])} → "
                                     f"{level_label(strong['partition'], strong['level'])})",
                                     "momentum-tracking", b, "greater", {"nodes": n},
                                     margin=POINT, why=WHY))
                    for b in ("dsgdm", "qg-dsgdm", "decentlam") if b in methods]
    return out


def derived(table: pd.DataFrame, scale: Scale) -> dict[str, pd.DataFrame]:
    """``change``: the accuracy at the strongest skew minus at the mildest.

    Per method, node count and seed (:func:`~flatlab.experiment.evidence.change_between`).
    """
    mild, strong = scale.settings[0], scale.settings[-1]
    sub = table[table["partition"] == mild["partition"]]
    if mild["partition"] != strong["partition"] or sub.empty:
        return {"change": pd.DataFrame(columns=["nodes", "method", "seed", "test_accuracy",
                                                "status"])}
    return {"change": change_between(sub, "level", mild["level"], strong["level"],
                                     keys=["nodes", "method"])}


def figures(tables: dict[str, pd.DataFrame], scale: Scale) -> dict[str, Any]:
    """Accuracy against heterogeneity; held-out accuracy against the learning rate."""
    lr = tables["tuning"]
    lr = lr[lr["stage"] == "lr"].rename(columns={"value": "lr"})
    return {"": heterogeneity(tables["runs"]),
            "sensitivity": sensitivity(lr, "lr", panels=["nodes", "partition", "level"])}


STUDY = Study(
    name="heterogeneity",
    question="Is Momentum Tracking more robust to data heterogeneity than DSGDm, QG-DSGDm and "
             "DecentLaM, and how do the two forms of gradient tracking compare?",
    scales=SCALES, config=config, run_name=run_name, claims=claims, derived=derived,
    stages=(Stage("lr", _lr_grid, why="the paper's grids, extended until the choice is interior",
                  extensions=4),),
    measures={"test_accuracy": "test_accuracy", "test_accuracy_nodes": "test_accuracy[mean]",
              "train_loss": "train_loss", "consensus_distance": "consensus_distance"},
    curves=("test_accuracy", "train_loss", "consensus_distance"),
    summary_columns=("test_accuracy", "test_accuracy_nodes", "train_loss"),
    setting_label=setting_label, figures=figures,
    protocol="Final runs: the chosen learning rate on the full training set with every seed "
             "(`seed` and `data.seed`: initialization, minibatches and the partition all "
             "change), test accuracy of the averaged model x̄ and the mean over the nodes.")
