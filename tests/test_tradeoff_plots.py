"""Every trade-off figure on a small synthetic results table (drawn, labelled, errors refused)."""

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from flatlab import plots  # noqa: E402

METHODS = ("centralized", "consensus", "diffusion")
TOPS = ("ring", "complete")
REGIMES = ("small-batch", "large-batch")


@pytest.fixture(scope="module")
def runs():
    rng = np.random.default_rng(0)
    rows = []
    for regime in REGIMES:
        for m in METHODS:
            for top in (("all-reduce",) if m == "centralized" else TOPS):
                for seed in range(3):
                    rows.append(dict(regime=regime, topology=top, method=m, seed=seed,
                                     status="diverged" if (m, seed) == ("consensus", 2)
                                     else "done",
                                     test_accuracy=rng.uniform(0.6, 0.9),
                                     train_loss=rng.uniform(0.2, 1.0),
                                     grad_norm=rng.uniform(0.1, 1.0),
                                     hessian_top=rng.uniform(5, 30),
                                     hessian_trace=rng.uniform(100, 400),
                                     sharpness=rng.uniform(0.01, 0.05),
                                     consensus_distance=0.0 if m == "centralized"
                                     else rng.uniform(0.01, 1)))
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def curves():
    rows = []
    for regime in REGIMES:
        for m in METHODS:
            for top in (("all-reduce",) if m == "centralized" else TOPS):
                for seed in range(2):
                    for step in range(0, 101, 20):
                        for metric in ("consensus_distance", "train_loss"):
                            rows.append(dict(regime=regime, topology=top, method=m, lr=0.1,
                                             seed=seed, step=step, metric=metric, status="done",
                                             value=0.1 + 0.01 * seed + 1 / (1 + step)))
    return pd.DataFrame(rows)


def _lines(fig):
    return sum(len(ax.get_lines()) for ax in fig.axes)


def test_tradeoff_scatter_draws_one_marker_per_method_and_topology(runs):
    fig = plots.tradeoff_scatter(runs)
    panels = [ax for ax in fig.axes if ax.get_title() in REGIMES]
    assert [ax.get_title() for ax in panels] == list(REGIMES)
    # centralized once, consensus and diffusion per topology: 5 points per panel
    for ax in panels:
        assert len(ax.containers) == 5
        assert "nats" in ax.get_xlabel() and "eigenvalue" in ax.get_ylabel()
    assert any("accuracy" in ax.get_ylabel() for ax in fig.axes)  # the colour bar
    assert fig.legends and [t.get_text() for t in fig.legends[0].get_texts()] == list(METHODS)


def test_scatter_leaves_out_runs_that_did_not_finish(runs):
    only = runs[runs["status"] == "done"]
    a = plots.tradeoff_scatter(runs, flatness="hessian_trace", error="grad_norm")
    b = plots.tradeoff_scatter(only, flatness="hessian_trace", error="grad_norm")
    pa = [c.lines[0].get_xydata() for ax in a.axes for c in ax.containers]
    pb = [c.lines[0].get_xydata() for ax in b.axes for c in ax.containers]
    assert all(np.array_equal(x, y) for x, y in zip(pa, pb, strict=True))


def test_accuracy_against_flatness_and_error(runs):
    fig = plots.accuracy_vs_flatness(runs, flatness="sharpness")
    assert len(fig.axes) == 4
    assert "sharpness" in fig.axes[0].get_xlabel()
    assert "loss" in fig.axes[2].get_xlabel() or "loss" in fig.axes[1].get_xlabel()
    assert fig.axes[1].get_legend() is not None


def test_consensus_over_training_with_the_predicted_band(curves):
    steady = pd.DataFrame([dict(regime=r, topology=t, method=m, lr=0.1, seed=s,
                                predicted=0.05 * (1 + s), measured=0.1)
                           for r in REGIMES for t in TOPS for m in ("consensus", "diffusion")
                           for s in range(2)])
    fig = plots.consensus_over_training(curves, steady)
    axes = fig.axes
    assert len(axes) == len(REGIMES) * len(TOPS)
    assert [ax.get_title() for ax in axes[:2]] == list(TOPS)
    ax = axes[0]
    assert ax.get_yscale() == "log"
    # a measured line and a predicted mean line per decentralized method; bands as patches
    assert len(ax.get_lines()) == 4
    spans = [p for p in ax.patches if p.get_hatch() == "//"]
    assert len(spans) == 2
    for p in spans:  # from the smallest to the largest prediction over seeds, in data units
        y = p.get_xy()[:, 1] if hasattr(p, "get_xy") and not hasattr(p, "get_height") \
            else np.array([p.get_y(), p.get_y() + p.get_height()])
        np.testing.assert_allclose([y.min(), y.max()], [0.05, 0.1])
    assert axes[-1].get_legend() is None and axes[1].get_legend() is not None


def test_escape_and_bound_overlay():
    esc = pd.DataFrame([dict(method=m, topology=t, seed=s, step=k * 10, metric=metric,
                             value=1.0 + k + s, status="done")
                        for m, t in (("centralized", "all-reduce"), ("consensus", "ring"),
                                     ("diffusion", "ring"))
                        for s in range(2) for k in range(4)
                        for metric in ("hessian_top", "hessian_trace", "train_loss",
                                       "test_accuracy")])
    fig = plots.escape(esc)
    assert len(fig.axes) == 4 and _lines(fig) == 12
    np.testing.assert_allclose(fig.axes[0].get_lines()[0].get_ydata(), [1.5, 2.5, 3.5, 4.5])
    bound = pd.DataFrame([dict(regime="small-batch", topology=t, method=m, seed=0, T=T,
                               measured=1 / T, bound_noise=2 / T ** 0.5,
                               bound_consensus=1 / T ** (2 / 3), bound_deterministic=1 / T,
                               bound_total=2 / T ** 0.5 + 1 / T ** (2 / 3) + 1 / T)
                          for t in TOPS for m in ("consensus", "diffusion")
                          for T in (10, 20, 40)])
    fig = plots.bound_overlay(bound)
    assert len(fig.axes) == 2 and fig.axes[0].get_xscale() == "log"
    assert len(fig.axes[0].get_lines()) == 2 * 2 + 3


@pytest.mark.parametrize("fn", [plots.tradeoff_scatter, plots.accuracy_vs_flatness,
                                plots.consensus_over_training, plots.escape,
                                plots.bound_overlay])
def test_a_table_without_the_columns_is_refused(fn):
    with pytest.raises(ValueError, match="lacks columns"):
        fn(pd.DataFrame({"method": ["x"]}))


def test_scatter_draws_one_step_size(runs):
    """Runs at another step size (the theory overlay's) are not averaged into the points."""
    other = runs.assign(lr=0.1)
    extra = runs[runs["method"] == "diffusion"].assign(lr=0.03, hessian_top=1e3)
    fig = plots.tradeoff_scatter(pd.concat([other, other, extra]))
    ys = [c.lines[0].get_ydata()[0] for ax in fig.axes for c in ax.containers]
    assert len(ys) == 10 and max(ys) < 100
    fig = plots.tradeoff_scatter(pd.concat([other, extra]), lr=0.03)
    assert all(c.lines[0].get_ydata()[0] == 1e3 for ax in fig.axes for c in ax.containers)


def test_escape_draws_one_row_per_step_size():
    esc = pd.DataFrame([dict(method=m, topology=t, lr=lr, seed=0, step=k, metric=metric,
                             value=lr * (1 + k), status="done")
                        for m, t in (("centralized", "all-reduce"), ("diffusion", "ring"))
                        for lr in (0.1, 0.03) for k in range(3)
                        for metric in ("hessian_top", "train_loss")])
    fig = plots.escape(esc)
    assert len(fig.axes) == 4
    assert fig.axes[0].get_ylabel().startswith("step size μ = 0.1")
    assert fig.axes[2].get_ylabel().startswith("step size μ = 0.03")
    np.testing.assert_allclose(fig.axes[2].get_lines()[0].get_ydata(), [0.03, 0.06, 0.09])
