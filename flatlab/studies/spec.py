"""A study as a specification: what is compared, how it is tuned, what is claimed, by what margin.

A :class:`Study` declares its methods and settings per scale (:class:`Scale`), the run config of a
point, its tuning stages (:class:`Stage`: a hyper-parameter, its initial grid, bracketed on a
held-out split over several seeds), the columns read from each final run, and its claims
(:class:`~flatlab.experiment.evidence.Claim`, each with its equivalence margin and why). The
pipeline (:mod:`flatlab.studies.pipeline`) does the rest the same way for every study:
tune → final runs → convergence → verdicts → tables → figures → report.

A point is a plain dict: the setting's columns (``nodes``, ``alpha``, ...), ``method``, and one
key per tuned hyper-parameter once it is chosen. A study written by a user is one file::

    from flatlab.experiment.evidence import Claim
    from flatlab.studies import Scale, Stage, Study, main

    def config(point, scale, seed, holdout):
        return {...}  # a run config (docs/reference/environment.md)

    STUDY = Study(
        name="mine", question="Does A beat B?", config=config,
        scales={"small": Scale(settings=({"nodes": 8},), methods=("a", "b"),
                               seeds=(0, 1, 2, 3, 4), steps=2000, every=100)},
        stages=(Stage("lr", lambda p, s: (0.01, 0.03, 0.1, 0.3)),),
        claims=lambda scale: [Claim("a beats b", "a", "b", margin=0.01,
                                    why="one accuracy point: the tables' resolution")])

    if __name__ == "__main__":
        raise SystemExit(main(STUDY))
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from flatlab.experiment.evidence import Claim

__all__ = ["Scale", "Stage", "Study", "Point"]

#: A point: the setting's columns, ``method``, and the chosen hyper-parameters.
Point = Mapping[str, Any]


@dataclass(frozen=True)
class Scale:
    """One size of a study (``tiny`` for the test suite, ``small`` for 2 CPU cores, ``full``).

    Attributes:
        settings: Each setting as a dict of columns (``{"nodes": 8, "alpha": 0.1}``), in the
            order tables show them; one empty dict for a study with a single setting.
        methods: The compared methods (study labels).
        seeds: Seeds of the final runs (initialization, data and minibatches all change).
        steps: Training steps of every run (tuning runs too: tuned at the final length).
        every: Measurement period of the final runs (curves, convergence, time to target).
        tune_seeds: Seeds each tuned value runs with (at least 3 for a choice one held-out
            sample cannot flip).
        options: Anything else the study's config reads (batch sizes, targets, ...).
    """

    settings: tuple[Mapping[str, Any], ...]
    methods: tuple[str, ...]
    seeds: tuple[int, ...]
    steps: int
    every: int
    tune_seeds: tuple[int, ...] = (0, 1, 2)
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Stage:
    """One tuning stage: a hyper-parameter chosen on held-out data, its grid bracketed.

    Stages run in order; a later stage's points carry the values chosen before it (learning
    rate, then SAM's ρ at that rate). The choice is
    :func:`flatlab.experiment.study.tune_bracketed`: the mean over ``Scale.tune_seeds``, ties
    within one standard error broken toward the grid's centre, a best value at an edge
    extended by the grid's own ratio.

    Attributes:
        hparam: The key the value takes in a point (``lr``, ``rho``, ``damping``, ``gamma``).
        grid: ``(point, scale) -> initial values`` for one setting and method (empty: the
            stage does not tune this method).
        fixed: ``(point, chosen) -> value or None`` for a method the stage does not tune: the
            value it runs with (``chosen`` maps a method to its choice in the same setting, for
            a value shared with a reference method); None leaves the key out.
        limits: ``point -> (low, high)``, the values the hyper-parameter may take.
        extensions: Values added at most per method and setting.
        why: Why this grid (the report states it).
    """

    hparam: str
    grid: Callable[[Point, Scale], Sequence[float]]
    fixed: Callable[[Point, Mapping[str, float]], float | None] | None = None
    limits: Callable[[Point], tuple[float, float]] | None = None
    extensions: int = 4
    why: str = ""


@dataclass(frozen=True)
class Study:
    """A study: everything the pipeline needs to run, check, judge and report it.

    Attributes:
        name: Folder and file name (``results/<name>-<scale>``, ``paper_figs/out/<name>``).
        question: The question in one paragraph (the report's first line).
        scales: Scale name -> :class:`Scale`.
        config: ``(point, scale, seed, holdout) -> run config``; ``holdout`` is the share of the
            training set held out (0 for final runs).
        run_name: ``(point, seed) -> run folder name`` (default: the point's values in order).
        stages: The tuning stages, in order (empty: nothing tuned).
        claims: ``scale -> claims``; a claim judged on a derived table is ``(table, Claim)``.
        measures: Run column -> :func:`flatlab.results.summary` column, read at the end.
        extra: ``(run folder, point, scale) -> columns`` read from a final run beyond
            ``measures`` (steps to a target, ...).
        curves: Metrics kept per final run in ``curves.csv`` (the loss plateau needs
            ``train_loss``, the held-out check ``test_accuracy``).
        derived: ``(runs table, scale) -> {name: table}`` judged by claims that name them
            (a change between settings, say).
        phases: Further phases, ``(study, scale, runs folder, workers, tables) -> {name:
            table}`` (an escape experiment, a timing), run after the final runs.
        summary_columns: Run columns averaged over seeds in ``summary.csv``.
        setting_label: ``setting -> text`` for tables (default ``k=v, ...``).
        step_size: ``(point, scale) -> η at the measurement`` for ``η·λ_max/2`` columns
            (None: the study measures no λ_max).
        figures: ``(tables, scale) -> {suffix: figure}``; suffix ``""`` is ``<name>.png``.
        classes: Classes of the task (a run within 10 points of ``1/classes`` is at chance).
        holdout: Share of the training set held out for tuning.
        protocol: Markdown describing the protocol, placed before the report's tables.
        appendix: ``(tables, scale) -> Markdown`` appended to ``summary.md`` (the study's own
            tables: times to a target, a timing, a matched-loss comparison with its steps).
        includes: ``(setting, method, scale) -> bool``: whether a method runs in a setting
            (None: every method in every setting). Centralized SGD runs on no graph, say, and
            an extra step size only for some methods: the runs are then not a cross product.
        units: Metric -> ``(scale, unit, digits)`` for the verdict tables and prose (default:
            accuracies in points, ``steps*`` in steps, anything else as is with 2 digits).
        views: ``(tables, scale) -> {name: table}`` built from the judged tables (verdicts and
            summary included) and written beside them, recomputed on every report and
            re-judgment (a search's one-row-per-setting table, say).
    """

    name: str
    question: str
    scales: Mapping[str, Scale]
    config: Callable[[Point, Scale, int, float], dict[str, Any]]
    claims: Callable[[Scale], Sequence[Claim | tuple[str, Claim]]]
    stages: tuple[Stage, ...] = ()
    run_name: Callable[[Point, int], str] | None = None
    measures: Mapping[str, str] = field(
        default_factory=lambda: {"test_accuracy": "test_accuracy", "train_loss": "train_loss"})
    extra: Callable[[Path, Point, Scale], dict[str, Any]] | None = None
    curves: tuple[str, ...] = ("test_accuracy", "train_loss")
    derived: Callable[[pd.DataFrame, Scale], dict[str, pd.DataFrame]] | None = None
    phases: tuple[Callable[..., dict[str, pd.DataFrame]], ...] = ()
    summary_columns: tuple[str, ...] = ("test_accuracy", "train_loss")
    setting_label: Callable[[Mapping[str, Any]], str] | None = None
    step_size: Callable[[Point, Scale], float] | None = None
    figures: Callable[[dict[str, pd.DataFrame], Scale], dict[str, Any]] | None = None
    classes: int = 10
    holdout: float = 0.1
    protocol: str = ""
    appendix: Callable[[dict[str, pd.DataFrame], Scale], str] | None = None
    units: Mapping[str, tuple[float, str, int]] = field(default_factory=dict)
    includes: Callable[[Mapping[str, Any], str, Scale], bool] | None = None
    views: Callable[[dict[str, pd.DataFrame], Scale], dict[str, pd.DataFrame]] | None = None

    def runs(self, setting: Mapping[str, Any], method: str, scale: Scale) -> bool:
        """Whether ``method`` runs in ``setting`` at ``scale`` (:attr:`includes`)."""
        return self.includes is None or bool(self.includes(setting, method, scale))

    def setting_keys(self, scale: Scale) -> list[str]:
        """The setting columns, in the order of the first setting."""
        return list(scale.settings[0]) if scale.settings else []

    def label(self, setting: Mapping[str, Any]) -> str:
        """A setting as tables show it."""
        if self.setting_label is not None:
            return self.setting_label(setting)
        return ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                         for k, v in setting.items())

    def folder(self, point: Point, seed: int) -> str:
        """The run folder name of a point and seed."""
        if self.run_name is not None:
            return self.run_name(point, seed)
        parts = [f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                 for k, v in point.items() if k != "method"]
        return ",".join([str(point.get("method", "")), *parts, f"seed={seed}"])
