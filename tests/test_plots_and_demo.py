import matplotlib

matplotlib.use("Agg")

import pandas as pd  # noqa: E402
import pytest  # noqa: E402

import flatlab.results  # noqa: E402
from flatlab.demo import ALGORITHMS, run_demo  # noqa: E402
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
    png = run_demo(tmp_path, small=True, progress=False, workers=1)
    assert png == tmp_path / "tradeoff.png" and png.stat().st_size > 10_000
    for name in ("tradeoff.pdf", "curves.png", "curves.pdf"):
        assert (tmp_path / name).stat().st_size > 5_000
    table = pd.read_csv(tmp_path / "table.csv")
    assert list(table.method) == list(ALGORITHMS) * 2
    assert list(table.regime) == ["small-batch"] * 5 + ["large-batch"] * 5
    assert (table.status == "done").all()
    for col in ("test_accuracy", "train_loss", "grad_norm", "hessian_top", "hessian_trace",
                "sharpness", "consensus_distance"):
        assert table[col].notna().all(), col
    assert table["test_accuracy"].between(0, 1).all()
    assert (table["hessian_top"] > 0).all() and (table["sharpness"] >= 0).all()
    # centralized keeps every node identical; the decentralized runs do not
    cons = table.set_index(["regime", "method"])["consensus_distance"]
    for regime in ("small-batch", "large-batch"):
        assert cons[regime, "centralized"] < 1e-12 * cons[regime, "consensus"]
    # the runs are a sweep folder the results store reads
    runs = flatlab.results.summary(tmp_path / "runs")
    assert len(runs) == 10 and (runs.status == "done").all()
    out = capsys.readouterr().out
    assert "table:" in out and "table.csv" in out and "spectral gap" in out
    # a second call resumes: nothing is trained again
    run_demo(tmp_path, small=True, progress=True, workers=1)
    assert "[1/" not in capsys.readouterr().out
