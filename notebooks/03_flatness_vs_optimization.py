# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.7
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Flatness versus optimization
#
# The results of `flatlab.studies.tradeoff`, read back and redrawn: what centralized SGD, consensus
# and diffusion converge to on mnist1d over four topologies at a small and a large batch, next
# to what the spectral gap predicts. The question is Cao, Wu, Yuan and Sayed's ("On the
# trade-off between flatness and optimization in distributed learning", 2024;
# `docs/reference/measures.md` §12): do decentralized methods find flatter minima than centralized
# SGD in the large-batch regime, is consensus the flattest, and does diffusion strike the best
# balance between flatness and optimization?
#
# The notebook reads the committed tables (`results/tradeoff-full/` when the GPU scale has
# been run, else `results/tradeoff-small/`). Where there are none it runs the study's tiny
# scale into a temporary folder first. The test suite runs it with `FLATLAB_NOTEBOOK_SMALL=1`.

# %%
import os
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from IPython.display import display

import flatlab
from flatlab import plots, studies
from flatlab.studies import tradeoff
from flatlab.studies.figures import committed_results
from flatlab.theory import spectral_gap_study

SMALL = bool(os.environ.get("FLATLAB_NOTEBOOK_SMALL"))
ROOT = Path(flatlab.__file__).resolve().parents[1]
src = committed_results(ROOT, "tradeoff", "runs.csv")
if src is None:  # no committed study: its tiny scale, a few minutes on 2 cores
    src = Path(tempfile.mkdtemp()) / "tradeoff-tiny"
    studies.main(tradeoff.STUDY, ["--scale", "tiny", "--out", str(src), "--jobs", "1"])
tables = {t: pd.read_csv(src / f"{t}.csv")
          for t in ("runs", "curves", "escape", "steady", "bound")}
runs = tables["runs"]
print(f"{src}: {len(runs)} runs, {(runs.status == 'done').sum()} done, "
      f"{(runs.status == 'diverged').sum()} diverged")

# %% [markdown]
# ## The final runs
#
# One row per (batch regime, topology, method) at the main step size: mean over seeds of the
# test accuracy of the averaged model `x̄`, its training loss and gradient norm (optimization
# error), three flatness measures at `x̄` (top Hessian eigenvalue, Hessian trace, worst-case
# adaptive sharpness) and the consensus distance `Ξ²`.

# %%
main_lr = runs["lr"].mode().iloc[0]
cols = ["test_accuracy", "train_loss", "grad_norm", "hessian_top", "hessian_trace",
        "sharpness", "consensus_distance"]
done = runs[(runs["status"] == "done") & (runs["lr"] == main_lr)]
table = done.groupby(["regime", "topology", "method"], sort=False)[cols].mean()
table["seeds"] = done.groupby(["regime", "topology", "method"], sort=False).size()
table.round(4)

# %% [markdown]
# ## Flatness against optimization error
#
# Each marker is one algorithm on one topology (mean over seeds, standard-error bars), its
# colour the test accuracy. Lower-left is flat *and* well optimized. Change `FLATNESS` to
# `hessian_trace` or `sharpness`, `ERROR` to `grad_norm`, to see whether the picture depends
# on the measure (`docs/reference/measures.md` §12.2: the paper's own flatness measure is not
# known).

# %%
FLATNESS, ERROR = "hessian_top", "train_loss"
plots.tradeoff_scatter(done, flatness=FLATNESS, error=ERROR)
plt.show()

# %%
plots.accuracy_vs_flatness(done, flatness=FLATNESS, error=ERROR)
plt.show()

# %% [markdown]
# ### Does accuracy depend on both?
#
# The paper's second claim: accuracy is a function of flatness *and* of optimization error.
# Within each regime, a least-squares fit of test accuracy on the standardized flatness and
# optimization error of every final run; both coefficients should be negative (flatter and
# better optimized is more accurate). With a handful of runs this is a description, not a test.

# %%
def fit(g: pd.DataFrame) -> pd.Series:
    z = lambda c: (g[c] - g[c].mean()) / (g[c].std(ddof=0) or 1.0)  # noqa: E731
    A = np.column_stack([np.ones(len(g)), z(FLATNESS), z(ERROR)])
    coef, *_ = np.linalg.lstsq(A, g["test_accuracy"].to_numpy(), rcond=None)
    pred = A @ coef
    ss = ((g["test_accuracy"] - g["test_accuracy"].mean()) ** 2).sum()
    r2 = 1 - ((g["test_accuracy"] - pred) ** 2).sum() / ss if ss > 0 else float("nan")
    return pd.Series({f"coef {FLATNESS}": coef[1], f"coef {ERROR}": coef[2], "R^2": r2,
                      "runs": len(g)})


done.groupby("regime", sort=False)[["test_accuracy", FLATNESS, ERROR]].apply(fit).round(4)

# %% [markdown]
# ## Consensus distance and its predicted steady state
#
# Lines: the measured `Ξ²` over training (mean, min-max band over seeds); hatched bands: the
# steady state `flatlab.theory.predicted_consensus_distance` predicts from each run's measured
# gradient noise `σ²` and heterogeneity `ζ²` and the topology's `ρ` (constants unspecified, so
# orders of magnitude are what to compare). The table gives measured / predicted per topology,
# method and step size.

# %%
plots.consensus_over_training(tables["curves"], tables["steady"])
plt.show()
steady = tables["steady"]
if len(steady):
    ratio = steady.groupby(["regime", "topology", "method", "lr"], sort=False)[
        ["rho", "measured", "predicted", "ratio"]].mean()
    display(ratio.round(4))

# %% [markdown]
# ## Convergence against the bound's terms
#
# The running mean of `‖∇f(x̄_t)‖²` against DSGD's bound (Koloskova et al. 2020), evaluated with
# the run's own `L` (top eigenvalue), `F0` (initial loss), `σ²` and `ζ²`: noise term
# `∝ T^{-1/2}`, consensus term `∝ T^{-2/3}`, deterministic term `∝ T^{-1}`.

# %%
plots.bound_overlay(tables["bound"])
plt.show()

# %% [markdown]
# ## Escaping a sharp minimum
#
# Every method restarted at the minimum that large-batch centralized SGD found, at the same
# batch and step size μ (one row of panels per μ). Decentralized methods inject a
# disagreement-driven perturbation that centralized SGD does not have; the claim is that they
# leave sharp minima faster. At the main step the start sits near or above 2/μ (the edge of
# stability), so every method leaves it; at the smaller step centralized SGD can stay. The
# table gives, per step size, method and topology, the step at which the top eigenvalue first
# fell below 75% of its starting value (NaN: it never did) and where each ended.

# %%
plots.escape(tables["escape"])
plt.show()
esc = tables["escape"]
if "lr" not in esc:
    esc = esc.assign(lr=main_lr)
rows = []
for (lr, m, top, seed), g in esc[esc["metric"] == "hessian_top"].groupby(
        ["lr", "method", "topology", "seed"], sort=False):
    g = g.sort_values("step")
    below = g[g["value"] < 0.75 * g["value"].iloc[0]]
    rows.append({"lr": lr, "method": m, "topology": top, "seed": seed, "2/lr": 2 / lr,
                 "lambda_max start": g["value"].iloc[0], "lambda_max end": g["value"].iloc[-1],
                 "steps to 75%": below["step"].iloc[0] if len(below) else np.nan})
pd.DataFrame(rows).groupby(["lr", "method", "topology"], sort=False).mean(
    numeric_only=True).drop(columns="seed").round(2)

# %% [markdown]
# ## What the topologies predict
#
# The spectral gap `1 - ρ` and the transient iterations of DSGD and gradient tracking against
# the number of nodes, for the topologies of the study (`notebooks/01` has the full
# calculator).

# %%
sizes = (8, 16, 32, 64) if SMALL else tuple(2**k for k in range(3, 11))
plots.spectral_gap(spectral_gap_study(("ring", "torus", "exponential", "complete"), sizes))
plt.show()
