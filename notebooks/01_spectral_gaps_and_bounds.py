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
# # Spectral gaps and convergence bounds
#
# What a topology predicts before anything is trained: the spectral quantities of its mixing
# matrix, the effective number of neighbours, the terms of the convergence bounds of DSGD and
# gradient tracking, their transient iterations, and the steady-state consensus distance that a
# run's measurement will be compared with. Equations: `docs/reference/theory.md`.
#
# The test suite runs this notebook with `FLATLAB_NOTEBOOK_SMALL=1` (smaller sizes).

# %%
import os

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

import flatlab
from flatlab import topology
from flatlab.plots import spectral_gap
from flatlab.theory import (
    bound,
    effective_neighbors,
    predicted_consensus_distance,
    spectral,
    spectral_gap_study,
)

SMALL = os.environ.get("FLATLAB_NOTEBOOK_SMALL") == "1"
N = 16 if SMALL else 32
SIZES = [8, 16, 32, 64] if SMALL else [2**k for k in range(3, 12)]
print("flatlab", flatlab.__version__, "| n =", N)

# %% [markdown]
# ## 1. Spectral summary of the standard topologies
#
# `rho = ||W - J||_2`, the gap `1 - rho`, Koloskova's `p = 1 - rho^2`, and the rounds of pure
# gossip that shrink the disagreement by `eps = 1e-3`. The one-peer exponential graph is
# time-varying: its numbers are over one period (`log2 n` rounds), where it averages exactly.

# %%
names = ["complete", "one-peer-exponential", "exponential", "hypercube", "torus",
         "random-regular", "erdos-renyi", "social", "star", "ring", "path"]
rows = []
for name in names:
    t = topology.make(name, None if name == "social" else N)
    rows.append(spectral(t).as_dict())
table = pd.DataFrame(rows).set_index("topology")
table[["nodes", "period", "rho", "lambda2", "lambda_min", "spectral_gap", "p", "mixing_time"]]

# %% [markdown]
# ## 2. Closed forms
#
# The ring with weights 1/3 has eigenvalues `1/3 + (2/3) cos(2 pi k / n)`, so its gap is
# `(2/3)(1 - cos(2 pi / n)) ~ 4 pi^2 / (3 n^2)`; the FFT path computes it exactly at any size.

# %%
for n in [16, 1_000, 100_000]:
    gap = spectral(topology.make("ring", n)).spectral_gap
    print(f"n = {n:>7}: gap = {gap:.6e}, closed form = {(2 / 3) * (1 - np.cos(2 * np.pi / n)):.6e},"
          f" 4 pi^2 / (3 n^2) = {4 * np.pi**2 / (3 * n**2):.6e}")

# %% [markdown]
# The one-peer exponential schedule averages exactly after one period when `n` is a power of
# two, and not otherwise:

# %%
for n in [16, 12]:
    t = topology.make("one-peer-exponential", n, allow_any_n=True)
    prod = np.eye(n)
    for s in range(t.period):
        prod = t.matrix(s) @ prod
    print(f"n = {n}: period {t.period}, ||W_(tau-1)...W_0 - J||_2 = "
          f"{np.linalg.norm(prod - 1 / n, 2):.3f}")

# %% [markdown]
# ## 3. Effective number of neighbours (Vogels et al. 2022)
#
# `n_eff(gamma)` with `gamma ~ (1 - lr h)^2`: at small learning rates (`gamma -> 1`) even a ring
# is worth nearly `n` i.i.d. neighbours, which the spectral gap alone does not show.

# %%
gammas = 1 - np.logspace(-3, -0.3, 20)
curves = []
for name in ["ring", "torus", "hypercube", "exponential", "complete"]:
    t = topology.make(name, N)
    curves += [{"topology": name, "1 - gamma": 1 - g, "n_eff": effective_neighbors(t, g)}
               for g in gammas]
ax = sns.lineplot(pd.DataFrame(curves), x="1 - gamma", y="n_eff", hue="topology", marker="o")
ax.set(xscale="log", title=f"effective neighbours, n = {N}")
plt.show()

# %% [markdown]
# ## 4. Bounds: DSGD against gradient tracking
#
# Every term of each rate after `T` iterations (orders of magnitude: the theorems' constants are
# unspecified). Heterogeneity `zeta^2` enters DSGD's consensus term; gradient tracking has none.

# %%
ring = topology.make("ring", N)
for algo in ["centralized", "dsgd", "gradient-tracking", "lower-bound"]:
    b = bound(algo, topology=ring, T=10_000, L=1.0, sigma2=1.0, zeta2=1.0, F0=1.0, eps=1e-2)
    terms = ", ".join(f"{k} = {v:.2e}" for k, v in b.terms.items())
    print(f"{algo:>18}: {terms}; dominant {b.dominant}; T(eps=1e-2) = {b.iterations:.2e}; "
          f"transient = {b.transient_iterations:.2e}")

# %% [markdown]
# Transient iterations against `n` (after which the linear-speedup term dominates): the ring's
# DSGD transient grows like `n^3 / (1 - rho)^4 ~ n^11` under heterogeneity.

# %%
study = spectral_gap_study(["ring", "torus", "exponential", "one-peer-exponential", "complete"],
                           SIZES)
fig = spectral_gap(study)
plt.show()

# %%
ring_dsgd = study[(study.topology == "ring") & (study.algorithm == "dsgd")]
slope = np.polyfit(np.log(ring_dsgd.n[-3:]), np.log(ring_dsgd.transient_iterations[-3:]), 1)[0]
print(f"ring, DSGD: transient ~ n^{slope:.2f} at the largest sizes (theory: n^11)")

# %% [markdown]
# ## 5. Predicted steady-state consensus distance
#
# `Xi^2 <~ lr^2 rho^2 sigma^2 / (1 - rho) + lr^2 rho^2 zeta^2 / (1 - rho)^2` for the diffusion
# (ATC) form; the consensus (DGD) form drops the `rho^2`. Later, runs plot their measured
# consensus distance against this line.

# %%
lrs = np.logspace(-3, -1, 5)
pred = pd.DataFrame([
    {"topology": name, "form": form, "lr": lr,
     "Xi^2": predicted_consensus_distance(lr, topology=topology.make(name, N), sigma2=1.0,
                                          zeta2=0.1, form=form).total}
    for name in ["ring", "torus", "exponential"] for form in ["diffusion", "consensus"]
    for lr in lrs
])
pred.pivot_table(index=["topology", "form"], columns="lr", values="Xi^2")

# %% [markdown]
# ## 6. Local steps and SAM on a written-down objective
#
# Heterogeneous quadratics `f_i(x) = ½ (x − b_i)ᵀ H_i (x − b_i)` with exact gradients, so every
# difference below is the method's own, not noise. **Local steps** (`local_steps=H`: `H` local
# steps, then gossip; Local SGD on the complete graph) trade communication for drift: with a
# constant step the nodes' fixed point moves away from `x*` as `H` grows, while the traffic falls
# by `H`. The consensus distance is read on the last step, an averaging step when `H` divides 400,
# so Local SGD's is 0 there: its nodes drift apart between averages, not at them.
# **SAM on every node** (`sam_rho`) takes each node's gradient at `x_i + ρ g_i/‖g_i‖`; on a
# quadratic that adds `ρ H_i g_i/‖g_i‖`, a bias of order `ρ` that does not vanish at the minimum
# (SAM oscillates around it with a constant step, the known behaviour of unnormalised SAM).

# %%
import torch  # noqa: E402

q = flatlab.data.heterogeneous_quadratics(8, 5, seed=0)
X0 = torch.zeros(8, 5, dtype=torch.float64)
rows = []
for H in [1, 4, 16]:
    for rho in [0.0, 0.05]:
        topo = topology.make("complete", 8, local_steps=H)
        xs = flatlab.simulate("diffusion", topo, q.grad_fn(), X0, steps=400, lr=0.05,
                              sam_rho=rho)
        xbar = xs[-1].mean(0)
        rows.append({"local steps H": H, "SAM rho": rho,
                     "|x̄ − x*|": float((xbar - q.x_star).norm()),
                     "consensus distance": float((xs[-1] - xbar).pow(2).sum(1).mean()),
                     "gossip rounds": 400 // H})
pd.DataFrame(rows)
