"""Curvature as operators: Hessian-vector products, extreme eigenvalues, traces, densities.

Free functions over operators (curvlinops' style), each also accepting a dense symmetric matrix or
any callable ``v -> Hv``, and batched over node models (docs/reference/measures.md §2, §5-§7)::

    op = flatlab.curvature.hessian_operator(loss_fn, x)           # x [P], loss_fn(x) -> scalar
    flatlab.curvature.lanczos(op, k=3).eigenvalues                 # top 3, with residuals
    flatlab.curvature.trace(op, num_matvecs=99).estimate           # Hutch++, with a stderr
    flatlab.curvature.spectral_density(op).density                 # SLQ, on a grid
    ops = flatlab.curvature.model_hessian(stack, X, x_eval, y_eval)   # all n nodes at once
    flatlab.curvature.lanczos(ops).eigenvalues                     # [n, 1], one batched pass
    flatlab.curvature.node_top_eigenvalues(stack, X, x_eval, y_eval)   # [n, 1], by device
    f = flatlab.curvature.kfac_factors(stack, X, xb, yb)          # {layer: (A [n,a,a], G [n,g,g])}
    flatlab.curvature.kfac_solve(V, A, G, damping)                 # (G ⊗ A + λI)⁻¹ vec V, exact
    D = flatlab.curvature.deviations(X)                            # X − 1 x̄ᵀ, [n, P]
    flatlab.curvature.disagreement_curvature(op, D).value          # tr(HΣ), Σ = DᵀD / n
    flatlab.curvature.disagreement_alignment(vecs, D).share        # ‖D‖² share in span(vecs)
"""

from flatlab.curvature.density import SpectralDensity, spectral_density
from flatlab.curvature.disagreement import (
    Alignment,
    DisagreementCurvature,
    DisagreementGap,
    deviations,
    disagreement_alignment,
    disagreement_curvature,
    disagreement_gap,
)
from flatlab.curvature.kfac import (
    FISHER_TYPES,
    Eigenbasis,
    KFACLayer,
    eigenbasis,
    kfac_factors,
    kfac_layers,
    kfac_solve,
    kron_matvec,
)
from flatlab.curvature.lanczos import EigenResult, lanczos, power_iteration, random_probes
from flatlab.curvature.model import (
    NODE_STRATEGIES,
    batched_chunk,
    model_hessian,
    node_top_eigenvalues,
    node_traces,
    nodes_equal,
    stack_loss,
)
from flatlab.curvature.operators import (
    HVP_METHODS,
    CallableOperator,
    CurvatureError,
    DenseOperator,
    HessianOperator,
    Operator,
    as_operator,
    hessian_operator,
    hvp,
)
from flatlab.curvature.trace import TRACE_METHODS, TraceResult, trace

__all__ = [
    "FISHER_TYPES",
    "Eigenbasis",
    "KFACLayer",
    "eigenbasis",
    "kfac_factors",
    "kfac_layers",
    "kfac_solve",
    "kron_matvec",
    "Operator", "HessianOperator", "DenseOperator", "CallableOperator", "CurvatureError",
    "hvp", "hessian_operator", "as_operator", "HVP_METHODS",
    "lanczos", "power_iteration", "EigenResult", "random_probes",
    "trace", "TraceResult", "TRACE_METHODS", "spectral_density", "SpectralDensity",
    "stack_loss", "model_hessian", "node_top_eigenvalues", "node_traces",
    "nodes_equal", "NODE_STRATEGIES", "batched_chunk",
    "deviations", "disagreement_curvature", "disagreement_gap", "disagreement_alignment",
    "DisagreementCurvature", "DisagreementGap", "Alignment",
]
