"""The flatness-versus-optimization study end to end at its tiny scale (so it cannot rot)."""

import math

import pandas as pd
import pytest

import flatlab.experiment.evidence
from flatlab.theory import predicted_consensus_distance
from tests.analysis import load_study


def _module():
    return load_study("tradeoff")


def test_tiny_scale_trains_escapes_overlays_and_draws(tmp_path):
    mod = _module()
    assert mod.main(["--scale", "tiny", "--out", str(tmp_path), "--jobs", "2"]) == 0
    grid = mod.SCALES["tiny"]
    runs = pd.read_csv(tmp_path / "runs.csv")
    assert (runs["status"] == "done").all()
    # every final run carries the convergence check of its test-accuracy curve, and the paper's
    # claims are judged seed by seed
    curves_table = pd.read_csv(tmp_path / "curves.csv")
    acc = curves_table[curves_table["metric"] == "test_accuracy"]
    for r in runs.itertuples():
        c = acc[(acc.regime == r.regime) & (acc.topology == r.topology) & (acc.method == r.method)
                & (acc.lr == r.lr) & (acc.seed == r.seed)].sort_values("step")
        want = flatlab.experiment.evidence.convergence(c.step, c.value)
        assert (r.converged, r.change) == (want.converged, pytest.approx(want.change,
                                                                          nan_ok=True))
    verdicts = pd.read_csv(tmp_path / "verdicts.csv")
    assert "diffusion flatter than centralized" in set(verdicts["claim"])
    assert set(verdicts["verdict"]) <= set(flatlab.experiment.evidence.VERDICTS)
    # centralized once per regime and seed; the others per topology, plus the extra step size
    per_regime = 1 + 2 * len(grid["topologies"])
    assert len(runs) == 2 * per_regime + 2 * len(grid["extra_topologies"])
    for col in ("hessian_top", "hessian_trace", "sharpness", "train_loss", "grad_norm",
                "test_accuracy", "hessian_top_start"):
        assert runs[col].notna().all(), col
    dec = runs[runs["method"] != "centralized"]
    assert dec[["sigma2", "zeta2", "rho"]].notna().all().all()
    # the same initialisation for every method of a seed: equal flatness at step 0
    assert runs["hessian_top_start"].nunique() == 1
    # diffusion on the complete graph is centralized SGD: no disagreement at all
    comp = runs[(runs["topology"] == "complete") & (runs["method"] == "diffusion")]
    assert (comp["consensus_distance"] < 1e-12).all()
    # the overlay is the library's prediction from the measured inputs
    steady = pd.read_csv(tmp_path / "steady.csv")
    r = steady.iloc[0]
    p = predicted_consensus_distance(r["lr"], rho=r["rho"], sigma2=r["sigma2"],
                                     zeta2=r["zeta2"], form=r["method"])
    assert r["predicted"] == pytest.approx(p.total, rel=1e-12)
    assert set(steady["method"]) == {"consensus", "diffusion"}
    bound = pd.read_csv(tmp_path / "bound.csv")
    assert (bound["bound_total"] > 0).all() and set(bound["T"]) == {2, 4, 6}
    # the escape starts every method at large-batch centralized's final x̄ (the same loss)
    esc = pd.read_csv(tmp_path / "escape.csv")
    start = esc[(esc["step"] == 0) & (esc["metric"] == "train_loss")]["value"]
    lb = runs[(runs["regime"] == "large-batch") & (runs["method"] == "centralized")]
    assert start.nunique() == 1
    assert math.isclose(start.iloc[0], lb["train_loss"].iloc[0], rel_tol=1e-5)
    assert set(esc["method"]) == set(grid["methods"])
    for name in ("scatter", "accuracy", "consensus", "escape", "bound"):
        assert (tmp_path / f"tradeoff_{name}.png").stat().st_size > 10_000
    # --report rebuilds everything from disk without training
    assert mod.main(["--scale", "tiny", "--out", str(tmp_path), "--report"]) == 0
    assert pd.read_csv(tmp_path / "runs.csv")["sigma2"].notna().sum() == len(dec)
