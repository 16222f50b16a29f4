"""Losses of a node stack as functions of flat parameters: what the curvature operators take.

Curvature is measured on a fixed evaluation set (docs/reference/measures.md §5.3: fix it, use the
same one for every node, for ``x̄`` and across checkpoints), in eval mode (BatchNorm uses running
statistics, dropout is off; §4), as the mean loss over the set: chunks are weighted by their size
(the PyHessian/curvlinops convention, §3), so the result does not depend on the chunking. That
loss is the engine's evaluation objective, :class:`flatlab.engine.Objective`, the same one the
evaluation and the sharpness measures use.
"""

from __future__ import annotations

import torch

from flatlab.curvature.lanczos import EigenResult, lanczos, random_probes
from flatlab.curvature.operators import HessianOperator
from flatlab.curvature.trace import TraceResult, trace
from flatlab.engine.objective import Objective
from flatlab.engine.stack import NodeStack, available_memory
from flatlab.errors import CurvatureError
from flatlab.seeds import seed_for

__all__ = ["stack_loss", "model_hessian", "node_top_eigenvalues", "node_traces", "nodes_equal",
           "NODE_STRATEGIES", "batched_chunk"]

NODE_STRATEGIES = ("auto", "batched", "sequential")
"""How :func:`node_top_eigenvalues` and :func:`node_traces` treat the n node models."""


def stack_loss(stack: NodeStack, inputs: torch.Tensor, targets: torch.Tensor, *,
               nodes: bool = False, buffers: dict[str, torch.Tensor] | None = None,
               batch_size: int = 2048) -> Objective:
    """The mean loss on ``(inputs, targets)`` as a differentiable function of flat parameters.

    Args:
        stack: The node stack (defines the model, the loss and the buffers).
        inputs: ``[N, ...]`` evaluation inputs.
        targets: ``[N]`` labels or ``[N, k]`` regression targets.
        nodes: ``False``: a function of one model ``x [P] -> scalar`` (with the averaged buffers
            unless ``buffers`` is given). ``True``: a function of all node models
            ``X [n, P] -> [n]`` (each node with its own buffers), whose Hessian is block diagonal.
        buffers: Buffers of the one model (``nodes=False``).
        batch_size: Samples per chunk.

    Returns:
        The :class:`~flatlab.engine.Objective`; it runs the model in eval mode (the stack's mode
        is restored after each call).

    Raises:
        ObjectiveError: (a :class:`CurvatureError`) for data it cannot use.
    """
    return Objective(stack, inputs, targets, nodes=nodes, buffers=buffers, batch_size=batch_size)


def model_hessian(stack: NodeStack, x: torch.Tensor, inputs: torch.Tensor,
                  targets: torch.Tensor, *, method: str = "double_backward",
                  buffers: dict[str, torch.Tensor] | None = None,
                  batch_size: int = 2048) -> HessianOperator:
    """The Hessian of the evaluation loss at ``x`` ``[P]`` (one model) or ``X`` ``[n, P]``.

    For ``X`` ``[n, P]`` (the node models, one per row) the operator multiplies ``[n, P]`` stacks,
    one Hessian per node, in one batched pass.
    """
    nodes = x.dim() == 2
    if nodes and x.shape[0] != stack.n:
        raise CurvatureError(f"the stack holds {stack.n} nodes but X has {x.shape[0]} rows")
    fn = stack_loss(stack, inputs, targets, nodes=nodes, buffers=buffers, batch_size=batch_size)
    return HessianOperator(fn, x, method=method)


def nodes_equal(stack: NodeStack, X: torch.Tensor) -> bool:  # noqa: N803
    """Whether every row of ``X`` and of each stack buffer equals the first, bit for bit.

    Then the ``n`` node Hessians are one Hessian (at the start, every node from the same
    initialization; after an exact average): the per-node curvature functions compute it once.
    """
    return bool((X == X[:1]).all()) and all(bool((b == b[:1]).all())
                                            for b in stack.buffers.values())


def _node_buffers(stack: NodeStack, i: int) -> dict[str, torch.Tensor]:
    return {name: b[i] for name, b in stack.buffers.items()}


def _node_ops(stack: NodeStack, X: torch.Tensor, inputs: torch.Tensor,  # noqa: N803
              targets: torch.Tensor, batch_size: int, count: int) -> list[HessianOperator]:
    return [model_hessian(stack, X[i], inputs, targets, batch_size=batch_size,
                          buffers=_node_buffers(stack, i)) for i in range(count)]


def _node_strategy(strategy: str, X: torch.Tensor) -> str:  # noqa: N803
    if strategy not in NODE_STRATEGIES:
        raise CurvatureError(f"strategy {strategy!r} is unknown; accepted: "
                             f"{', '.join(NODE_STRATEGIES)}")
    if strategy == "auto":
        return "sequential" if X.device.type == "cpu" else "batched"
    return strategy


#: Share of the free memory a batched per-node measurement plans to fill with its vectors.
MEMORY_SHARE = 0.5
#: Work vectors per node beside the ``steps`` a batched estimator keeps (Lanczos: the current
#: and previous vectors, the product, the reorthogonalisation; Hutch++: the sketch's products).
WORK_VECTORS = 8


def batched_chunk(n: int, P: int, steps: int, dtype: torch.dtype,  # noqa: N803
                  device: torch.device, free: int | None = None) -> int:
    """Nodes per batched pass so that their vectors fit in :data:`MEMORY_SHARE` of free memory.

    A batched Lanczos run keeps an ``[n, steps, P]`` basis (Hutch++ an ``[n, steps, P]``
    sketch) and :data:`WORK_VECTORS` more ``[n, P]`` vectors: for 1,024 MLP nodes and 100 steps
    that is 32 GB, for ResNet-20 about 110 GB, so on a GPU the nodes go in chunks of this many
    (all of them when they fit). ``free`` defaults to :func:`flatlab.engine.available_memory`
    (on a GPU, with PyTorch's cached memory counted as free); unknown free memory means one pass.
    The Hessian-vector products' own activations are bounded separately, by the evaluation
    set's ``batch_size``.
    """
    free = available_memory(device) if free is None else free
    if free is None:
        return n
    per_node = (steps + WORK_VECTORS) * P * torch.finfo(dtype).bits // 8
    return max(1, min(n, int(MEMORY_SHARE * free) // per_node))


def _chunks(n: int, chunk: int) -> list[tuple[int, int]]:
    return [(s, min(n, s + chunk)) for s in range(0, n, chunk)]


def _node_rows(stack: NodeStack, X: torch.Tensor) -> None:  # noqa: N803
    if X.dim() != 2 or X.shape[0] != stack.n:
        raise CurvatureError(f"X must be the {stack.n} node models [n, P], got shape "
                             f"{tuple(X.shape)}")


def node_traces(stack: NodeStack, X: torch.Tensor, inputs: torch.Tensor,  # noqa: N803
                targets: torch.Tensor, *, num_matvecs: int = 9, method: str = "hutch++",
                seed: int = 0, first_node: int = 0, strategy: str = "auto",
                batch_size: int = 2048, chunk: int | None = None) -> TraceResult:
    """``tr(H)`` of every node model (:func:`~flatlab.curvature.trace`), each with its buffers.

    Node ``i``'s probes come from ``seed_for(seed, "probes", first_node + i)``, so its estimate
    depends neither on the strategy (up to rounding) nor on how nodes are split over processes.
    Nodes equal to node 0 in parameters and buffers (:func:`nodes_equal`) share its estimate.

    Args:
        stack: The node stack (its buffers are the nodes').
        X: ``[n, P]`` node models.
        inputs: ``[N, ...]`` evaluation inputs, the same for every node.
        targets: ``[N]`` labels or ``[N, k]`` targets.
        num_matvecs: Products per node.
        method: ``hutch++`` or ``hutchinson``.
        seed: The probes' seed (see above).
        first_node: Global id of ``X``'s first row (a process's rows of a distributed run).
        strategy: ``"batched"``: every product an ``[n, P]`` stack; ``"sequential"``: one
            node at a time; ``"auto"``: sequential on the CPU (measured 1.2x faster there:
            ``benchmarks/measure_cost.py --mechanism``), batched on a GPU.
        batch_size: Samples per chunk of the evaluation set.
        chunk: Nodes per batched pass (default :func:`batched_chunk`: as many as free memory
            holds); the estimates do not depend on it beyond rounding.

    Returns:
        A :class:`~flatlab.curvature.TraceResult` with ``[n]`` estimates and standard errors.
    """
    _node_rows(stack, X)
    strategy = _node_strategy(strategy, X)
    seeds = [seed_for(seed, "probes", first_node + i) for i in range(stack.n)]
    one = nodes_equal(stack, X)
    if strategy == "batched" and not one:
        chunk = chunk or batched_chunk(stack.n, stack.P, num_matvecs, X.dtype, X.device)
        parts = [trace(model_hessian(stack.rows(s, e), X[s:e], inputs, targets,
                                     batch_size=batch_size),
                       num_matvecs, method=method, seed=seeds[s:e])
                 for s, e in _chunks(stack.n, chunk)]
        if len(parts) == 1:
            return parts[0]
        return TraceResult(torch.cat([p.estimate for p in parts]),
                           torch.cat([p.stderr for p in parts]),
                           torch.cat([p.samples for p in parts]),
                           max(p.num_matvecs for p in parts), method, parts[0].distribution)
    ops = _node_ops(stack, X, inputs, targets, batch_size, 1 if one else stack.n)
    res = [trace(op, num_matvecs, method=method, seed=seeds[i]) for i, op in enumerate(ops)]
    res = res * stack.n if one else res
    return TraceResult(torch.tensor([r.estimate for r in res], dtype=torch.float64, device="cpu"),
                       torch.tensor([r.stderr for r in res], dtype=torch.float64, device="cpu"),
                       torch.stack([r.samples for r in res]), max(r.num_matvecs for r in res),
                       method, res[0].distribution)


def node_top_eigenvalues(stack: NodeStack, X: torch.Tensor, inputs: torch.Tensor,  # noqa: N803
                         targets: torch.Tensor, *, k: int = 1, tol: float = 1e-3,
                         max_iter: int | None = None, seed: int = 0, first_node: int = 0,
                         strategy: str = "auto", batch_size: int = 2048,
                         chunk: int | None = None) -> EigenResult:
    """The top ``k`` Hessian eigenvalues of every node model, each with its own buffers.

    Args:
        stack: The node stack (its buffers are the nodes').
        X: ``[n, P]`` node models.
        inputs: ``[N, ...]`` evaluation inputs, the same for every node.
        targets: ``[N]`` labels or ``[N, k]`` targets.
        k: How many eigenvalues per node.
        tol: Lanczos tolerance (:func:`~flatlab.curvature.lanczos`).
        max_iter: Most products per node.
        seed: Node ``i`` starts Lanczos from its own Rademacher vector,
            ``seed_for(seed, "probes", first_node + i)``, so that a node's result does not
            depend on the strategy (beyond Lanczos's stopping point) or on how nodes are split
            over processes.
        first_node: Global id of ``X``'s first row (a process's rows of a distributed run).
        strategy: ``"batched"``: one operator over all ``n`` rows, every product an ``[n, P]``
            stack, until the slowest node has converged; ``"sequential"``: one node at a time,
            each stopping when it has converged; ``"auto"``: sequential on the CPU, batched on
            a GPU. Measured in ``benchmarks/curvature.py`` (16 MLP nodes, 2,000 samples, 2 AMD
            EPYC cores): batched is 1.6x slower than sequential on the CPU, where one node's
            product already runs the cores at their arithmetic limit; its products cost 1.3x
            more per node (``[n, B, width]`` activations fall out of cache) and it runs the slowest
            node's number of steps for every node (26 against 19 on average). Nodes equal to
            node 0 in parameters and buffers (:func:`nodes_equal`) share its result (node 0's
            start vector), whatever the strategy: one Lanczos run at the start of training,
            and a spread of exactly 0 there rather than Lanczos' tolerance.
        batch_size: Samples per chunk of the evaluation set.
        chunk: Nodes per batched run (default :func:`batched_chunk`: as many as free memory
            holds, so 1,024 nodes' ``[n, steps, P]`` basis is not allocated at once); each
            chunk runs until its slowest node has converged.

    Returns:
        An :class:`~flatlab.curvature.EigenResult` with a leading ``n`` on every field;
        ``num_matvecs`` is the most products any node took (a batched product counts once).
    """
    _node_rows(stack, X)
    strategy = _node_strategy(strategy, X)
    v0 = torch.cat([random_probes((1, X.shape[1]), seed=seed_for(seed, "probes", first_node + i),
                                  dtype=X.dtype, device=X.device) for i in range(stack.n)])
    one = nodes_equal(stack, X)
    if strategy == "batched" and not one:
        steps = min(stack.P, max_iter if max_iter is not None else max(30, 6 * k))
        chunk = chunk or batched_chunk(stack.n, stack.P, steps, X.dtype, X.device)
        parts = [lanczos(model_hessian(stack.rows(s, e), X[s:e], inputs, targets,
                                       batch_size=batch_size), k, tol=tol, max_iter=max_iter,
                         v0=v0[s:e])
                 for s, e in _chunks(stack.n, chunk)]
        if len(parts) == 1:
            return parts[0]
        return EigenResult(torch.cat([p.eigenvalues for p in parts]),
                           torch.cat([p.residuals for p in parts]),
                           torch.cat([p.converged for p in parts]),
                           max(p.num_matvecs for p in parts), None, "largest", float(tol),
                           "lanczos")
    ops = _node_ops(stack, X, inputs, targets, batch_size, 1 if one else stack.n)
    results = [lanczos(op, k, tol=tol, max_iter=max_iter, v0=v0[i]) for i, op in enumerate(ops)]
    results = results * stack.n if one else results
    return EigenResult(torch.stack([r.eigenvalues for r in results]),
                       torch.stack([r.residuals for r in results]),
                       torch.stack([r.converged for r in results]),
                       max(r.num_matvecs for r in results), None, "largest", float(tol),
                       "lanczos")
