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
# # The mechanism: disagreement acting through the curvature
#
# For node models `x_i = x̄ + d_i` near a point with Hessian `H`, the nodes' mean loss is
# `f(x̄) + ½ tr(HΣ)` up to third order, `Σ = (1/n) Σ_i d_i d_iᵀ` (Zhu et al., ICML 2023): the
# disagreement is a perturbation of `x̄` weighted by the curvature. This notebook
#
# 1. takes a quadratic, where everything is exact: the stationary `tr(HΣ)` of diffusion and
#    consensus from `flatlab.theory.stationary_disagreement` against flatlab's own iterates;
# 2. trains one 1-D CNN on a ring and watches the mechanism's measures during training
#    (`disagreement`, `disagreement_alignment`, `edge_of_stability`), then predicts `tr(HΣ)` at
#    the end from the noise measured along the top Hessian eigenvectors (`noise_along`).
#
# Equations: `docs/reference/measures.md` §10.4 and `docs/reference/theory.md` §9.1. The test
# suite runs this notebook with `FLATLAB_NOTEBOOK_SMALL=1` (smaller sizes).

# %%
import os
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

import flatlab
from flatlab.curvature import hessian_operator, lanczos
from flatlab.experiment import build, load_config, run
from flatlab.experiment.results import read_metrics
from flatlab.experiment.rundir import average_model
from flatlab.measures import model_loss, noise_along
from flatlab.theory import stationary_disagreement
from flatlab.topology import make

SMALL = os.environ.get("FLATLAB_NOTEBOOK_SMALL") == "1"
torch.set_num_threads(1)  # see notebook 02: one thread on a small shared CPU
N = 16
QUAD_STEPS = 1500 if SMALL else 20000
NODES, STEPS, EVERY = (8, 150, 25) if SMALL else (16, 1500, 50)
print("flatlab", flatlab.__version__, "| quadratic steps =", QUAD_STEPS, "| CNN steps =", STEPS)

# %% [markdown]
# ## 1. A quadratic: the stationary `tr(HΣ)`, predicted and measured
#
# Every node has `f(x) = ½ xᵀHx` with `H = diag(0.5, 1, 2, 4)` and gradients with i.i.d.
# Gaussian noise of variance `s = 1` per coordinate. Each `(W-mode k, H-direction j)` pair of the
# deviations is an AR(1) process, so the stationary `E tr(HΣ)` has a closed form in `η`, the
# eigenvalues `λ_k` of `W`, the `h_j` and `s_j` (diffusion: `Var_kj = η² λ_k² s_j / (1 − λ_k²
# (1 − η h_j)²)`). flatlab's `simulate` runs the same algorithm code as training.

# %%
h = np.array([0.5, 1.0, 2.0, 4.0])
H = torch.diag(torch.tensor(h))  # noqa: N816


def noisy_grad(X, t):  # noqa: N803
    g = torch.Generator().manual_seed(1000 + t)
    return X @ H + torch.randn(X.shape, generator=g, dtype=X.dtype)


rows = []
for graph in ("ring", "exponential", "complete"):
    for form in ("diffusion", "consensus"):
        for lr in (0.05, 0.15):
            X0 = torch.zeros(N, 4, dtype=torch.float64)  # noqa: N816 - at the minimum
            xs = flatlab.simulate(form, (graph, N), noisy_grad, X0, QUAD_STEPS, lr)
            D = xs - xs.mean(1, keepdim=True)  # noqa: N816
            trhs = torch.einsum("tnp,pq,tnq->t", D, H, D) / N
            burn = QUAD_STEPS // 10
            measured = float(trhs[burn:].mean())
            p = stationary_disagreement(lr, h, 1.0, topology=make(graph, N), form=form)
            rows.append({"graph": graph, "form": form, "lr": lr, "measured": measured,
                         "predicted": float(p.curvature_disagreement)})
quad = pd.DataFrame(rows)
quad["ratio"] = quad["measured"] / quad["predicted"].where(quad["predicted"] > 0)
quad.round(4)

# %% [markdown]
# Diffusion on the complete graph averages exactly after every step: no disagreement, predicted
# and measured 0. Elsewhere the time average of the measured `tr(HΣ)` sits at the prediction
# (the ratio within a few percent; the test suite holds it inside batch-means confidence
# intervals, `tests/theory/test_disagreement.py`). Consensus (CTA) keeps more disagreement than
# diffusion (ATC), which filters the injected noise through `W` before it spreads.

# %%
fig, ax = plt.subplots(figsize=(5, 4))
for form, marker in (("diffusion", "o"), ("consensus", "s")):
    q = quad[(quad["form"] == form) & (quad["predicted"] > 0)]
    ax.loglog(q["predicted"], q["measured"], marker, label=form)
lim = [quad["predicted"][quad["predicted"] > 0].min() / 2, quad["predicted"].max() * 2]
ax.plot(lim, lim, "k--", lw=0.8, label="measured = predicted")
ax.set_xlabel("predicted stationary tr(HΣ)")
ax.set_ylabel("measured (time average)")
ax.legend()
ax.set_title("quadratic, n = 16")
plt.show()

# %% [markdown]
# ## 2. One CNN run: the mechanism during training
#
# Diffusion on a ring, mnist1d, i.i.d. split, a constant step. Scheduled at every measurement:
# `disagreement` (the exact `tr(HΣ)` with `n` Hessian-vector products, the gap
# `(1/n) Σ f(x_i) − f(x̄)` on the curvature subset beside `½ tr(HΣ)`), `disagreement_alignment`
# (the share of `‖X − 1x̄ᵀ‖²` in the top-5 Hessian eigenspace beside `5/P`) and
# `edge_of_stability` (`η λ_max / 2` at `x̄`). Without an `every` of their own these measures thin
# themselves to every 10th measurement; here they are asked for at each.

# %%
out = Path(tempfile.mkdtemp()) / "mechanism-ring"
every = {"every": EVERY}
config = {
    "name": "mechanism-ring", "seed": 0,
    "data": {"name": "mnist1d", "partition": "iid", "batch_size": 32},
    "model": {"name": "cnn1d"},
    "topology": {"name": "ring", "nodes": NODES},
    "algorithm": {"name": "diffusion"},
    "optim": {"lr": 0.2, "schedule": "constant", "warmup": 0},
    "train": {"steps": STEPS},
    "measure": {"every": EVERY, "per_node": False,
                "metrics": ["loss", "accuracy", "consensus_distance", "disagreement",
                            "disagreement_alignment", "edge_of_stability"],
                "options": {"disagreement": every, "disagreement_alignment": every,
                            "edge_of_stability": every},
                "train_subset": 500 if SMALL else 2048,
                "curvature_subset": 128 if SMALL else 512},
}
res = run(load_config(config), out, progress=False)
print(res.status)
m = read_metrics(out)
wide = m[m["scope"].isin(["avg", "network"])].pivot_table(index="step", columns="metric",
                                                          values="value")
wide[["train_loss", "consensus_distance", "disagreement_curvature", "disagreement_gap",
      "disagreement_gap_predicted", "disagreement_alignment", "edge_of_stability"]].round(4)

# %% [markdown]
# How much of the gap the curvature explains (`gap / ½ tr(HΣ)`, 1 on a quadratic), how far the
# disagreement concentrates in the top curvature (the top-5 share over its chance `5/P`), and
# where the step sits against the curvature (`η λ_max / 2`, 1 is gradient descent's limit on
# the local quadratic).

# %%
fig, axes = plt.subplots(1, 3, figsize=(13, 3.5))
w = wide[wide.index > 0]
axes[0].plot(w.index, w["disagreement_gap"], label="gap (1/n) Σ f(x_i) − f(x̄)")
axes[0].plot(w.index, w["disagreement_gap_predicted"], "--", label="½ tr(HΣ)")
axes[0].set_yscale("log")
axes[0].legend()
axes[1].plot(w.index, w["disagreement_alignment"] / w["disagreement_alignment_chance"])
axes[1].set_ylabel("top-5 share / chance")
axes[1].set_yscale("log")
axes[2].plot(w.index, w["edge_of_stability"])
axes[2].axhline(1.0, color="k", lw=0.8, ls="--")
axes[2].set_ylabel("η λ_max / 2")
for a in axes:
    a.set_xlabel("step")
fig.tight_layout()
plt.show()

# %% [markdown]
# ## 3. The prediction at the end of training
#
# At the final `x̄`: the top-5 eigenpairs of the curvature-subset Hessian (Lanczos), the
# minibatch noise along them `s_j = v_jᵀ S̄ v_j` and `tr(H S̄)` (`noise_along`, with the run's own
# oracle and batches), then the linear theory with the curvature-weighted noise outside the top
# five as its small-step `bulk_hs`, and the nodes' gradient offsets along the top five (even an
# i.i.d. split gives each node its own sample) as `heterogeneity`. Directions at or past the
# edge of stability (`η h_j ≥ 2`) have no stationary state in the linear model; they are left
# out and counted.

# %%
built = build(load_config(str(out / "config.yaml")))
xbar, buffers = average_model(out)
fn = model_loss(built.stack, *built.curvature_eval, buffers=buffers)
op = hessian_operator(fn, xbar)
top = lanczos(op, 5, tol=1e-3, max_iter=100, return_vectors=True)
na = noise_along(built.oracle, built.sampler, xbar, top.eigenvectors, hessian=op, probes=16,
                 draws=4 if SMALL else 8)
hj, sj = top.eigenvalues.double().numpy(), na.noise.numpy()
stable = 0.2 * hj < 2
bulk = max(na.trace_hs - float(hj @ sj), 0.0)
z = na.heterogeneity.numpy()[:, stable]  # each node's gradient offset along the kept v_j
p = stationary_disagreement(0.2, hj[stable], sj[stable], topology=make("ring", NODES),
                            bulk_hs=bulk, heterogeneity=z - z.mean(0))
late = wide.loc[wide.index >= 0.75 * STEPS, "disagreement_curvature"].mean()
pd.DataFrame({"h_j": hj, "s_j": sj, "η h_j": 0.2 * hj, "in the model": stable}).round(4)

# %%
print(f"tr(HS̄) = {na.trace_hs:.4g} ± {na.trace_hs_stderr:.2g}; top-5 share of it: "
      f"{float(hj @ sj) / na.trace_hs:.0%}")
print(f"predicted stationary tr(HΣ) = {p.curvature_disagreement:.4g} "
      f"(bulk {p.terms['bulk'] / p.curvature_disagreement:.0%}, heterogeneity "
      f"{p.terms['heterogeneity'] / p.curvature_disagreement:.0%}); measured over the last "
      f"quarter = {late:.4g}; ratio {late / p.curvature_disagreement:.2f}")

# %% [markdown]
# The mechanism study (`python -m flatlab.studies mechanism --scale small`) repeats this over
# graphs, forms, two steps and seeds, and judges each claim with the study rules (the gap
# within ±25% of `½ tr(HΣ)`, the alignment above chance, the prediction within 2x, and whether
# `∫ tr(HΣ) dt` orders the final `λ_max`).
