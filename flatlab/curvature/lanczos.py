"""Extreme eigenvalues: Lanczos with full reorthogonalisation, and power iteration for comparison.

Lanczos (docs/reference/measures.md §5.2). From a random unit ``q_1`` build the orthonormal Krylov
basis ``Q_m`` and the tridiagonal ``T_m = Q_mᵀ H Q_m``::

    w = H q_j − β_{j−1} q_{j−1};  α_j = q_jᵀ w;  w ← w − α_j q_j;
    w ← w − Q_j (Q_jᵀ w)   (twice: full reorthogonalisation, no ghost eigenvalues, Paige 1976)
    β_j = ‖w‖;  q_{j+1} = w / β_j

The Ritz values ``θ_i`` (eigenvalues of ``T_m``) approximate the extreme eigenvalues of ``H``; the
residual of the Ritz pair ``(θ_i, y_i = Q_m s_i)`` is exactly ``‖H y_i − θ_i y_i‖ = β_m |s_{m,i}|``,
so convergence is checked on the residual: ``β_m |s_{m,i}| ≤ tol · |θ_i|`` (with a floor of
``tol · 1e-3 · max |θ|`` for eigenvalues near zero). For a symmetric matrix the eigenvalue error of
a Ritz value is at most the residual, and about ``residual² / gap`` once the gap is resolved. A
breakdown (``β_j ≈ 0``: an invariant subspace) restarts from a random vector orthogonal to
``Q_j`` with ``β_j = 0``, which keeps ``T`` exact (and finds repeated eigenvalues, one per
block; the iteration never stops at a breakdown).

Everything is batched: for an operator over ``n`` models (``[n, P]`` vectors) the ``n``
recurrences advance together, one batched Hessian-vector product per step, and stop when every
model has converged.

Power iteration (§5.1, PyHessian's method) converges to the eigenvalue of largest *magnitude*, at
rate ``|λ_2/λ_1|^t``; it is here as the baseline the literature used.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from flatlab.curvature.operators import Operator, as_operator, batched_matvec
from flatlab.errors import CurvatureError
from flatlab.seeds import seed_for

__all__ = ["EigenResult", "lanczos", "power_iteration", "tridiagonalize", "random_probes"]

WHICH = ("largest", "smallest")


@dataclass(frozen=True)
class EigenResult:
    """Eigenvalues of an operator (or of each of its ``n`` matrices).

    Attributes:
        eigenvalues: ``[k]`` (or ``[n, k]``): largest first for ``which="largest"``, smallest
            first for ``"smallest"``.
        residuals: ``‖H v_i − λ_i v_i‖`` of each returned pair (same shape).
        converged: Whether each residual met the tolerance (same shape, bool).
        num_matvecs: Products taken (one batched product counts once).
        eigenvectors: ``[k, P]`` (or ``[n, k, P]``) unit eigenvectors, when asked for.
        which: ``largest`` or ``smallest``.
        tol: The relative residual tolerance.
        method: ``lanczos`` or ``power``.
    """

    eigenvalues: torch.Tensor
    residuals: torch.Tensor
    converged: torch.Tensor
    num_matvecs: int
    eigenvectors: torch.Tensor | None
    which: str
    tol: float
    method: str

    @property
    def all_converged(self) -> bool:
        """Every returned eigenvalue met the tolerance."""
        return bool(self.converged.all())


def random_probes(shape: tuple[int, ...], *, seed: int, distribution: str = "rademacher",
                  dtype: torch.dtype = torch.float64,
                  device: str | torch.device = "cpu") -> torch.Tensor:
    """Seeded probe vectors (drawn on the CPU in float64, so they do not depend on the device)."""
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    if distribution == "rademacher":
        v = torch.randint(0, 2, shape, generator=gen, dtype=torch.int64,
                          device="cpu").double() * 2 - 1
    elif distribution == "gaussian":
        v = torch.randn(shape, generator=gen, dtype=torch.float64, device="cpu")
    else:
        raise CurvatureError(f"probe distribution {distribution!r} is unknown; accepted: "
                             "rademacher, gaussian")
    return v.to(device=device, dtype=dtype)


def _orthogonalize(w: torch.Tensor, Q: torch.Tensor) -> torch.Tensor:  # noqa: N803
    """``w − Q (Qᵀ w)`` twice, per batch (``Q`` ``[B, j, P]``, ``w`` ``[B, P]``)."""
    for _ in range(2):
        w = w - torch.einsum("bjp,bj->bp", Q, torch.einsum("bjp,bp->bj", Q, w))
    return w


def tridiagonalize(op: Operator, q0: torch.Tensor, steps: int, *, seed: int = 0,
                   check=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Run Lanczos with full reorthogonalisation from ``q0`` ``[B, P]``.

    Args:
        op: The operator.
        q0: Start vectors ``[B, P]`` (normalised here).
        steps: At most this many steps (at most ``P``).
        seed: Seed of the vectors drawn after a breakdown.
        check: ``check(T [B, m, m], beta_m [B]) -> bool`` called after each step; ``True`` stops.

    Returns:
        ``(T [B, m, m] float64, Q [B, m, P], beta_m [B] float64, m)``.
    """
    mv = batched_matvec(op)
    B, P = q0.shape  # noqa: N806
    steps = min(int(steps), P)
    q = q0 / q0.norm(dim=1, keepdim=True)
    # the Krylov basis lives in a buffer that doubles when full: appending by concatenation
    # would copy the whole basis every step (O(m^2 B P) bytes moved)
    buf = q.new_empty(B, min(steps, 8), P)
    buf[:, 0] = q
    Q = buf[:, :1]  # noqa: N806
    # the tridiagonal's coefficients live on the host (float64): one copy of (alpha_j, beta_j)
    # a step is the only time the host waits for a GPU; T, breakdowns and the convergence check
    # are computed there
    alphas, betas = [], []
    beta_prev = torch.zeros(B, dtype=q.dtype, device=q.device)
    q_prev = torch.zeros_like(q)
    restarts = 0
    scale = torch.zeros(B, dtype=torch.float64, device="cpu")
    for j in range(steps):
        w = mv(q) - beta_prev[:, None] * q_prev
        a = (q * w).sum(1)
        w = _orthogonalize(w - a[:, None] * q, Q)
        b = w.norm(dim=1)
        a_host, b_host = torch.stack([a, b]).detach().double().cpu()
        alphas.append(a_host)
        scale = torch.maximum(scale, a_host.abs() + b_host)
        T = _tri(alphas, betas)  # noqa: N806
        broken = b_host <= 1e-10 * scale.clamp_min(1e-300)
        if j + 1 == steps:
            return T, Q, b_host, j + 1
        # never stop at a breakdown: its Ritz values are exact, but a repeated eigenvalue shows up
        # once per Krylov block, so the next block must be explored before the top k are known
        if not bool(broken.any()):
            if check is not None and check(T, b_host):
                return T, Q, b_host, j + 1
            norm = b
        else:  # an invariant subspace: continue from a fresh orthogonal vector
            r = _orthogonalize(random_probes((B, P), seed=seed_for(seed, "restart", restarts),
                                             distribution="gaussian", dtype=q.dtype,
                                             device=q.device), Q)
            restarts += 1
            on_device = broken.to(q.device)
            w = torch.where(on_device[:, None], r, w)
            b = torch.where(on_device, torch.zeros_like(b), b)
            b_host = torch.where(broken, torch.zeros_like(b_host), b_host)
            norm = w.norm(dim=1)
        betas.append(b_host)
        q_prev, beta_prev = q, b
        q = w / norm[:, None]
        if j + 1 == buf.shape[1]:
            grown = q.new_empty(B, min(steps, 2 * buf.shape[1]), P)
            grown[:, :j + 1] = buf
            buf = grown
        buf[:, j + 1] = q
        Q = buf[:, :j + 2]  # noqa: N806
    raise AssertionError("unreachable")


def _tri(alphas: list[torch.Tensor], betas: list[torch.Tensor]) -> torch.Tensor:
    """The ``[B, m, m]`` tridiagonals of the host's ``alpha`` and ``beta`` lists (float64)."""
    a = torch.stack(alphas, 1)
    T = torch.diag_embed(a)  # noqa: N806
    if betas:
        b = torch.stack(betas, 1)
        T = T + torch.diag_embed(b, 1) + torch.diag_embed(b, -1)  # noqa: N806
    return T


def _select(theta: torch.Tensor, k: int, which: str) -> torch.Tensor:
    """Indices of the wanted Ritz values (``theta`` ascending, ``[B, m]``)."""
    m = theta.shape[1]
    idx = torch.arange(m - 1, m - 1 - k, -1, device=theta.device) if which == "largest" \
        else torch.arange(k, device=theta.device)
    return idx.expand(theta.shape[0], -1)


def _check_which(which: str, k: int, size: int) -> None:
    if which not in WHICH:
        raise CurvatureError(f"which={which!r} is unknown; accepted: {', '.join(WHICH)}")
    if not 1 <= int(k) <= size:
        raise CurvatureError(f"k must be between 1 and P = {size}, got {k}")


def lanczos(op, k: int = 1, *, which: str = "largest", tol: float = 1e-6,
            max_iter: int | None = None, seed: int = 0,
            return_vectors: bool = False, v0: torch.Tensor | None = None) -> EigenResult:
    """The ``k`` largest (or smallest) algebraic eigenvalues by Lanczos.

    Args:
        op: An operator (:func:`~flatlab.curvature.hessian_operator`), a dense symmetric matrix
            (``[P, P]`` or ``[n, P, P]``) or anything :func:`~flatlab.curvature.as_operator`
            accepts.
        k: How many eigenvalues.
        which: ``largest`` (sharpness) or ``smallest`` (negative curvature).
        tol: Stop when every wanted Ritz pair has ``residual <= tol * |θ|``.
        max_iter: At most this many products (default ``max(30, 6k)``, at most ``P``).
        seed: Seed of the Rademacher start vector.
        return_vectors: Also return the Ritz vectors.
        v0: Start vectors instead (``[P]``, or ``[n, P]`` for a batched operator), e.g. each
            node's own seeded vector so that results do not depend on how nodes are batched.

    Returns:
        An :class:`EigenResult`; for a batched operator every field has a leading ``n``.
    """
    op = as_operator(op)
    _check_which(which, k, op.size)
    if not tol > 0:
        raise CurvatureError(f"tol must be > 0, got {tol}")
    B = op.batch or 1  # noqa: N806
    steps = min(op.size, max_iter if max_iter is not None else max(30, 6 * k))
    if steps < k:
        raise CurvatureError(f"max_iter = {max_iter} is below k = {k}")
    if v0 is None:
        q0 = random_probes((B, op.size), seed=seed, dtype=op.dtype, device=op.device)
    else:
        q0 = torch.as_tensor(v0, device=op.device).to(op.dtype).reshape(-1, op.size)
        if q0.shape[0] != B or not bool((q0.norm(dim=1) > 0).all()):
            raise CurvatureError(f"v0 must be {B} non-zero start vector(s) of size {op.size}, "
                                 f"got shape {tuple(torch.as_tensor(v0, device=op.device).shape)}")
    start = op.num_matvecs

    def residuals(T: torch.Tensor, beta: torch.Tensor):  # noqa: N803
        theta, S = torch.linalg.eigh(T)  # noqa: N806
        idx = _select(theta, min(k, T.shape[1]), which)
        th = theta.gather(1, idx)
        res = (beta[:, None] * S[:, -1, :].gather(1, idx)).abs()
        floor = 1e-3 * theta.abs().amax(1, keepdim=True)
        ok = res <= tol * torch.maximum(th.abs(), floor)
        return theta, S, idx, th, res, ok

    def check(T: torch.Tensor, beta: torch.Tensor) -> bool:  # noqa: N803
        return T.shape[1] >= k and bool(residuals(T, beta)[5].all())

    T, Q, beta, m = tridiagonalize(op, q0, steps, seed=seed, check=check)  # noqa: N806
    theta, S, idx, th, res, ok = residuals(T, beta)  # noqa: N806
    if m == op.size:  # the whole space: exact up to rounding
        ok = torch.ones_like(ok)
    vecs = None
    if return_vectors:
        Sk = S.gather(2, idx[:, None, :].expand(-1, m, -1)).to(Q.dtype).to(Q.device)  # noqa: N806
        vecs = torch.einsum("bmk,bmp->bkp", Sk, Q)
    out = [th, res, ok] + ([vecs] if vecs is not None else [])
    if op.batch is None:
        out = [t[0] for t in out]
    return EigenResult(out[0], out[1], out[2], op.num_matvecs - start,
                       out[3] if return_vectors else None, which, float(tol), "lanczos")


def power_iteration(op, k: int = 1, *, max_iter: int = 100, tol: float = 1e-3,
                    seed: int = 0) -> EigenResult:
    """The ``k`` eigenvalues of largest magnitude by deflated power iteration (PyHessian's rule).

    Each eigenvalue: start from a Gaussian vector, project out the eigenvectors found so far,
    ``v ← Hv / ‖Hv‖``, and stop when the Rayleigh quotient changes by less than ``tol`` relative
    (``|Δλ| / (|λ| + 1e-6)``) or after ``max_iter`` products. There is no residual test in the
    stopping rule; the residuals ``‖Hv − λv‖`` are reported (one extra product per eigenvalue is
    not taken: they come from the last iteration) and ``converged`` is the stopping rule's verdict.
    """
    op = as_operator(op)
    _check_which("largest", k, op.size)
    mv = batched_matvec(op)
    B = op.batch or 1  # noqa: N806
    start = op.num_matvecs
    vals, ress, oks, vecs = [], [], [], []
    for i in range(k):
        v = random_probes((B, op.size), seed=seed_for(seed, "probes", i),
                          distribution="gaussian", dtype=op.dtype,
                          device=op.device)
        lam = torch.full((B,), float("nan"), dtype=op.dtype, device=op.device)
        done = torch.zeros(B, dtype=torch.bool, device="cpu")
        res = torch.full((B,), float("nan"), dtype=op.dtype, device=op.device)
        for _ in range(max_iter):
            if vecs:
                V = torch.stack(vecs, 1)  # noqa: N806
                v = v - torch.einsum("bkp,bk->bp", V, torch.einsum("bkp,bp->bk", V, v))
            v = v / v.norm(dim=1, keepdim=True)
            hv = mv(v)
            new = (v * hv).sum(1)
            keep = done.to(op.device)  # models already stopped keep their values
            res = torch.where(keep, res, (hv - new[:, None] * v).norm(dim=1))
            change = ((new - lam).abs() / (lam.abs() + 1e-6)).cpu()
            lam = torch.where(keep, lam, new)
            done = done | (change < tol)
            v = torch.where(done[:, None].to(v.device), v, hv)
            if bool(done.all()):
                break
        vals.append(lam)
        ress.append(res)
        oks.append(done.clone())
        vecs.append(v / v.norm(dim=1, keepdim=True))
    order = torch.stack(vals, 1).abs().argsort(1, descending=True)
    ev = torch.stack(vals, 1).gather(1, order.to(op.device))
    rs = torch.stack(ress, 1).gather(1, order.to(op.device))
    ok = torch.stack(oks, 1).gather(1, order.cpu())  # the flags live on the host
    V = torch.stack(vecs, 1)  # noqa: N806
    V = V.gather(1, order.to(op.device)[:, :, None].expand(-1, -1, op.size))  # noqa: N806
    if op.batch is None:
        ev, rs, ok, V = ev[0], rs[0], ok[0], V[0]  # noqa: N806
    return EigenResult(ev, rs, ok, op.num_matvecs - start, V, "largest", float(tol), "power")
