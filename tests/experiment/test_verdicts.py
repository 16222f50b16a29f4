"""The verdict rules of flatlab.experiment.evidence, each against its definition.

- The difference test equals scipy's paired t-test; TOST equals its hand computation and
  rejects exactly when the 90% interval lies inside the margin.
- Holm, its Shaffer cap and Benjamini-Hochberg equal their step-down/step-up definitions on
  random p-values, at every level.
- Four verdicts on synthetic tables whose answer is known; the family adjustment turns a raw
  0.03 among many claims into ``inconclusive``; the adjusted interval agrees with the adjusted
  test.
- A multi-seed choice breaks a tie within one standard error toward the grid's centre, so one
  held-out sample cannot flip it; a loss still falling and a run at chance are flagged.
"""

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from flatlab.errors import FlatlabError
from flatlab.experiment.evidence import (
    Claim,
    adjust,
    at_chance,
    benjamini_hochberg,
    edge_of_stability,
    family,
    holm,
    judge,
    loss_plateau,
    paired_test,
    robust_choice,
    time_to_target_label,
    tost,
)


def test_the_difference_test_is_scipys_paired_t_test():
    rng = np.random.default_rng(0)
    a, b = pd.Series(rng.normal(0.8, 0.02, 5)), pd.Series(rng.normal(0.79, 0.02, 5))
    t = paired_test(a, b, margin=0.01)
    ref = stats.ttest_rel(a, b)
    assert t.p == pytest.approx(ref.pvalue, rel=1e-12) and t.n == 5
    lo, hi = t.interval(0.95)
    ci = ref.confidence_interval(0.95)
    assert (lo, hi) == (pytest.approx(ci.low, abs=1e-14), pytest.approx(ci.high, abs=1e-14))


def test_tost_is_its_hand_computation():
    d = np.array([0.004, -0.002, 0.001, 0.003, 0.0])
    n, mean = len(d), d.mean()
    se = d.std(ddof=1) / math.sqrt(n)
    m = 0.01
    lower = 1 - stats.t.cdf((mean + m) / se, n - 1)  # H0: d <= -m
    upper = stats.t.cdf((mean - m) / se, n - 1)  # H0: d >= m
    got = tost(mean, se, n - 1, m)
    assert got == pytest.approx(max(lower, upper), rel=1e-10)
    assert paired_test(pd.Series(d), pd.Series(np.zeros(n)), m).p_equivalent == pytest.approx(got)
    # rejecting at alpha <=> the (1 - 2 alpha) interval lies inside (-m, m)
    for margin in np.linspace(0.001, 0.02, 40):
        half = stats.t.ppf(0.95, n - 1) * se
        inside = -margin < mean - half and mean + half < margin
        assert (tost(mean, se, n - 1, margin) < 0.05) == inside
    assert tost(0.0, 0.0, 4, 0.01) == 0.0 and tost(0.02, 0.0, 4, 0.01) == 1.0
    with pytest.raises(FlatlabError, match="margin must be positive"):
        tost(0.0, 1.0, 4, 0.0)


def _holm_rejects(p, alpha, max_true=None):
    """Holm's procedure as defined: step down while p_(j) <= alpha / c_j."""
    order = np.argsort(p, kind="stable")
    m, rejected = len(p), set()
    for j, i in enumerate(order, start=1):
        c = m - j + 1 if max_true is None else min(m - j + 1, max_true)
        if p[i] <= alpha / c:
            rejected.add(int(i))
        else:
            break
    return rejected


def _bh_rejects(p, alpha):
    """Benjamini-Hochberg as defined: reject the k smallest, k = max{j: p_(j) <= j alpha / m}."""
    order = np.argsort(p, kind="stable")
    m = len(p)
    ok = [j for j in range(1, m + 1) if p[order[j - 1]] <= j * alpha / m]
    return {int(i) for i in order[:max(ok)]} if ok else set()


@pytest.mark.parametrize("seed", range(20))
def test_holm_and_bh_equal_their_definitions(seed):
    rng = np.random.default_rng(seed)
    m = int(rng.integers(1, 30))
    p = np.where(rng.random(m) < 0.4, rng.random(m) * 0.01, rng.random(m))
    for alpha in (0.01, 0.05, 0.1):
        assert {int(i) for i in np.flatnonzero(holm(p) <= alpha)} == _holm_rejects(p, alpha)
        k = max(1, m // 2)
        got = {int(i) for i in np.flatnonzero(holm(p, max_true=k) <= alpha)}
        assert got == _holm_rejects(p, alpha, max_true=k)
        assert {int(i) for i in np.flatnonzero(benjamini_hochberg(p) <= alpha)} == _bh_rejects(
            p, alpha)
    assert np.all(holm(p) >= p) and np.all(holm(p) <= 1)
    assert np.all(holm(p, max_true=1) == np.minimum(1, np.maximum.accumulate(
        np.sort(p)))[np.argsort(np.argsort(p, kind="stable"), kind="stable")])


def test_adjust_keeps_nans_out_of_the_family_and_refuses_unknown_methods():
    p = np.array([0.01, math.nan, 0.02])
    assert holm(p)[0] == pytest.approx(0.02) and math.isnan(holm(p)[1])
    assert holm(p)[2] == pytest.approx(0.02)  # max(0.02, 1 * 0.02)
    assert adjust(p, "none")[2] == 0.02
    with pytest.raises(FlatlabError, match="accepted: holm, bh, none"):
        adjust(p, "bonferroni")


def _table(diffs, noise, seeds=5, seed=0):
    """Methods 'ref' and one method per entry of ``diffs`` (its true advantage), paired."""
    rng = np.random.default_rng(seed)
    base = 0.8 + 0.02 * rng.standard_normal(seeds)
    rows = [{"method": "ref", "seed": s, "status": "done", "test_accuracy": base[s],
             "converged": True} for s in range(seeds)]
    for name, (d, sd) in zip(diffs, zip(diffs.values(), noise, strict=True), strict=True):
        shift = d + sd * rng.standard_normal(seeds)
        rows += [{"method": name, "seed": s, "status": "done",
                  "test_accuracy": base[s] + shift[s], "converged": True}
                 for s in range(seeds)]
    return pd.DataFrame(rows)


def test_the_four_verdicts_on_tables_with_known_answers():
    t = _table({"up": 0.05, "down": -0.05, "same": 0.0, "noisy": 0.0},
               [0.003, 0.003, 0.001, 0.05], seeds=8)
    claims = [Claim(f"{m} beats ref", m, "ref", margin=0.01, why="one accuracy point")
              for m in ("up", "down", "same", "noisy")]
    got = judge(t, claims).set_index("a")
    assert got.verdict.to_dict() == {"up": "better", "down": "worse", "same": "equivalent",
                                     "noisy": "inconclusive"}
    assert (got.adjustment == "holm").all()
    # a lower-is-better claim reads the same difference the other way
    low = judge(t, [Claim("up is flatter", "up", "ref", "less", margin=0.01)])
    assert low.verdict.item() == "worse"


def test_the_family_adjustment_decides_and_its_interval_agrees():
    # one claim with raw p about 0.03 and nine null ones: significant alone, not in the family
    rng = np.random.default_rng(3)
    d = np.array([0.011, 0.012, 0.001, 0.013, 0.007])
    alone = paired_test(pd.Series(d), pd.Series(np.zeros(5)), 0.001)
    assert 0.01 < alone.p < 0.05
    rows = [{"claim": "real", "metric": "x", "a": "a", "b": "b", "direction": "greater",
             "difference": alone.mean, "low": 0, "high": 0, "se": alone.se, "pairs": 5,
             "margin": 0.001, "p": alone.p, "p_equivalent": alone.p_equivalent,
             "untrainable": False, "converged": True, "note": ""}]
    for i in range(9):
        z = paired_test(pd.Series(rng.normal(0, 0.01, 5)), pd.Series(np.zeros(5)), 0.001)
        rows.append(rows[0] | {"claim": f"null {i}", "difference": z.mean, "se": z.se,
                               "p": z.p, "p_equivalent": z.p_equivalent})
    raw = family(pd.DataFrame(rows[:1]))
    assert raw.verdict.item() == "better"  # a family of one: unadjusted
    fam = family(pd.DataFrame(rows))
    assert fam.verdict.iloc[0] == "inconclusive"
    assert fam.p_adj.iloc[0] == pytest.approx(holm(np.r_[fam.p, fam.p_equivalent],
                                                   max_true=10)[0])
    for r in fam.itertuples():  # the adjusted interval excludes 0 exactly when p_adj < alpha
        assert (r.low_adj > 0 or r.high_adj < 0) == (r.p_adj < 0.05)
    bh = family(pd.DataFrame(rows), adjustment="bh")
    assert (bh.adjustment == "bh").all()
    assert bh.p_adj.to_numpy() == pytest.approx(
        benjamini_hochberg(np.r_[bh.p, bh.p_equivalent])[:10])


def test_a_chance_level_method_gets_no_verdict_and_leaves_the_family():
    t = _table({"up": 0.05}, [0.003], seeds=5)
    t["untrainable"] = False
    t.loc[t.method == "up", "untrainable"] = True
    got = judge(t, [Claim("up beats ref", "up", "ref")])
    assert got.verdict.item() == "no verdict" and "untrainable at this grid: up" in got.note.item()
    assert math.isnan(got.p_adj.item())


def test_claims_refuse_a_margin_that_is_not_positive_and_an_unknown_direction():
    with pytest.raises(FlatlabError, match="margin must be a positive number"):
        Claim("x", "a", "b", margin=0.0)
    with pytest.raises(FlatlabError, match="accepted: greater, less"):
        Claim("x", "a", "b", "better")


def test_a_relative_margin_is_a_fraction_of_the_reference_mean():
    t = _table({"a": 0.0}, [0.001])
    got = judge(t, [Claim("a flat as ref", "a", "ref", "less", margin=0.1, relative=True)])
    ref = t[t.method == "ref"].test_accuracy.mean()
    assert got.margin.item() == pytest.approx(0.1 * ref)


def test_a_claim_within_runs_compares_two_columns_of_one_method_by_the_one_sample_t_test():
    rng = np.random.default_rng(5)
    pred = 1.0 + 0.5 * rng.random(6)
    rows = [{"method": "m", "seed": s, "status": "done", "converged": True, "gap": g, "pred": p}
            for s, (g, p) in enumerate(zip(pred * (1 + 0.02 * rng.standard_normal(6)), pred,
                                           strict=True))]
    t = pd.DataFrame(rows)
    got = judge(t, [Claim("the gap is its prediction", "m", "m", margin=0.2, relative=True,
                          value="gap", against="pred")]).iloc[0]
    d = t.gap - t.pred
    assert got.difference == pytest.approx(d.mean(), rel=1e-12)
    assert got.p == pytest.approx(stats.ttest_1samp(d, 0.0).pvalue, rel=1e-10)
    assert got.margin == pytest.approx(0.2 * t.pred.mean(), rel=1e-12)
    assert got.verdict == "equivalent" and got.metric == "gap − pred" and got.pairs == 6
    above = judge(t.assign(chance=0.1, share=0.5 + 0.01 * rng.standard_normal(6)), [
        Claim("share above chance", "m", "m", margin=0.05, value="share", against="chance")])
    assert above.verdict.item() == "better"


def test_a_tie_within_one_standard_error_breaks_toward_the_grid_centre():
    lrs = [0.01, 0.03, 0.1, 0.3, 0.9]
    # 0.9 is best by one held-out sample of 1197 (0.00084) and ties with 0.3 and 0.1
    means = [0.80, 0.90, 0.9510, 0.9515, 0.95234]
    c = robust_choice(lrs, means, [0.003] * 5)
    assert c.best == 0.9 and c.ties == (0.1, 0.3, 0.9)
    assert c.chosen == 0.1 and c.interior and c.next_value is None  # nearest the centre
    # moving the edge by one sample either way does not change the choice
    for shift in (-1 / 1197, 1 / 1197):
        assert robust_choice(lrs, [*means[:4], means[4] + shift], [0.003] * 5).chosen == 0.1
    # without a tolerance (one seed) the edge wins and the grid must be extended
    one = robust_choice(lrs, means, [math.nan] * 5)
    assert one.chosen == 0.9 and not one.interior and one.next_value == pytest.approx(2.7)
    # a value that diverged on any seed is out and bounds the grid
    div = robust_choice(lrs, means, [0.0] * 5, [False, False, False, False, True])
    assert div.chosen == 0.3 and div.interior and div.next_value is None


def test_a_falling_loss_is_not_converged_and_a_plateau_is():
    steps = np.arange(0, 3001, 100)
    falling = 0.5 * np.exp(-steps / 1500)  # falls 1.5x over the last 600 steps
    c = loss_plateau(steps, falling)
    assert not c.converged and c.change == pytest.approx(math.exp(-600 / 1500) - 1, rel=0.05)
    flat = 0.01 + 0.5 * np.exp(-steps / 100)
    noisy = flat * (1 + 0.05 * np.random.default_rng(0).standard_normal(len(steps)))
    assert loss_plateau(steps, flat).converged and loss_plateau(steps, noisy).converged
    assert not loss_plateau(steps, np.r_[falling[:-1], math.nan]).converged


def test_runs_at_chance_are_flagged_apart_from_runs_still_moving():
    assert at_chance([0.089, 0.103, 0.18, 0.21, 0.5, math.nan]).tolist() == [
        True, True, True, False, False, False]
    assert at_chance(0.55, classes=2) and not at_chance(0.75, classes=2)


def test_resolution_and_edge_of_stability_labels():
    assert time_to_target_label(50, 50) == "≤ 50" and time_to_target_label(150, 50) == "150"
    assert time_to_target_label(math.nan, 50) == "–"
    assert edge_of_stability(0.1, 20.0) == pytest.approx(1.0)


def test_re_deciding_a_family_recomputes_its_own_notes():
    t = _table({"up": 0.05, "same": 0.0}, [0.003, 0.001], seeds=8)
    once = judge(t, [Claim("up beats ref", "up", "ref", margin=0.2),
                     Claim("same beats ref", "same", "ref")])
    assert once.note.iloc[0] == "smaller than the margin"
    twice = family(once)
    pd.testing.assert_frame_equal(twice, once)
