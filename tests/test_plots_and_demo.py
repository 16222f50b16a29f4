import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import pandas as pd  # noqa: E402
import pytest  # noqa: E402

import flatlab.results  # noqa: E402
from flatlab.demo import (  # noqa: E402
    BATCHES,
    FIT,
    METHODS,
    SEEDS,
    TRAIN,
    demo_runs,
    paired_gap,
    run_demo,
)
from flatlab.plots import spectral_gap  # noqa: E402
from flatlab.theory import spectral_gap_study  # noqa: E402


def test_study_table_and_figure():
    study = spectral_gap_study(("ring", "torus", "hypercube", "one-peer-exponential"),
                               (8, 16, 25, 32))
    # sizes a generator refuses are left out: hypercube and one-peer need powers of two
    assert 25 not in set(study.loc[study.topology == "hypercube", "n"])
    assert 25 in set(study.loc[study.topology == "torus", "n"])
    assert set(study.algorithm) == {"dsgd", "gradient-tracking"}
    ring = study[(study.topology == "ring") & (study.algorithm == "dsgd")]
    assert ring.spectral_gap.is_monotonic_decreasing
    assert ring.transient_iterations.is_monotonic_increasing
    fig = spectral_gap(study)
    ax_gap, ax_tr = fig.axes[:2]
    assert ax_gap.get_xscale() == "log" and ax_gap.get_yscale() == "log"
    assert len(ax_gap.get_lines()) >= 4
    assert ax_tr.get_legend() is not None


def test_plot_refuses_a_table_without_the_columns():
    with pytest.raises(ValueError, match="lacks columns"):
        spectral_gap(pd.DataFrame({"n": [1]}))


def test_demo_trains_measures_and_writes_its_table_and_figures(tmp_path, capsys):
    png = run_demo(tmp_path, small=True, progress=False, workers=2)  # both cores
    assert png == tmp_path / "tradeoff.png" and png.stat().st_size > 10_000
    for name in ("tradeoff.pdf", "curves.png", "curves.pdf"):
        assert (tmp_path / name).stat().st_size > 5_000
    table = pd.read_csv(tmp_path / "table.csv")
    # small batch first, then large; methods in METHODS' order; seeds inside (two at --small)
    assert list(table.regime) == ["small-batch"] * 4 + ["large-batch"] * 4
    assert list(table.method) == [m for m in METHODS for _ in (0, 1)] * 2
    assert list(table.seed) == [0, 1] * 4
    assert (table.status == "done").all()
    # each batch's own total batch, step count and topology
    assert set(table[table.regime == "small-batch"].batch) == {BATCHES["small-batch"][0] // 4}
    assert set(table[table.regime == "large-batch"].batch) == {BATCHES["large-batch"][0] // 4}
    assert set(table[table.method == "diffusion"].topology) == {METHODS["diffusion"][1]}
    # the summary is the mean and standard error over the seeds, per regime and method
    summary = pd.read_csv(tmp_path / "summary.csv")
    assert len(summary) == 4 and (summary.seeds == 2).all()
    one = table[(table.regime == "large-batch") & (table.method == "diffusion")].test_accuracy
    row = summary[(summary.regime == "large-batch") & (summary.method == "diffusion")].iloc[0]
    assert row.test_accuracy_mean == pytest.approx(one.mean())
    assert row.test_accuracy_se == pytest.approx(one.std(ddof=1) / 2 ** 0.5)
    # settled: the studies' loss criterion on each run's own training-loss curve
    from flatlab.experiment.evidence import loss_plateau
    for r in table.itertuples():
        m = flatlab.results.load(tmp_path / "runs" / f"{r.regime},{r.method},seed={r.seed}")
        c = m[(m.metric == "train_loss") & (m.scope == "avg")].sort_values("step")
        assert len(c) >= 11  # at least as often as the studies: at 0, 10 times and the end
        p = loss_plateau(c.step.to_numpy(), c.value.to_numpy())
        assert r.settled == p.converged and r.loss_change == pytest.approx(p.change)
    # fits: the final training loss at most FIT, counted per cell
    assert (table.fits == (table.train_loss <= FIT)).all()
    assert row.fits == int(table[(table.regime == "large-batch")
                                 & (table.method == "diffusion")].fits.sum())
    # the paired gap against a hand computation, seed by seed
    c = table[table.method == "centralized"].set_index(["regime", "seed"]).test_accuracy
    d = [c["small-batch", s] - c["large-batch", s] for s in (0, 1)]
    gap, se, n = paired_gap(table, "centralized")
    assert n == 2 and gap == pytest.approx(sum(d) / 2)
    assert se == pytest.approx(abs(d[0] - d[1]) / 2)
    # seeds differ: another data draw, initialization, other minibatches
    assert table.test_accuracy.nunique() > 1 or table.train_loss.nunique() > 1
    for col in ("test_accuracy", "train_loss", "grad_norm", "hessian_top", "hessian_trace",
                "sharpness", "consensus_distance"):
        assert table[col].notna().all(), col
    assert table["test_accuracy"].between(0, 1).all()
    assert (table["hessian_top"] > 0).all() and (table["sharpness"] >= 0).all()
    # centralized keeps every node identical; diffusion's nodes differ
    cons = table.set_index(["regime", "method", "seed"])["consensus_distance"]
    for regime in ("small-batch", "large-batch"):
        assert cons[regime, "centralized", 0] < 1e-12 * cons[regime, "diffusion", 0]
    # the runs are a sweep folder the results store reads
    runs = flatlab.results.summary(tmp_path / "runs")
    assert len(runs) == 8 and (runs.status == "done").all()
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].startswith("flatlab demo: the large-batch regime")
    shows = [i for i, x in enumerate(lines) if x.startswith("What the table shows:")]
    assert len(shows) == 1 and "spectral gap" in lines[shows[0] + 1]
    assert "paired over 2 seeds" in lines[shows[0]]
    assert lines[-1].startswith("What it does not show:") and "2 seeds" in lines[-1]
    assert "tables:" in out and "summary.csv" in out
    assert "mean ± standard error over 2 seeds" in out and " ± " in out
    # a second call resumes: nothing is trained again
    run_demo(tmp_path, small=True, progress=True, workers=1)
    assert "[1/" not in capsys.readouterr().out


def test_demo_full_scale_is_the_stated_regime():
    """The configs of ``make demo`` (built, not run): the epochs and steps the docs state."""
    jobs = demo_runs(Path("out"))
    assert len(jobs) == len(BATCHES) * len(METHODS) * len(SEEDS)
    for path, cfg in jobs:
        regime = path.name.split(",")[0]
        batch, epochs, lr = BATCHES[regime]
        assert cfg["data"]["batch_size"] * cfg["topology"]["nodes"] == batch
        assert cfg["train"]["steps"] == math.ceil(epochs * TRAIN / batch)
        assert cfg["optim"]["lr"] == lr and cfg["optim"]["schedule"] == "cosine"
        assert cfg["data"]["options"]["num_samples"] - TRAIN == 1000
        assert cfg["data"]["seed"] == cfg["seed"]  # a fresh draw of the data per seed
    steps = {p.name.split(",")[0]: c["train"]["steps"] for p, c in jobs}
    assert steps == {"small-batch": 3125, "large-batch": 782}


def test_sensitivity_figure_marks_chosen_and_diverged_values():
    from flatlab.plots import sensitivity

    t = pd.DataFrame({"setting": ["a"] * 4 + ["b"] * 4, "method": ["m", "m", "m", "m"] * 2,
                      "lr": [0.01, 0.03, 0.1, 0.3] * 2,
                      "holdout_accuracy": [0.5, 0.8, 0.7, float("nan")] * 2,
                      "status": ["done", "done", "done", "diverged"] * 2,
                      "chosen": [False, True, False, False] * 2})
    fig = sensitivity(t, "lr", panels=["setting"])
    assert len(fig.axes) == 2 and fig.axes[0].get_xscale() == "log"
    lines = fig.axes[0].get_lines()
    curve, cross, ring = lines[0], lines[1], lines[2]
    assert list(curve.get_xdata()) == [0.01, 0.03, 0.1]
    assert list(curve.get_ydata()) == pytest.approx([50, 80, 70])
    assert list(cross.get_xdata()) == [0.3] and cross.get_marker() == "x"
    assert list(ring.get_xdata()) == [0.03] and list(ring.get_ydata()) == pytest.approx([80])
    with pytest.raises(ValueError, match="lacks columns"):
        sensitivity(t.drop(columns="status"), "lr")


def _demo_table(shift: float) -> pd.DataFrame:
    rows = []
    for regime, base in (("small-batch", 0.85), ("large-batch", 0.79)):
        for method in METHODS:
            for seed, noise in enumerate((-0.01, 0.0, 0.01)):
                rows.append({"regime": regime, "batch": BATCHES[regime][0], "method": method,
                             "seed": seed, "status": "done", "test_accuracy": base + noise
                             + (shift if regime == "large-batch" else 0.0),
                             "train_loss": 0.01, "fits": True, "settled": True})
    return pd.DataFrame(rows)


def test_demo_compare_reads_moves_against_the_standard_errors(tmp_path, capsys):
    from flatlab.demo import compare, main

    for name, shift in (("ref", 0.0), ("near", 0.004), ("far", 0.03)):
        (tmp_path / name).mkdir()
        _demo_table(shift).to_csv(tmp_path / name / "table.csv", index=False)
    got = compare([tmp_path / "ref", tmp_path / "near", tmp_path / "far"],
                  columns=("test_accuracy",))
    # each cell's s.e. over seeds -0.01, 0, +0.01 is 0.01 / sqrt(3)
    se = 0.01 / 3 ** 0.5
    acc = got[got.measure == "test_accuracy"].set_index(["folder", "regime", "method"])
    near, far = str(tmp_path / "near"), str(tmp_path / "far")
    assert acc.loc[(near, "large-batch", "centralized"), "se"] == pytest.approx(se)
    assert acc.loc[(near, "large-batch", "centralized"), "moved"] == pytest.approx(0.004)
    assert acc.loc[(near, "large-batch", "centralized"), "within"]
    assert not acc.loc[(far, "large-batch", "diffusion"), "within"]
    assert acc.loc[(far, "small-batch", "diffusion"), "moved"] == pytest.approx(0, abs=1e-12)
    # the paired gap: small - large per seed is 0.06 - shift on every seed (s.e. 0)
    gap = got[got.measure == "gap"].set_index(["folder", "method"])
    assert gap.loc[(far, "centralized"), "mean"] == pytest.approx(0.03)
    assert gap.loc[(far, "centralized"), "moved"] == pytest.approx(0.03)
    assert main([str(tmp_path / "ref"), str(tmp_path / "near")]) == 0
    # test accuracy and training loss in 4 cells, 2 gaps; the gaps (s.e. 0) moved by 0.004
    assert capsys.readouterr().out.splitlines()[-1].startswith("8 of 10 numbers moved by at most")
    assert main([str(tmp_path / "ref"), str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds no table.csv" in err[0]
    assert main([str(tmp_path / "ref")]) == 2
