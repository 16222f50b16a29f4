"""The study rules of flatlab.experiment.evidence, on synthetic tables with known answers.

- A curve still rising over its last 20% is flagged ``not converged``; a settled (or noisy but
  flat) one passes; the change is the exact difference over the window.
- A best value at a grid edge is extended by the grid's own ratio until interior; an extension
  that diverges bounds it; an interior best is left alone.
- The paired interval equals scipy's paired t-test interval and the closed form
  ``mean ± t_{0.975, n-1} s/√n``; the verdicts follow the interval.
"""

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from flatlab.errors import FlatlabError
from flatlab.experiment.evidence import (
    bracket,
    convergence,
    grid_check,
    paired_difference,
    sensitivity,
    verdict,
)


def test_a_still_rising_curve_is_not_converged():
    steps = np.arange(0, 1001, 100)
    rising = 0.5 + 0.4 * steps / 1000  # +0.08 over the last 200 steps
    c = convergence(steps, rising)
    assert not c.converged and c.label == "not converged"
    assert (c.start, c.end) == (800, 1000) and c.change == pytest.approx(0.08, abs=1e-12)


def test_a_settled_or_noisy_flat_curve_is_converged():
    steps = np.arange(0, 1001, 100)
    settled = 0.9 - 0.4 * np.exp(-steps / 50)
    assert convergence(steps, settled).converged
    noisy = np.r_[np.linspace(0.3, 0.8, 8), [0.805, 0.797, 0.803]]
    c = convergence(steps, noisy)
    assert c.converged and c.change == pytest.approx(0.803 - 0.805, abs=1e-12)
    # one point in the window cannot show a run has settled
    assert not convergence([0, 1000], [0.5, 0.9], last=0.1).converged


@pytest.mark.parametrize("steps, values, last", [([0, 1], [0.1], 0.2), ([0, 2, 1], [0, 0, 0], 0.2),
                                                 ([0, 1], [0, 0], 0.0)])
def test_convergence_refuses_bad_curves(steps, values, last):
    with pytest.raises(FlatlabError):
        convergence(steps, values, last=last)


def _peaked(peak, diverge_above=math.inf):
    """A held-out accuracy peaked at ``peak`` in log lr, diverging above a boundary."""
    def evaluate(lr):
        if lr > diverge_above:
            return math.nan, True
        return 0.9 - 0.1 * math.log10(lr / peak) ** 2, False
    return evaluate


def test_an_edge_best_is_extended_by_the_grid_ratio_until_interior():
    table = bracket([0.01, 0.03, 0.09], _peaked(0.5))
    # ratio 3: 0.27 (best, at the edge), 0.81 (best, at the edge; nearer the peak 0.5 in
    # log lr than 0.27), 2.43 (worse): 0.81 is interior
    assert table.attrs["interior"]
    added = table.loc[table.extended, "value"].tolist()
    assert added == pytest.approx([0.27, 0.81, 2.43])
    assert table.loc[table.best, "value"].item() == pytest.approx(0.81)


def test_a_diverging_extension_bounds_the_grid():
    table = bracket([0.01, 0.1], _peaked(10.0, diverge_above=0.5))
    assert table.attrs["interior"] and table.attrs["extensions"] == pytest.approx([1.0])
    assert table.loc[table.best, "value"].item() == pytest.approx(0.1)
    assert table.loc[np.isclose(table.value, 1.0), "diverged"].item()


def test_an_interior_best_is_left_alone_and_the_low_edge_extends_down():
    assert grid_check([0.1, 0.3, 0.9], [0.5, 0.8, 0.6]).interior
    low = grid_check([0.1, 0.2, 0.4], [0.9, 0.8, 0.7])
    assert (low.edge, low.next_value, low.ratio) == ("low", pytest.approx(0.05), 2.0)
    loss = grid_check([0.1, 0.2, 0.4], [0.9, 0.8, 0.7], higher_is_better=False)
    assert (loss.edge, loss.next_value) == ("high", pytest.approx(0.8))
    nothing = grid_check([0.1, 0.2], [math.nan, math.nan], [True, True])
    assert math.isnan(nothing.best) and nothing.next_value is None


def test_the_paired_interval_is_the_paired_t_interval():
    rng = np.random.default_rng(0)
    a = pd.Series(0.8 + 0.02 * rng.standard_normal(5), index=range(5))
    b = pd.Series(0.78 + 0.02 * rng.standard_normal(6), index=range(6))  # seed 5 unpaired
    p = paired_difference(a, b)
    d = (a - b.loc[range(5)]).to_numpy()
    half = stats.t.ppf(0.975, 4) * d.std(ddof=1) / math.sqrt(5)
    assert p.n == 5 and p.mean == pytest.approx(d.mean(), abs=1e-15)
    assert (p.low, p.high) == (pytest.approx(d.mean() - half, abs=1e-15),
                               pytest.approx(d.mean() + half, abs=1e-15))
    ci = stats.ttest_rel(a.loc[range(5)], b.loc[range(5)]).confidence_interval(0.95)
    assert (p.low, p.high) == (pytest.approx(ci.low, abs=1e-12), pytest.approx(ci.high, abs=1e-12))


def test_interval_readings_follow_the_interval():
    idx = range(5)
    up = paired_difference(pd.Series([0.9, 0.91, 0.92, 0.9, 0.91], index=idx),
                           pd.Series([0.8, 0.8, 0.81, 0.8, 0.79], index=idx))
    assert verdict(up, "greater") == "better"
    assert verdict(up, "less") == "worse"
    assert verdict(up, "greater", margin=0.2) == "worse"  # surely less than 20 points
    tie = paired_difference(pd.Series([0.9, 0.8, 0.85, 0.82, 0.88], index=idx),
                            pd.Series([0.85, 0.86, 0.84, 0.83, 0.87], index=idx))
    assert verdict(tie, "greater") == "inconclusive"  # an interval with zero is not "the same"
    one = paired_difference(pd.Series([0.9]), pd.Series([0.1]))
    assert one.n == 1 and verdict(one, "greater") == "inconclusive"  # one seed decides nothing
    with pytest.raises(FlatlabError, match="claim 'better' is unknown"):
        verdict(up, "better")


def test_sensitivity_marks_the_divergence_boundary():
    t = pd.DataFrame({"method": ["a"] * 6, "lr": [0.1, 0.1, 0.3, 0.3, 0.9, 0.9],
                      "acc": [0.7, 0.72, 0.8, 0.82, math.nan, 0.5],
                      "status": ["done", "done", "done", "done", "diverged", "done"]})
    s = sensitivity(t, ["method"], "lr", "acc")
    assert s.lr.tolist() == [0.1, 0.3, 0.9] and (s.boundary == 0.9).all()
    assert s.score_mean.tolist() == pytest.approx([0.71, 0.81, 0.5])
    assert s.diverged.tolist() == [0, 0, 1] and math.isnan(s.score_se.iloc[2])


def test_a_run_directory_curve_is_checked(tmp_path):
    from flatlab.experiment import run
    from flatlab.experiment.evidence import run_convergence

    cfg = {"name": "c", "dtype": "float64", "data": {"name": "digits", "batch_size": 8},
           "model": {"name": "mlp", "options": {"hidden": [8]}},
           "topology": {"name": "ring", "nodes": 4}, "algorithm": {"name": "diffusion"},
           "optim": {"lr": 0.2, "schedule": "constant", "warmup": 0}, "train": {"steps": 40},
           "measure": {"every": 4, "train_subset": 100, "test_subset": 100}}
    assert run(cfg, tmp_path / "r", progress=False).status == "done"
    m = pd.read_parquet(tmp_path / "r" / "metrics.parquet")
    curve = m[(m.metric == "test_accuracy") & (m.scope == "avg")].sort_values("step")
    want = convergence(curve.step.to_numpy(), curve.value.to_numpy())
    got = run_convergence(tmp_path / "r")
    assert got == want and (got.start, got.end) == (32, 40)
    with pytest.raises(FlatlabError, match="no metric 'hessian_top'"):
        run_convergence(tmp_path / "r", "hessian_top")


def test_judge_pairs_by_seed_and_flags_unconverged_runs():
    from flatlab.experiment.evidence import Claim, change_between, judge

    rng = np.random.default_rng(1)
    rows, bases = [], 0.8 + 0.03 * rng.standard_normal(5)  # one per seed, shared by all
    for setting, gap in (("easy", 0.0), ("hard", 0.05)):
        for seed in range(5):
            base = bases[seed]
            rows += [{"setting": setting, "method": "a", "seed": seed, "status": "done",
                      "test_accuracy": base + gap + 0.002 * seed, "converged": True},
                     {"setting": setting, "method": "b", "seed": seed, "status": "done",
                      "test_accuracy": base - 0.001 * seed, "converged": seed != 3}]
    t = pd.DataFrame(rows)
    t.loc[(t.method == "b") & (t.seed == 4) & (t.setting == "hard"), "status"] = "diverged"
    got = judge(t, [Claim("a beats b when hard", "a", "b", where={"setting": "hard"}),
                    Claim("b trails a when easy", "b", "a", "less", where={"setting": "easy"})])
    hard = got.iloc[0]
    a = t[(t.setting == "hard") & (t.method == "a")].set_index("seed").test_accuracy
    b = t[(t.setting == "hard") & (t.method == "b") & (t.status == "done")].set_index(
        "seed").test_accuracy
    ci = stats.ttest_rel(a.loc[b.index], b).confidence_interval(0.95)
    assert hard.pairs == 4 and hard.verdict == "no verdict"  # b diverged on a final seed
    assert (hard.low, hard.high) == (pytest.approx(ci.low), pytest.approx(ci.high))
    assert not hard.converged and math.isnan(hard.p_adj)
    assert hard.note == ("1 of 10 runs not converged; 1 of 10 runs diverged or failed; "
                         "untrainable at this grid: b")
    assert got.iloc[1].verdict == "better" and got.iloc[1].setting == "easy"
    # the change from easy to hard, paired by seed: a gains 5 points, b nothing
    ch = change_between(t, "setting", "easy", "hard", keys=["method"])
    assert ch[ch.method == "a"].test_accuracy.to_numpy() == pytest.approx([0.05] * 5)
    assert len(ch[ch.method == "b"]) == 4 and not ch[(ch.method == "b")
                                                      & (ch.seed == 3)].converged.item()
    drop = judge(ch, [Claim("a gains more", "a", "b")])
    assert drop.verdict.item() == "better" and drop.pairs.item() == 4
    with pytest.raises(FlatlabError, match="more than one run per seed"):
        judge(t, [Claim("unselected", "a", "b")])  # both settings: two runs per seed


def test_curves_convergence_checks_every_run_of_a_long_table():
    from flatlab.experiment.evidence import curves_convergence

    steps = np.arange(0, 1001, 100)
    rising = 0.5 + 0.0004 * steps  # +8 points over the last 200 steps
    flat = np.minimum(0.9, 0.3 + 0.003 * steps)  # settled at 0.9 from step 200
    t = pd.concat([pd.DataFrame({"method": m, "seed": s, "step": steps, "test_accuracy": v})
                   for m, v in (("rising", rising), ("flat", flat)) for s in (0, 1)])
    got = curves_convergence(t, ["method", "seed"])
    assert got.converged.tolist() == [False, False, True, True]
    assert got.change.tolist() == pytest.approx([0.08, 0.08, 0.0, 0.0])
    assert (got.start == 800).all() and (got.end == 1000).all()


def test_with_convergence_joins_each_runs_check_and_flags_runs_without_a_curve():
    from flatlab.experiment.evidence import with_convergence

    steps = np.arange(0, 1001, 100)
    curves = pd.concat(
        [pd.DataFrame({"method": m, "seed": 0, "step": steps, "metric": metric, "value": v})
         for m, v in (("rising", 0.5 + 0.0004 * steps), ("flat", np.full(len(steps), 0.9)))
         for metric, v in (("test_accuracy", v), ("train_loss", 1 - v))])
    table = pd.DataFrame({"method": ["flat", "rising", "lost"], "seed": [0, 0, 0],
                          "converged": [False, True, True], "acc": [0.9, 0.9, 0.1]})
    got = with_convergence(table, curves, ["method", "seed"])
    # the table's own rows and order, its stale convergence columns replaced
    assert got["method"].tolist() == ["flat", "rising", "lost"] and got["acc"].tolist() == [
        0.9, 0.9, 0.1]
    assert got["converged"].tolist() == [True, False, False]
    assert got["change"].iloc[:2].tolist() == pytest.approx([0.0, 0.08])
    assert np.isnan(got["change"].iloc[2])  # no curve: never counted as settled
    # another metric's curve: train_loss falls by 0.08 on the rising run, so the same verdicts
    by_loss = with_convergence(table, curves, ["method", "seed"], metric="train_loss")
    assert by_loss["converged"].tolist() == [True, False, False]


def test_a_flat_grid_is_not_extended():
    flat = grid_check([0.01, 0.03, 0.1], [0.1, 0.1, 0.1])
    assert flat.interior and flat.next_value is None
    edge_tie = grid_check([0.01, 0.03, 0.1], [0.5, 0.9, 0.9])  # ties the interior 0.03
    assert edge_tie.interior and edge_tie.best == 0.03
    alone = grid_check([0.01, 0.03], [0.9, 0.9])  # two values: no interior to tie with
    assert not alone.interior and alone.edge == "low"


def test_extension_rounds_clips_to_the_limit_and_stops_there():
    from flatlab.experiment.evidence import extension

    assert extension([0.01, 0.03], [0.9, 0.5]) == 0.00333  # 0.01 / 3, three digits
    assert extension([0.1, 0.3], [0.5, 0.9], limits=(0.0, 1.0)) == 0.9
    assert extension([0.3, 0.9], [0.5, 0.9], limits=(0.0, 1.0)) == 1.0  # 2.7 clipped
    assert extension([0.3, 1.0], [0.5, 0.9], limits=(0.0, 1.0)) is None  # at its limit
    assert extension([0.1, 0.3, 0.9], [0.5, 0.9, 0.6]) is None  # interior
