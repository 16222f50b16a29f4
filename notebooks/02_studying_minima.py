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
# # Studying the minima a decentralized run finds
#
# Train a few nodes, then look at where they ended: the top Hessian eigenvalues over training
# (at the averaged model `x̄` and at every node), the Hessian spectral density at `x̄` and at one
# node, one- and two-dimensional filter-normalized loss slices, and linear interpolation from
# node to average and from node to node with the loss barrier of each segment. Definitions and
# the choices each number depends on: `docs/reference/measures.md` (§5 top eigenvalues, §7 spectral
# density, §8-§9 sharpness and its second-order values, §13 slices and interpolation).
#
# The test suite runs this notebook with `FLATLAB_NOTEBOOK_SMALL=1` (smaller sizes).

# %%
import os
import tempfile
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

import flatlab
import flatlab.results
from flatlab import curvature, measures
from flatlab.experiment import build, final_models, load_config, lr_at, run

SMALL = os.environ.get("FLATLAB_NOTEBOOK_SMALL") == "1"
# One thread: on a small CPU machine shared with other work (the test suite, other runs) torch's
# default of one thread per core oversubscribes it, and Hessian-vector products of this CNN get
# several times slower (3 min against 10 for this notebook on 2 busy cores). On an idle machine
# with many cores, or with a GPU, remove this line.
torch.set_num_threads(1)
NODES = 8
STEPS = 100 if SMALL else 1000  # about 3 and 32 epochs of each node's data
EVERY = 25 if SMALL else 100
CURVATURE_SUBSET = 64 if SMALL else 256
SLQ_RUNS, SLQ_STEPS = (2, 20) if SMALL else (4, 60)
TRACE_MATVECS = 30 if SMALL else 90
SLICE_POINTS, PLANE_POINTS = (15, 7) if SMALL else (31, 17)
PATH_POINTS = 9 if SMALL else 17
print("flatlab", flatlab.__version__, "| nodes =", NODES, "| steps =", STEPS,
      "| torch threads =", torch.get_num_threads())

# %% [markdown]
# ## 1. Train a few nodes
#
# Diffusion (adapt-then-combine DSGD) on mnist1d (generated locally, no download) with the 1-D
# CNN, over a ring of 8 nodes with Dirichlet(0.3) label skew, so the local objectives differ.
# Besides loss and accuracy the run schedules two curvature measures (`flatlab measures` lists
# them all):
#
# - `hessian_top` with `k=3`: the three largest Hessian eigenvalues at `x̄` by Lanczos with full
#   reorthogonalization, with residual and converged flag (`docs/reference/measures.md` §5.2);
# - `hessian_top_nodes`: the largest eigenvalue of every node model, one batched Lanczos.
#
# Both use the same fixed subset of the training data (`measure.curvature_subset` samples) at
# every step, for `x̄` and for every node (§5.3: a Hessian on a changing minibatch mixes
# curvature with sampling noise). The run directory goes to a temporary folder.

# %%
config = {
    "name": "ring8-diffusion-minima",
    "seed": 0,
    "data": {"name": "mnist1d", "partition": "dirichlet", "alpha": 0.3, "batch_size": 16},
    "model": {"name": "cnn1d"},
    "topology": {"name": "ring", "nodes": NODES},
    "algorithm": {"name": "diffusion"},
    "optim": {"lr": 0.1, "schedule": "cosine", "warmup": 20 if SMALL else 50, "min_lr": 0.005},
    "train": {"steps": STEPS},
    "measure": {
        "every": EVERY,
        "metrics": ["loss", "accuracy", "consensus_distance", "hessian_top",
                    "hessian_top_nodes"],
        "options": {"hessian_top": {"k": 3, "tol": 1e-2 if SMALL else 1e-3},
                    "hessian_top_nodes": {"tol": 1e-2, "every": EVERY}},
        "train_subset": 500 if SMALL else 2000,
        "test_subset": 500 if SMALL else None,
        "curvature_subset": CURVATURE_SUBSET,
    },
    "checkpoint_every": STEPS,
}
workdir = tempfile.TemporaryDirectory(prefix="flatlab-minima-")  # removed at the end
run_dir = Path(workdir.name) / "run"
t0 = time.perf_counter()
result = run(config, run_dir, progress=False)
print(f"{result.status} after {result.step} steps in {time.perf_counter() - t0:.1f} s -> {run_dir}")

df = flatlab.results.load(run_dir)
final = df[df.step == df.step.max()]
final[final.metric.isin(["train_loss", "test_accuracy", "consensus_distance"])
      & final.scope.isin(["avg", "mean", "network"])][["metric", "scope", "value"]]

# %% [markdown]
# ## 2. Top Hessian eigenvalues over training
#
# The long-form table has one row per `(step, metric, scope)`: `hessian_top`, `hessian_top_2`,
# `hessian_top_3` at scope `avg` (the averaged model), and `hessian_top` at each node's scope
# (`"0"` to `"7"`) and over nodes (`mean`, `max`, `min`). The dotted line is `2 / lr` of the
# run's schedule (`lr_at`), where gradient descent on a quadratic with that curvature stops being
# stable.

# %%
top = df[df.metric.str.fullmatch(r"hessian_top(_\d)?")]
avg = top[top.scope == "avg"].pivot_table(index="step", columns="metric", values="value")
nodes = top[(top.metric == "hessian_top") & top.scope.str.isdigit()].pivot_table(
    index="step", columns="scope", values="value")
cfg = load_config(run_dir / "config.yaml")
steps = np.arange(1, STEPS + 1)
lr = np.array([lr_at(int(t), STEPS, cfg.optim) for t in steps])

fig, ax = plt.subplots(figsize=(7, 4))
for k, col in enumerate(avg.columns):
    ax.plot(avg.index, avg[col], marker="o", color=f"C{k}", label=f"x̄: λ{k + 1}")
for i, col in enumerate(nodes.columns):
    ax.plot(nodes.index, nodes[col], color="0.6", lw=0.8, label="nodes: λ1" if i == 0 else None)
ax.plot(steps, 2 / lr, ls=":", color="k", label="2 / lr")
ax.set(yscale="log", xlabel="step", ylabel="eigenvalue", title="top Hessian eigenvalues")
ax.legend(fontsize=8)
plt.show()

conv = df[df.metric == "hessian_top_converged"].groupby("scope").value.min()
print("Lanczos converged at every measurement:", dict(conv.astype(bool)))

# %% [markdown]
# ## 3. The final models
#
# `final_models(run_dir)` reads the final state of the run from its checkpoint: the node models
# `X` `[n, P]` (flat parameter vectors) and their stacked buffers (none for this GroupNorm CNN).
# `build` rebuilds the data, the node stack and the fixed evaluation subsets from the run's
# `config.yaml`, so the measures below see exactly the curvature subset the run used.
#
# `measures.model_loss(stack, inputs, targets)` is the function `x ↦ f(x)` (mean loss over the
# subset, eval mode) that every free function of `flatlab.curvature` and `flatlab.measures`
# takes; `x̄` uses the averaged buffers, a node its own.

# %%
built = build(cfg)
X, buffers = final_models(run_dir)
stack = built.stack
stack.load_buffers(buffers)
X = X.to(stack.device, stack.dtype)
xbar = X.mean(0)
final_nodes = nodes.iloc[-1]
NODE = int(final_nodes.idxmax())  # the sharpest node at the end of training

f_avg = measures.model_loss(stack, *built.curvature_eval)
f_node = measures.model_loss(stack, *built.curvature_eval,
                             buffers={k: v[NODE] for k, v in stack.buffers.items()})
print(f"P = {stack.P} parameters, curvature subset of {built.curvature_eval[0].shape[0]} samples")
print(f"f(x̄) = {float(f_avg(xbar)):.4f}, f(x_{NODE}) = {float(f_node(X[NODE])):.4f} "
      f"(node {NODE}: the largest final λ1 over nodes)")

# %% [markdown]
# `curvature.lanczos` on `curvature.hessian_operator(f, x)`, as the run's `hessian_top` calls it
# (same subset, settings and seed), gives the same eigenvalues at `x̄`; at the node, `λ1` agrees
# with `hessian_top_nodes` (which starts from another vector) within the tolerance.

# %%
s_top = config["measure"]["options"]["hessian_top"]
eig_avg = curvature.lanczos(curvature.hessian_operator(f_avg, xbar), k=3, tol=s_top["tol"],
                            max_iter=100, seed=0)
eig_node = curvature.lanczos(curvature.hessian_operator(f_node, X[NODE]), k=3,
                             tol=s_top["tol"], max_iter=100, seed=0)
print("x̄     : λ1..3 =", np.round(eig_avg.eigenvalues.numpy(), 3),
      "| run recorded", np.round(avg.iloc[-1].to_numpy(), 3))
print(f"node {NODE}: λ1..3 =", np.round(eig_node.eigenvalues.numpy(), 3),
      f"| run recorded λ1 = {final_nodes[str(NODE)]:.3f}")

# %% [markdown]
# ## 4. Hessian spectral density (stochastic Lanczos quadrature)
#
# For each of a few random start vectors, `m` Lanczos steps give a tridiagonal `T_m`; its
# eigenvalues `θ_k` (Ritz values) with weights `τ_k = (e₁ᵀ y_k)²` are a quadrature rule for the
# spectrum, smoothed with a Gaussian kernel: `φ(t) = mean_runs Σ_k τ_k N(t; θ_k, σ²)`
# (Ghorbani, Krishnan and Xiao 2019; `docs/reference/measures.md` §7). Plotted on a log scale as in
# PyHessian's figures: a bulk near zero, a few outliers on the right. The kernel width is
# `σ = λ1(x̄) / 100` for both models (the default, range / steps, blurs the bulk; PyHessian's
# `σ² = 1e-5 · range` resolves single Ritz values and needs many more runs). The largest Ritz value
# should match Lanczos' `λ1` above, and the implied trace `P Σ_k τ_k θ_k` a Hutch++ estimate
# (§6, §9); the SLQ trace is a Hutchinson estimate with one probe per run, so with few runs it is
# much noisier than Hutch++. The smallest Ritz value shows how negative the curvature gets (the
# models are not exact minima).

# %%
densities, traces = {}, {}
width = float(eig_avg.eigenvalues[0]) / 100
for label, fn, x in [("x̄", f_avg, xbar), (f"node {NODE}", f_node, X[NODE])]:
    d = curvature.spectral_density(curvature.hessian_operator(fn, x), num_runs=SLQ_RUNS,
                                   lanczos_steps=SLQ_STEPS, sigma=width, num_grid_points=4000,
                                   seed=0)
    tr = curvature.trace(curvature.hessian_operator(fn, x), num_matvecs=TRACE_MATVECS)
    densities[label], traces[label] = d, tr.estimate
    print(f"{label:>7}: tr(H) SLQ = {d.trace:8.2f}, Hutch++ = {tr.estimate:8.2f} "
          f"± {tr.stderr:.2f}; Ritz values from {float(d.nodes.min()):.3f} "
          f"to {float(d.nodes.max()):.3f}")

fig, ax = plt.subplots(figsize=(7, 4))
for label, d in densities.items():
    ax.semilogy(d.grid, d.density.clamp_min(1e-10), label=label)
ax.set(xlabel="eigenvalue", ylabel="density (log)", ylim=(1e-6, None),
       title=f"Hessian spectral density (SLQ, σ = {width:.2g})")
ax.legend()
plt.show()

# %% [markdown]
# ## 5. Sharpness and its second-order values
#
# Worst-case sharpness in an `ℓ2` ball of radius `ρ` (projected gradient ascent) and Gaussian
# average sharpness with standard deviation `σ` (`docs/reference/measures.md` §8); near a minimum
# they should be close to `(ρ²/2) λ_max` and `(σ²/2) tr(H)` (§9). The first-order term is not zero
# away from an exact minimum, so the worst case can exceed its second-order value.

# %%
RHO, SIGMA = 0.02, 0.002
rows = []
models = [("x̄", f_avg, xbar, eig_avg), (f"node {NODE}", f_node, X[NODE], eig_node)]
for label, fn, x, eig in models:
    lam, trace = float(eig.eigenvalues[0]), traces[label]
    worst = measures.sharpness_worst(fn, x, rho=RHO, steps=10 if SMALL else 20)
    average = measures.sharpness_average(fn, x, sigma=SIGMA, samples=10 if SMALL else 30,
                                         antithetic=True)
    rows.append({"model": label, "loss": worst.loss, "lambda_max": lam, "tr(H)": trace,
                 "S_worst": worst.value, "rho^2/2 lambda_max": RHO**2 / 2 * lam,
                 "S_avg": average.value, "S_avg stderr": average.stderr,
                 "sigma^2/2 tr(H)": SIGMA**2 / 2 * trace})
pd.DataFrame(rows).set_index("model")

# %% [markdown]
# ## 6. One-dimensional filter-normalized slices
#
# A Gaussian direction `d` with each filter (conv output channel, row of a linear weight)
# rescaled to the norm of the same filter of the model, biases and normalization parameters
# set to zero (Li et al. 2018; `docs/reference/measures.md` §13.1); then `α ↦ f(x + α d)` for
# `α ∈ [−1, 1]`. Filter normalization makes slices of different models comparable: here the
# average and the sharpest node, each with a direction normalized to its own filters (same
# seed).

# %%
alphas = torch.linspace(-1, 1, SLICE_POINTS, dtype=torch.float64)
fig, ax = plt.subplots(figsize=(7, 4))
for k, (label, fn, x) in enumerate([("x̄", f_avg, xbar), (f"node {NODE}", f_node, X[NODE])]):
    for seed in range(2):
        d = measures.filter_normalized_direction(stack.layout, x, seed=seed)
        sl = measures.slice_1d(fn, x, d, alphas)
        ax.plot(sl.alphas, sl.losses, color=f"C{k}", ls="-" if seed == 0 else "--",
                label=f"{label}, direction seed {seed}")
ax.set(xlabel="α", ylabel="loss on the curvature subset", yscale="log",
       title="1-D filter-normalized slices")
ax.legend(fontsize=8)
plt.show()

# %% [markdown]
# ## 7. Two-dimensional filter-normalized slices
#
# `(α, β) ↦ f(x + α d₁ + β d₂)` with two independent filter-normalized directions (Li et al.
# 2018, contour plots; `docs/reference/measures.md` §13.1), through `x̄` and through the node, on the
# same color scale (log of the loss).

# %%
grid = torch.linspace(-1, 1, PLANE_POINTS, dtype=torch.float64)
planes = {}
for label, fn, x in [("x̄", f_avg, xbar), (f"node {NODE}", f_node, X[NODE])]:
    d1 = measures.filter_normalized_direction(stack.layout, x, seed=0)
    d2 = measures.filter_normalized_direction(stack.layout, x, seed=0, index=1)
    planes[label] = measures.slice_2d(fn, x, d1, d2, grid, grid)

levels = np.linspace(np.log10(min(float(p.losses.min()) for p in planes.values())),
                     np.log10(max(float(p.losses.max()) for p in planes.values())), 20)
fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), sharey=True)
for ax, (label, p) in zip(axes, planes.items(), strict=True):
    cs = ax.contourf(p.alphas, p.betas, np.log10(p.losses.T.numpy()), levels=levels,
                     cmap="viridis")
    ax.plot(0, 0, "w*", ms=10)
    ax.set(xlabel="α (direction 1)", title=f"{label}: log10 loss, f = {p.loss:.3f}")
axes[0].set_ylabel("β (direction 2)")
fig.colorbar(cs, ax=axes, shrink=0.9)
plt.show()

# %% [markdown]
# ## 8. Interpolation: node to average, node to node
#
# Along the segment `x_t = (1 − t) x_a + t x_b` the barrier is
# `B = max_{t ∈ [0, 1]} f(x_t) − [(1 − t) f(x_a) + t f(x_b)]` (linear mode connectivity: Frankle
# et al. 2020; `docs/reference/measures.md` §13.3); `B = 0` means the loss never rises above the
# chord, i.e. the two models lie in one convex-looking valley. The path is extended to
# `t ∈ [−0.5, 1.5]` as in Goodfellow et al. 2015 (the barrier uses `t ∈ [0, 1]` only).
#
# - Node to average, `x̄ + t (x_i − x̄)`: its curvature at `t = 0` is `(x_i − x̄)ᵀ H (x_i − x̄)`
#   (derived, §13.3); the dashed line is the second-order model
#   `f(x̄) + t gᵀ(x_i − x̄) + (t²/2) (x_i − x̄)ᵀ H (x_i − x̄)` for the sharpest node.
# - Node to node, between ring neighbours and between nodes half the ring apart.

# %%
ts = torch.linspace(-0.5, 1.5, 2 * PATH_POINTS - 1, dtype=torch.float64)
to_avg = measures.node_to_average(f_avg, X, ts=ts, xbar=xbar)
pairs = [(0, 1), (NODE, (NODE + 1) % NODES), (0, NODES // 2), (NODE, (NODE + NODES // 2) % NODES)]
pairs = list(dict.fromkeys(tuple(sorted(p)) for p in pairs))  # without repeats
to_node = measures.node_to_node(f_avg, X, pairs=pairs, ts=ts)

delta = X[NODE] - xbar
f0, grad = f_avg.value_and_grad(xbar)
curv = float(delta @ curvature.hvp(f_avg, xbar, delta))
quad = float(f0) + ts * float(grad @ delta) + ts**2 / 2 * curv

fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
for k, (_, i) in enumerate(to_avg.pairs):
    axes[0].plot(ts, to_avg.losses[k], color="C1" if i == NODE else "0.6",
                 lw=2 if i == NODE else 0.8, label=f"node {NODE}" if i == NODE else None)
axes[0].plot(ts, quad, "k--", lw=1, label="second-order model")
axes[0].set(xlabel="t  (0: x̄, 1: node)", ylabel="loss on the curvature subset",
            title="node to average")
for k, (i, j) in enumerate(to_node.pairs):
    axes[1].plot(ts, to_node.losses[k], label=f"{i} → {j}")
axes[1].set(xlabel="t  (0: first node, 1: second)", title="node to node")
for ax in axes:
    ax.axvspan(0, 1, color="0.92", zorder=-1)
    ax.legend(fontsize=8)
plt.show()

print(f"(x_{NODE} − x̄)ᵀ H (x_{NODE} − x̄) = {curv:.4f}, "
      f"‖x_{NODE} − x̄‖² = {float(delta @ delta):.4f}")
barriers = pd.concat([
    pd.DataFrame({"segment": [f"x̄ → {i}" for _, i in to_avg.pairs],
                  "f(start)": to_avg.loss_a, "f(end)": to_avg.loss_b,
                  "barrier": to_avg.barriers,
                  "lowest gap": [float(g[(ts >= 0) & (ts <= 1)].min()) for g in to_avg.gaps]}),
    pd.DataFrame({"segment": [f"{i} → {j}" for i, j in to_node.pairs],
                  "f(start)": to_node.loss_a, "f(end)": to_node.loss_b,
                  "barrier": to_node.barriers,
                  "lowest gap": [float(g[(ts >= 0) & (ts <= 1)].min()) for g in to_node.gaps]}),
]).set_index("segment")
barriers.round(4)

# %% [markdown]
# A barrier of zero with a negative lowest gap says that the loss along the segment stays below
# the chord: a mix of two models has a lower loss than the same mix of their losses. Over the
# whole network this is why `x̄` does better than the mean node, the gap
# `(1/n) Σ f(x_i) − f(x̄) ≈ ½ tr(H C)` of `docs/reference/measures.md` §9-§10 (`C` the covariance of
# the node models around `x̄`). Linear mode connectivity studies barriers between models trained
# independently (different seeds, no communication); here gossip keeps the nodes in one basin.

# %%
workdir.cleanup()  # the run directory was temporary: give run() a path of your own to keep it
