"""Run any registered algorithm on a written-down objective, with no neural model."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from flatlab.algorithms.base import Algorithm, State, hold, make
from flatlab.comm.protocols import Mixer
from flatlab.comm.simulated import SimulatedMixer
from flatlab.engine.oracle import DelayedGradients, FunctionOracle, SkippingOracle, sam_oracle
from flatlab.errors import FlatlabError
from flatlab.topology import Topology
from flatlab.topology import from_matrix as _from_matrix
from flatlab.topology import make as _make_topology

__all__ = ["simulate", "as_topology"]


def as_topology(topology: Topology | str | tuple[str, int] | np.ndarray, n: int) -> Topology:
    """A :class:`Topology` from an instance, a name (size ``n``), ``(name, size)`` or a matrix."""
    if isinstance(topology, Topology):
        top = topology
    elif isinstance(topology, str):
        top = _make_topology(topology, n)
    elif isinstance(topology, tuple) and len(topology) == 2:
        top = _make_topology(topology[0], int(topology[1]))
    elif isinstance(topology, (np.ndarray, torch.Tensor)):
        top = _from_matrix(np.asarray(topology, dtype=np.float64))
    else:
        raise FlatlabError(f"topology must be a Topology, a name, (name, n) or a matrix; got "
                           f"{type(topology).__name__}")
    if top.n != n:
        raise FlatlabError(f"topology {top.label} has {top.n} nodes but X0 has {n} rows")
    return top


def simulate(
    algorithm: str | Algorithm,
    topology: Topology | str | tuple[str, int] | np.ndarray,
    grad_fn: Callable[[torch.Tensor, int], torch.Tensor],
    X0: torch.Tensor,  # noqa: N803
    steps: int,
    lr: float | Callable[[int], float],
    *,
    stride: int = 1,
    mix_method: str = "auto",
    mixer: Mixer | None = None,
    return_state: bool = False,
    metric_fn: Callable[[torch.Tensor, int], torch.Tensor] | None = None,
    sam_rho: float = 0.0,
    sam_adaptive: bool = False,
    weight_decay: float = 0.0,
    offline: Callable[[int], Any] | None = None,
    straggling: Callable[[int], Any] | None = None,
    staleness: Callable[[int], Any] | None = None,
    tau: int = 1,
    **hparams: Any,
) -> torch.Tensor | tuple[torch.Tensor, State]:
    """Iterate a registered algorithm on per-node gradient maps, for theory checks.

    The same algorithm code and mixer as training: ``grad_fn(X, t)`` plays the oracle (``t`` is
    the step, passed as the batch, so noise can be drawn deterministically per step).

    Args:
        algorithm: A registered name (``flatlab.algorithms.available()``) or an instance.
        topology: A :class:`Topology`, a generator name (size taken from ``X0``), ``(name, n)``
            or a doubly stochastic matrix.
        grad_fn: ``grad_fn(X, t) -> G``, ``[n, d] -> [n, d]`` (exact or noisy gradients).
        X0: ``[n, d]`` starting iterates; its dtype and device are used throughout.
        steps: Number of iterations.
        lr: Constant step size, or a function of the step ``t``.
        stride: Keep the iterates every ``stride`` steps.
        mix_method: Mixer method (``auto``, ``dense``, ``sparse``, ``shift``).
        mixer: A mixer to use instead of a new :class:`SimulatedMixer`; with a
            :class:`~flatlab.comm.DistributedMixer`, ``X0`` and ``grad_fn`` see this rank's rows
            only and ``topology`` is ignored.
        return_state: Also return the final algorithm state.
        metric_fn: ``metric_fn(X, t) -> [n, d, d]`` per-node curvature (e.g. the exact Hessians):
            the oracle's metric, which ``ngpd`` needs.
        sam_rho: SAM on every node: gradients at ``x_i + ρ g_i/‖g_i‖``
            (:class:`~flatlab.engine.SAMOracle`); 0 (default) is the plain method.
        sam_adaptive: ASAM's perturbation instead.
        weight_decay: L2 coefficient the oracle adds, ``grad_fn(X, t) + weight_decay · X``
            (:class:`~flatlab.engine.FunctionOracle`; ``optim.weight_decay`` of a run), kept
            apart from ``grad_fn`` so that a method that decays another point can move it
            (``sgp`` with ``weight_decay_on="numerator"``).
        offline: Node churn: ``offline(t)`` gives the nodes offline at step ``t`` (booleans
            ``[n]``, e.g. :meth:`flatlab.topology.faults.NodeChurn.offline`); they keep their
            whole state (:func:`~flatlab.algorithms.hold`). Pair it with the churn's rounds as
            ``topology`` (``NodeChurn.topology(steps)``), which leave them out of the mixing.
        straggling: Stragglers: ``straggling(t)`` gives the nodes whose gradient is missing
            at step ``t`` (booleans ``[n]``, e.g. :meth:`flatlab.topology.faults.Stragglers.
            skips`); the step sees :class:`~flatlab.engine.oracle.SkippingOracle`.
        staleness: Stale gradients: ``staleness(t)`` gives each node's delay at step ``t``
            (integers ``[n]`` in ``0 … tau``, e.g. :meth:`flatlab.topology.faults.
            StaleGradients.delays`); node ``i``'s gradient is taken at the point of step
            ``t − d_i`` (:class:`~flatlab.engine.oracle.DelayedGradients`). Pass ``tau``
            (the largest delay) with it.
        tau: The largest delay ``staleness`` gives (default 1).
        **hparams: Hyper-parameters, when ``algorithm`` is a name.

    Returns:
        ``[steps // stride + 1, n, d]``: the iterates at ``t = 0, stride, 2 stride, ...``; with
        ``return_state``, the pair ``(iterates, state)``.

    Example:
        >>> import torch, flatlab
        >>> q = flatlab.data.heterogeneous_quadratics(8, 3, seed=0)
        >>> xs = flatlab.simulate("diffusion", "ring", q.grad_fn(), torch.zeros(8, 3,
        ...                       dtype=torch.float64), steps=500, lr=0.05)
        >>> xs.shape
        torch.Size([501, 8, 3])
    """
    if X0.dim() != 2:
        raise FlatlabError(f"X0 must be [n, d], got shape {tuple(X0.shape)}")
    if steps < 0 or stride < 1:
        raise FlatlabError(f"need steps >= 0 and stride >= 1, got {steps} and {stride}")
    algo = make(algorithm, **hparams) if isinstance(algorithm, str) else algorithm
    if not isinstance(algo, Algorithm):
        raise FlatlabError(f"algorithm must be a name or an Algorithm, got "
                           f"{type(algorithm).__name__}")
    if hparams and not isinstance(algorithm, str):
        raise FlatlabError("hyper-parameters go to flatlab.algorithms.make, not to an instance")
    if mixer is None:
        topo = as_topology(topology, X0.shape[0])
        mixer = SimulatedMixer(topo, device=X0.device, dtype=X0.dtype, method=mix_method)
    oracle = sam_oracle(FunctionOracle(grad_fn, weight_decay=weight_decay, metric_fn=metric_fn),
                        sam_rho, adaptive=sam_adaptive)
    lr_at = lr if callable(lr) else (lambda _t, _lr=float(lr): _lr)
    state = algo.init(X0.clone(), oracle, mixer)
    delayed = None if staleness is None else DelayedGradients(staleness, tau)
    out = [state.x.clone()]
    for t in range(steps):
        before = state
        now = oracle if delayed is None else delayed.at(oracle, t)
        now = now if straggling is None else SkippingOracle(
            now, torch.as_tensor(straggling(t), dtype=torch.bool, device="cpu"))
        state = algo.step(state, t, now, mixer, lr_at(t))
        if offline is not None:
            state = hold(state, before, torch.as_tensor(offline(t), dtype=torch.bool, device="cpu"))
        if (t + 1) % stride == 0:
            out.append(state.x.clone())
    xs = torch.stack(out)
    return (xs, state) if return_state else xs
