"""The large-batch regime first: where does centralized SGD generalize worse at a large batch?

Issue 33, step 1. The seed claim (Cao, Wu, Yuan, Sayed 2024) is about the large-batch regime:
where centralized SGD with a large batch generalizes worse, decentralized training escapes the
sharp minima and ends flatter. Before testing it, the premise must appear at this scale: a
**separable large-batch generalization gap** of centralized SGD, paired over 5 seeds, judged by
the study rules, of at least 2 accuracy points. This study searches for it and records every
setting tried, negative results included (``phenomenon.csv``).

Protocol (Keskar et al. 2017; Goyal et al. 2017; Hoffer et al. 2017 on why the budget matters):
centralized SGD (an exact all-reduce average over ``n = 16`` nodes, iid split) at a small and a
large total batch (``16 × 2 = 32`` against the setting's large one: 512 of 1000 training
samples, 2048 of 4000, the largest power of 2 that a node's share of the tuning split can fill)
for the **same number of epochs** ``E`` (so the large batch takes 16 or 64 times fewer steps),
each batch with its own step
size **tuned** on a held-out 10% of the training set over 3 seeds (bracketed: a best value at
the grid's edge extends the grid), a cosine schedule with a 5% linear warm-up, no weight decay,
no augmentation. The knobs of a setting: the training-set size ``N`` (mnist1d generates any;
1000 test samples always), the model, symmetric label noise on the training labels
(``data.label_noise``) and the epoch budget.

Claims, one per setting: "small-batch SGD generalizes better" (``a = small``, ``b = large``, test
accuracy, seed-paired over 5 seeds, Holm-adjusted over the settings), with an equivalence margin
of 2 points fixed before the runs: ``equivalent`` says the two batches generalize alike within
2 points (no regime here), ``better`` that the gap is separable. ``phenomenon.csv`` says for
each setting whether the gap is **found** (separable and at least 2 points on average).

Run: ``python -m flatlab.studies large_batch --scale small`` (resumable; ``--report`` rebuilds the
tables from the runs on disk, ``--rejudge`` from the committed tables).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from flatlab.errors import FlatlabError
from flatlab.experiment.evidence import Claim
from flatlab.experiment.io import read_table
from flatlab.studies.spec import Point, Scale, Stage, Study

__all__ = ["STUDY", "SCALES", "config", "data_of", "claims", "phenomenon", "steps_of", "MARGIN",
           "join_rounds", "ROUND_TABLES"]

#: Nodes of the all-reduce (centralized SGD is the same for any n at a fixed total batch).
NODES = 16
#: Test samples of every setting (mnist1d generates them with the training set).
TEST = 1000
#: The gap the regime needs, and the equivalence margin of every claim (accuracy, absolute).
MARGIN = 0.02
WHY = ("2 accuracy points, the issue's bar: a smaller large-batch gap is not the regime in "
       "which the paper's claims are made (20 of the 1000 test samples)")
#: Held-out share of the training set for tuning.
HOLDOUT = 0.1
#: The mean final training loss (cross-entropy, nats) at which a batch fits its training set.
#: A gap counts as one of generalization only where both batches fit: round 1 found a large
#: batch whose loss had settled, by the plateau rule, at 1.01 (an underfit plateau), beside a
#: small batch at 0.0003; a test gap there is one of optimization. Set after round 1.
FIT = 0.05


def steps_of(setting: Mapping[str, Any], batch: int) -> int:
    """Training steps for ``epochs`` passes over the ``train`` samples at a total ``batch``."""
    return max(1, math.ceil(setting["epochs"] * setting["train"] / batch))


def _setting(train: int, model: str, noise: float, epochs: int, large: int,
             data: str = "mnist1d") -> dict[str, Any]:
    s = {"train": train, "model": model, "noise": noise, "epochs": epochs, "large": large}
    return s if data == "mnist1d" else {"data": data, **s}  # mnist1d's tables have no column


def label(setting: Mapping[str, Any]) -> str:
    """``N=1000, cnn1d, noise 0.2, 200 epochs, large 512`` (``cifar10, N=50000, ...``)."""
    data = f"{setting['data']}, " if setting.get("data", "mnist1d") != "mnist1d" else ""
    return (f"{data}N={setting['train']}, {setting['model']}, noise {setting['noise']:g}, "
            f"{setting['epochs']} epochs, large {setting['large']}")


def batch_of(point: Point, scale: Scale) -> int:
    """The total batch of a point: the scale's small one, or its setting's ``large``."""
    return scale.options["small"] if point["method"] == "small" else int(point["large"])


def check_scale(scale: Scale, holdout: float = HOLDOUT) -> None:
    """Refuse a setting whose batch a node's share of the tuning split cannot fill.

    Every node holds ``⌊N (1 − holdout) / n⌋`` samples while tuning; its batch, ``B / n``,
    must fit in it (a large batch of 2048 needs at least 2048 / 0.9 training samples).
    """
    for s in scale.settings:
        for method in scale.methods:
            b = batch_of({**s, "method": method}, scale)
            nodes = NODES if b >= NODES else 2
            per_node = int(s["train"] * (1 - holdout)) // nodes
            if b % nodes or b // nodes > per_node:
                raise FlatlabError(f"large_batch setting {label(s)}: total batch {b} on {nodes} "
                                   f"nodes needs {b // nodes} samples per node, a multiple of "
                                   f"the nodes, at most {per_node} (N = {s['train']} with "
                                   f"{holdout:g} held out)")


def _scale(settings: tuple[dict[str, Any], ...], seeds: tuple[int, ...],
           tune_seeds: tuple[int, ...], small: int, **options: Any) -> Scale:
    steps = max(steps_of(s, b) for s in settings for b in (small, s["large"]))
    scale = Scale(settings=settings, methods=("small", "large"), seeds=seeds,
                  tune_seeds=tune_seeds, steps=steps, every=0,
                  options={"small": small, **options})
    check_scale(scale)
    return scale


#: Round 1 of the search (started 2026-12-06): five settings at 200 or 100 epochs.
ROUND1 = (_setting(1000, "cnn1d", 0.0, 200, 512), _setting(1000, "cnn1d", 0.2, 200, 512),
          _setting(1000, "mlp", 0.0, 200, 512), _setting(4000, "cnn1d", 0.0, 100, 2048),
          _setting(4000, "mlp", 0.2, 100, 2048))
#: Round 2, added after round 1's tuning showed the CNN's large batch still optimizing: the
#: same fixed budget of epochs for both batches, but longer, so that the large batch settles.
ROUND2 = (_setting(1000, "cnn1d", 0.0, 800, 512), _setting(1000, "cnn1d", 0.0, 400, 256))
_SMALL = dict(seeds=(0, 1, 2, 3, 4), tune_seeds=(0, 1, 2), small=32,
              lrs={"small": (0.03, 0.1, 0.3), "large": (0.3, 1.0, 3.0)}, measurements=10)

SCALES = {
    # The search on 2 CPU cores, cheapest settings first: a 1000-sample training set makes
    # generalization matter; label noise and the MLP (more parameters than samples) are the
    # knobs that most often open a large-batch gap; 4000 samples is mnist1d's usual size. The
    # large batch is the largest power of 2 a node's share of the tuning split can fill: 512
    # of 1000 samples (ratio 16), 2048 of 4000 (ratio 64). Round 1 found the CNN's large
    # batch still optimizing after its 200 or 100 epochs (training loss 0.11 at 512 of 1000,
    # 0.94 at 2048 of 4000) while the small batch had settled, so the gap it shows is partly
    # optimization; round 2 trains longer ("longer training to zero training loss"): 800
    # epochs at 512 (1563 large steps), 400 epochs at 256 (ratio 8, 1563 steps). ``small`` is
    # both rounds, its claims Holm-adjusted over all seven settings; ``round1`` is the first
    # round alone, as it was judged when it finished (results/large_batch-round1).
    "small": _scale(ROUND1 + ROUND2, **_SMALL),
    "round1": _scale(ROUND1, **_SMALL),
    # round 2 alone: its tables, joined with round 1's (join_rounds), are those of ``small``
    "round2": _scale(ROUND2, **_SMALL),
    # the GPU's: CIFAR-10 (from $FLATLAB_DATA, no augmentation) and ResNet-20 with GroupNorm,
    # total batch 128 against 4096 (ratio 32; Goyal et al. 2017 keep 8k accurate only with
    # the linear scaling rule and a warm-up; here each batch's step is tuned), 100 epochs
    # each: 39,063 small and 1,221 large steps. `--estimate` prints its hours on a device
    # (docs/studies/large_batch.md records a measured CPU step)
    "full": _scale((_setting(50000, "resnet20", 0.0, 100, 4096, data="cifar10"),),
                   seeds=(0, 1, 2, 3, 4), tune_seeds=(0, 1, 2), small=128,
                   lrs={"small": (0.03, 0.1, 0.3), "large": (0.3, 1.0, 3.0)}, measurements=10),
    # the test suite's: a few steps, so that the study cannot rot
    "tiny": _scale((_setting(200, "logistic", 0.2, 8, 64),), (0, 1), (0, 1), 16,
                   lrs={"small": (0.3, 1.0), "large": (1.0, 3.0)}, measurements=2),
}


def _lr_grid(point: Point, scale: Scale) -> tuple[float, ...]:
    return tuple(scale.options["lrs"][point["method"]])


STAGES = (Stage("lr", _lr_grid, extensions=4,
                why="each batch's own step size, bracketed on held-out data over 3 seeds "
                    "(a large batch takes a larger step; linear scaling by 64 would not be "
                    "stable, so it is tuned, not scaled)"),)


def data_of(setting: Mapping[str, Any], batch_size: int, seed: int, holdout: float
            ) -> dict[str, Any]:
    """The ``data`` block of a setting's runs (iid, ``batch_size`` per node, label noise).

    mnist1d is generated with the setting's ``train`` samples (and :data:`TEST` test ones): the
    training set's size is a knob; a data set read from a folder (``cifar10``) keeps its own.
    """
    data: dict[str, Any] = {"name": setting.get("data", "mnist1d"), "partition": "iid",
                            "seed": seed, "batch_size": batch_size, "holdout": holdout,
                            "label_noise": float(setting["noise"])}
    if data["name"] == "mnist1d":
        data["options"] = {"num_samples": setting["train"] + TEST,
                           "train_split": setting["train"] / (setting["train"] + TEST)}
    return data


def config(point: Point, scale: Scale, seed: int, holdout: float) -> dict[str, Any]:
    """The run config of a point: centralized SGD at the method's total batch for the epochs."""
    batch = batch_of(point, scale)
    nodes = NODES if batch >= NODES else 2
    steps = steps_of(point, batch)
    final = holdout == 0.0
    every = max(1, steps // scale.options["measurements"]) if final else steps
    model: dict[str, Any] = {"name": point["model"], "options": {}}
    return {"name": "large_batch", "seed": seed, "device": "auto",
            "data": data_of(point, batch // nodes, seed, holdout),
            "model": model,
            "topology": {"name": "complete", "nodes": nodes},
            "algorithm": {"name": "centralized", "params": {}},
            "optim": {"lr": float(point["lr"]), "schedule": "cosine",
                      "warmup": max(1, steps // 20), "weight_decay": 0.0},
            "train": {"steps": steps},
            "measure": {"every": every, "per_node": False, "metrics": ["loss", "accuracy"],
                        "train_subset": None, "test_subset": None},
            "checkpoint_every": max(steps // 4, 1)}


def run_name(point: Point, seed: int) -> str:
    """``small,N=1000,cnn1d,noise=0.2,E=200,lr=0.1,seed=0`` (``large512,...`` at batch 512)."""
    method = point["method"] + (str(point["large"]) if point["method"] == "large" else "")
    if point.get("data", "mnist1d") != "mnist1d":
        method += f",{point['data']}"
    return (f"{method},N={point['train']},{point['model']},noise={point['noise']:g},"
            f"E={point['epochs']},lr={float(point['lr']):g},seed={seed}")


def claims(scale: Scale) -> list[Claim]:
    """Small-batch SGD generalizes better than large-batch SGD, in each setting."""
    return [Claim(f"small batch generalizes better ({label(s)})", "small", "large", "greater",
                  dict(s), margin=MARGIN, why=WHY) for s in scale.settings]


def extra(path: Path, point: Point, scale: Scale) -> dict[str, Any]:
    """The run's steps, total batch and wall-clock seconds (its cost)."""
    batch = batch_of(point, scale)
    try:
        seconds = float(json.loads((path / "status.json").read_text())["timings_s"]["total"])
    except (OSError, ValueError, KeyError, TypeError):
        seconds = math.nan
    return {"batch": batch, "steps": steps_of(point, batch), "seconds": seconds}


def phenomenon(tables: Mapping[str, pd.DataFrame], scale: Scale) -> pd.DataFrame:
    """One row per setting tried: both batches' accuracy, the paired gap, its interval, found.

    ``low``/``high`` are the Holm-adjusted interval of ``small − large`` (the verdict's);
    ``settled_small``/``settled_large``: the share of each batch's finished runs whose training
    loss has settled (``loss_converged``); ``fits_small``/``fits_large``: whether the batch's
    mean final training loss is at most :data:`FIT`. ``found``: the gap is separable (verdict
    ``better``), at least :data:`MARGIN` on average, every run of both batches settled and both
    batches fit their training set; otherwise a separable gap is marked ``gap_unsettled`` (a
    large batch still optimizing after its few steps) or ``gap_underfit`` (settled on a plateau
    above :data:`FIT`): a gap of optimization, not of generalization. ``cost_s``: wall-clock
    seconds of the setting's final runs.
    """
    runs, verdicts = tables["runs"], tables["verdicts"]
    rows = []
    for s in scale.settings:
        sel = runs
        for k, v in s.items():
            sel = sel[sel[k] == v]
        done = sel[sel["status"] == "done"]
        acc = done.groupby("method")["test_accuracy"].mean()
        v = verdicts[verdicts["claim"] == f"small batch generalizes better ({label(s)})"]
        v = v.iloc[0] if len(v) else None
        diff = float(v["difference"]) if v is not None else math.nan
        settled = {m: _share(done, m, "loss_converged") for m in ("small", "large")}
        gap = bool(v is not None and v["verdict"] == "better" and diff >= MARGIN)
        both = settled["small"] == 1.0 and settled["large"] == 1.0
        loss = {m: _mean(done, m, "train_loss") for m in ("small", "large")}
        fits = {m: bool(loss[m] <= FIT) for m in ("small", "large")}
        rows.append({
            "setting": label(s), **s,
            "small_batch": scale.options["small"], "large_batch": int(s["large"]),
            "lr_small": _first(done, "small", "lr"), "lr_large": _first(done, "large", "lr"),
            "acc_small": float(acc.get("small", math.nan)),
            "acc_large": float(acc.get("large", math.nan)),
            "train_loss_small": loss["small"], "train_loss_large": loss["large"],
            "difference": diff,
            "low": float(v["low_adj"]) if v is not None else math.nan,
            "high": float(v["high_adj"]) if v is not None else math.nan,
            "seeds": int(v["pairs"]) if v is not None else 0,
            "verdict": str(v["verdict"]) if v is not None else "no runs",
            "settled_small": settled["small"], "settled_large": settled["large"],
            "fits_small": fits["small"], "fits_large": fits["large"],
            "found": gap and both and fits["small"] and fits["large"],
            "gap_unsettled": gap and not both,
            "gap_underfit": gap and both and not (fits["small"] and fits["large"]),
            "cost_s": float(sel["seconds"].sum()) if "seconds" in sel else math.nan})
    return pd.DataFrame(rows)


def _first(t: pd.DataFrame, method: str, col: str) -> float:
    v = t.loc[t["method"] == method, col]
    return float(v.iloc[0]) if len(v) else math.nan


def _share(t: pd.DataFrame, method: str, col: str) -> float:
    v = t.loc[t["method"] == method, col] if col in t else pd.Series(dtype=bool)
    return float(v.astype(bool).mean()) if len(v) else math.nan


def _mean(t: pd.DataFrame, method: str, col: str) -> float:
    v = t.loc[t["method"] == method, col]
    return float(v.mean()) if len(v) else math.nan


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


def appendix(tables: Mapping[str, pd.DataFrame], scale: Scale) -> str:
    """The phenomenon table: every setting tried, the gap and whether the regime is found."""
    ph = phenomenon(tables, scale)
    lines = ["## The search (`phenomenon.csv`)", "",
             "| setting | lr small / large | acc. small (%) | acc. large (%) | small − large "
             "(points) [Holm interval] | train loss small / large | loss settled small / "
             "large | verdict | found | cost |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in ph.itertuples():
        lines.append(
            f"| {r.setting} | {_num(r.lr_small, 'g')} / {_num(r.lr_large, 'g')} | "
            f"{_num(100 * r.acc_small, '.1f')} | {_num(100 * r.acc_large, '.1f')} | "
            f"{_num(100 * r.difference, '+.1f')} [{_num(100 * r.low, '+.1f')}, "
            f"{_num(100 * r.high, '+.1f')}] | {_num(r.train_loss_small, '.3g')} / "
            f"{_num(r.train_loss_large, '.3g')} | "
            f"{_pct(r.settled_small)} / {_pct(r.settled_large)} | {r.verdict} | "
            f"{_found(r)} | "
            f"{_duration(r.cost_s)} |")
    found, unsettled = ph[ph["found"]], ph[ph["gap_unsettled"]]
    underfit = ph[ph["gap_underfit"]]
    lines += ["", (f"The large-batch gap appears in {len(found)} of {len(ph)} settings: "
                   + ", ".join(found["setting"]) + ".") if len(found) else
              f"No setting of the {len(ph)} tried shows a separable large-batch gap of at "
              f"least {100 * MARGIN:.0f} points with both batches' training loss settled at "
              f"or below {FIT:g}."]
    if len(unsettled):
        lines.append(f"A gap with a training loss still moving (optimization, not only "
                     f"generalization): {'; '.join(unsettled['setting'])}.")
    if len(underfit):
        lines.append(f"A gap with the large batch settled above a training loss of {FIT:g} "
                     f"(underfit: optimization, not generalization): "
                     f"{'; '.join(underfit['setting'])}.")
    return "\n".join(lines)


def _found(r: Any) -> str:
    """The table's ``found`` cell: yes, or why a separable gap does not count, or no."""
    if r.found:
        return "yes"
    if r.gap_unsettled:
        return "gap, loss unsettled"
    return "gap, underfit" if r.gap_underfit else "no"


def _num(x: float, fmt: str) -> str:
    """A number in ``fmt``, or – where there is none (no finished run)."""
    return format(x, fmt) if math.isfinite(x) else "–"


def _pct(x: float) -> str:
    return "?" if not math.isfinite(x) else f"{100 * x:.0f}%"


STUDY = Study(
    name="large_batch",
    question="Where does centralized SGD generalize worse at a large batch, at a fixed budget "
             "of epochs with each batch's step tuned: the premise of the flatness-versus-"
             "optimization claims, searched for before they are tested?",
    scales=SCALES, config=config, run_name=run_name, claims=claims, stages=STAGES,
    measures={"test_accuracy": "test_accuracy", "train_loss": "train_loss"}, extra=extra,
    curves=("test_accuracy", "train_loss"), summary_columns=("test_accuracy", "train_loss"),
    setting_label=label, appendix=appendix, holdout=HOLDOUT,
    views=lambda tables, scale: {"phenomenon": phenomenon(tables, scale)},
    protocol="Centralized SGD (an all-reduce over 16 nodes, iid) at the scale's small total "
             "batch against each setting's large one, for the same epochs; each batch's step "
             "tuned on 10% held out over the scale's tuning seeds, cosine with a 5% warm-up, "
             "no weight decay; mnist1d with N training samples (1000 test), label noise on "
             "the training labels; claims Holm-adjusted over the settings with a 2-point "
             "equivalence margin. The title's step count is the longest run's (the small "
             "batch's).")


#: The tables a round's runs write, from which ``--rejudge`` rebuilds everything else.
ROUND_TABLES = ("runs", "curves", "tuning")


def join_rounds(rounds: list[Path], out: Path) -> None:
    """Write into ``out`` the runs, curves and tuning tables of ``rounds``, one after another.

    A setting's tuning and final runs depend on that setting alone (its configs, seeds and
    grids), so the rounds' tables joined are the tables one scale of all their settings would
    write (``small`` = ``round1`` + ``round2``); ``--rejudge --scale small --out OUT`` then judges
    every setting together, its claims adjusted over the whole family.

    Raises:
        FlatlabError: A round lacks a table, or two rounds hold the same setting.
    """
    joined: dict[str, list[pd.DataFrame]] = {name: [] for name in ROUND_TABLES}
    seen: dict[str, Path] = {}
    for r in rounds:
        for name in ROUND_TABLES:
            if not (Path(r) / f"{name}.csv").is_file():
                raise FlatlabError(f"{r} holds no {name}.csv; accepted: the folder of a "
                                   "finished round (runs.csv, curves.csv, tuning.csv)")
            joined[name].append(read_table(Path(r) / f"{name}.csv"))
        for setting in joined["runs"][-1]["setting"].unique():
            if setting in seen:
                raise FlatlabError(f"{setting} is in both {seen[setting]} and {r}; accepted: "
                                   "rounds of different settings")
            seen[setting] = Path(r)
    out.mkdir(parents=True, exist_ok=True)
    for name, frames in joined.items():
        pd.concat(frames, ignore_index=True).to_csv(out / f"{name}.csv", index=False)
