"""The stationary disagreement curvature ``tr(H Σ)`` against independent references.

1. Brute force: the full ``nd x nd`` linear system of each update, built from the raw mixing
   matrices (``vec(X)`` with Kronecker products, a rotated ``H`` and a correlated noise ``S``),
   solved by ``scipy.linalg.solve_discrete_lyapunov``.
2. Local steps and time-varying ``W``: the same system over one explicit period, and Local SGD's
   closed form.
3. flatlab's own runs (``flatlab.simulate`` with ``diffusion``, ``consensus`` and
   ``diffusion-cta``) on a homogeneous quadratic with Gaussian gradient noise: the time average
   of the measured ``tr(H Σ_t)`` with a batch-means interval.
4. Bad input, in the API and on the command line.
"""

import json

import numpy as np
import pytest
import scipy.linalg as sla
import scipy.stats as st

from flatlab import topology
from flatlab.cli import main
from flatlab.errors import TheoryError
from flatlab.theory import DisagreementPrediction, stationary_disagreement

FORMS = ("diffusion", "consensus", "diffusion-cta")


# ------------------------------------------------------------------------------ the problems
def _rotated_problem(d: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``H = V diag(h) V^T`` (random rotation), a correlated noise ``S``, ``s_j = v_j^T S v_j``."""
    rng = np.random.default_rng(seed)
    v, _ = np.linalg.qr(rng.standard_normal((d, d)))
    h = np.sort(rng.uniform(0.2, 3.0, size=d))
    a = rng.standard_normal((d, d))
    s_mat = a @ a.T / d + 0.5 * np.eye(d)
    return v @ np.diag(h) @ v.T, s_mat, h, np.einsum("aj,ab,bj->j", v, s_mat, v)


def _random_symmetric_w(n: int, seed: int) -> np.ndarray:
    """``0.4 I + 0.6 (1/2k) Σ (P_i + P_i^T)`` over random permutations: symmetric, doubly
    stochastic, eigenvalues in ``[-0.2, 1]``."""
    rng = np.random.default_rng(seed)
    perms = [np.eye(n)[rng.permutation(n)] for _ in range(3)]
    return 0.4 * np.eye(n) + 0.6 * sum(p + p.T for p in perms) / (2 * len(perms))


def _random_directed_w(n: int, seed: int) -> np.ndarray:
    """A convex combination of permutations and I: doubly stochastic, neither symmetric nor
    circulant."""
    rng = np.random.default_rng(seed)
    return (0.5 * np.eye(n)[rng.permutation(n)] + 0.3 * np.eye(n)[rng.permutation(n)]
            + 0.2 * np.eye(n))


def _brute_force(rounds: list[np.ndarray], lr: float, hess: np.ndarray, s_mat: np.ndarray,
                 form: str, offsets: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per phase ``E tr(H Σ)`` and ``E Ξ²`` from the full system on ``vec(X)`` (column-major).

    ``vec(W X M) = (M^T ⊗ W) vec(X)``; the noise rows are independent with covariance ``S``, so
    ``Cov vec(Ξ) = S ⊗ I_n``. Round ``t`` of the list is the step with index ``t mod period``.
    With ``offsets`` (``Z``, ``[n, d]``, rows ``ζ_i``) the gradient is ``X H + Z + Ξ``: the
    mean ``μ = E vec(X)`` is the periodic fixed point of ``μ⁺ = A μ − B vec(Z)``, solved on the
    full stacked system, and ``E x² = μ² + Var`` adds ``μᵀ (H ⊗ C) μ / n`` per phase.
    """
    n, d = rounds[0].shape[0], hess.shape[0]
    eye_n, eye_d = np.eye(n), np.eye(d)
    steps = []
    for w in rounds:
        if form == "diffusion":  # X+ = W (X - lr (X H + Z + Ξ))
            a, b = np.kron(eye_d - lr * hess, w), lr * np.kron(eye_d, w)
        elif form == "consensus":  # X+ = W X - lr (X H + Z + Ξ)
            a, b = np.kron(eye_d, w) - lr * np.kron(hess, eye_n), lr * np.eye(n * d)
        else:  # Φ = W X, X+ = Φ - lr (Φ H + Z + Ξ)
            a, b = np.kron(eye_d - lr * hess, w), lr * np.eye(n * d)
        steps.append((a, b @ np.kron(s_mat, eye_n) @ b.T, b))
    z = np.zeros(n * d) if offsets is None else offsets.ravel(order="F")
    phi, q, c = np.eye(n * d), np.zeros((n * d, n * d)), np.zeros(n * d)
    for a, bqb, b in steps:
        phi, q, c = a @ phi, a @ q @ a.T + bqb, a @ c - b @ z
    assert np.abs(np.linalg.eigvals(phi)).max() < 1  # the full system, average included
    cov = sla.solve_discrete_lyapunov(phi, q)
    mu = np.linalg.solve(np.eye(n * d) - phi, c)
    centre = eye_n - 1.0 / n
    curv, xi2 = [], []
    for a, bqb, b in steps:
        second = cov + np.outer(mu, mu)
        curv.append(np.trace(np.kron(hess, centre) @ second) / n)
        xi2.append(np.trace(np.kron(eye_d, centre) @ second) / n)
        cov, mu = a @ cov @ a.T + bqb, a @ mu - b @ z
    return np.array(curv), np.array(xi2)


def _offsets(n: int, d: int, seed: int, scale: float = 1.0) -> np.ndarray:
    """Gradient offsets ``Z`` (``[n, d]``, rows ``ζ_i``) whose rows sum to zero."""
    z = scale * np.random.default_rng(seed).standard_normal((n, d))
    return z - z.mean(axis=0)


def _along(offsets: np.ndarray, hess: np.ndarray) -> np.ndarray:
    """``Z v_j`` per eigendirection of ``H`` (eigenvalues ascending, as ``_rotated_problem``)."""
    return offsets @ np.linalg.eigh(hess)[1]


def _static_topologies(n: int) -> dict[str, topology.Topology]:
    return {
        "ring": topology.make("ring", n),
        "exponential": topology.make("exponential", n),  # directed circulant: complex modes
        "random symmetric": topology.from_matrix(_random_symmetric_w(n, 3), name="random"),
        "random directed": topology.from_matrix(_random_directed_w(n, 4), name="directed"),
    }


# ---------------------------------------------------------------- 1. closed form = brute force
@pytest.mark.parametrize("name", ["ring", "exponential", "random symmetric", "random directed"])
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("lr", [0.05, 0.2])
def test_closed_form_equals_the_brute_force_lyapunov_solve(name, form, lr):
    top = _static_topologies(8)[name]
    hess, s_mat, h, s = _rotated_problem(3, seed=1)
    curv, xi2 = _brute_force([top.matrix()], lr, hess, s_mat, form)
    p = stationary_disagreement(lr, h, s, topology=top, form=form)
    assert p.method == ("dense" if name == "random directed" else "eigen")
    assert p.curvature_disagreement == pytest.approx(curv[0], rel=1e-10)
    assert p.consensus_distance == pytest.approx(xi2[0], rel=1e-10)
    assert p.terms == {"directions": p.curvature_disagreement, "heterogeneity": 0.0,
                       "bulk": 0.0}
    assert sum(p.per_direction["curvature_disagreement"]) == pytest.approx(
        p.curvature_disagreement, rel=1e-12)
    if name != "random directed":  # the two routes agree
        dense = stationary_disagreement(lr, h, s, topology=top, form=form, method="dense")
        assert dense.method == "dense"
        assert dense.curvature_disagreement == pytest.approx(p.curvature_disagreement, rel=1e-10)
        assert dense.consensus_distance == pytest.approx(p.consensus_distance, rel=1e-10)
        assert dense.stability_margin == pytest.approx(p.stability_margin, rel=1e-9)


@pytest.mark.parametrize("name", ["ring", "exponential", "random directed"])
@pytest.mark.parametrize("form", FORMS)
def test_refused_exactly_when_the_full_system_is_unstable(name, form):
    """For ``0 < η h_j < 2`` the average contracts, so the full system is unstable exactly when
    a disagreement mode is."""
    top = _static_topologies(8)[name]
    h = np.array([0.5, 3.0])
    for lr in np.linspace(0.05, 0.65, 13):
        steps = []
        for hj in h:
            w = top.matrix()
            a = w - lr * hj * np.eye(8) if form == "consensus" else (1 - lr * hj) * w
            steps.append(np.abs(np.linalg.eigvals(a)).max())
        if max(steps) >= 1:
            with pytest.raises(TheoryError, match="unstable step"):
                stationary_disagreement(lr, h, 1.0, topology=top, form=form)
        else:
            p = stationary_disagreement(lr, h, 1.0, topology=top, form=form)
            assert p.stability_margin > 0


@pytest.mark.parametrize("form", FORMS)
def test_closed_form_by_hand_and_from_eigenvalues(form):
    """``Var_kj`` written out for a symmetric W, and ``eigenvalues=`` gives the same."""
    top = topology.make("ring", 10)
    lam = np.linalg.eigvalsh(top.matrix())[:-1]  # k >= 2
    lr, h, s = 0.1, np.array([0.0, 0.5, 2.0]), np.array([1.0, 0.3, 2.0])
    lk, hj = lam[None, :], h[:, None]
    var = {"diffusion": lr**2 * lk**2 / (1 - lk**2 * (1 - lr * hj) ** 2),
           "consensus": lr**2 / (1 - (lk - lr * hj) ** 2),
           "diffusion-cta": lr**2 / (1 - lk**2 * (1 - lr * hj) ** 2)}[form] * s[:, None]
    p = stationary_disagreement(lr, h, s, topology=top, form=form)
    assert p.curvature_disagreement == pytest.approx((hj * var).sum() / 10, rel=1e-12)
    assert p.consensus_distance == pytest.approx(var.sum() / 10, rel=1e-12)
    e = stationary_disagreement(lr, h, s, eigenvalues=np.linalg.eigvalsh(top.matrix()), form=form)
    assert e.curvature_disagreement == pytest.approx(p.curvature_disagreement, rel=1e-12)
    assert e.inputs["nodes"] == 10


def test_bulk_is_the_small_step_limit():
    top = topology.make("torus", 16)
    lam = np.linalg.eigvalsh(top.matrix())[:-1]
    lr, hs = 0.02, 3.0
    p = stationary_disagreement(lr, [], 0.0, topology=top, bulk_hs=hs)
    assert p.terms["bulk"] == pytest.approx(lr**2 / 16 * np.sum(lam**2 / (1 - lam**2)) * hs,
                                            rel=1e-12)
    assert p.consensus_distance == 0.0 and p.curvature_disagreement == p.terms["bulk"]
    c = stationary_disagreement(lr, [], 0.0, topology=top, bulk_hs=hs, form="consensus")
    assert c.terms["bulk"] == pytest.approx(lr**2 / 16 * np.sum(1 / (1 - lam**2)) * hs,
                                            rel=1e-12)
    # many small-curvature directions approach it
    h = np.full(50, 1e-4)
    explicit = stationary_disagreement(lr, h, hs / h.sum(), topology=top)
    assert explicit.curvature_disagreement == pytest.approx(p.terms["bulk"], rel=1e-5)
    both = stationary_disagreement(lr, [1.0], 2.0, topology=top, bulk_hs=hs)
    assert both.curvature_disagreement == pytest.approx(
        stationary_disagreement(lr, [1.0], 2.0, topology=top).curvature_disagreement
        + p.terms["bulk"], rel=1e-12)


# ------------------------------------------------------------ 2. local steps, time-varying W
def _explicit_rounds(top: topology.Topology, local_steps: int) -> list[np.ndarray]:
    """The period written out by hand: ``W`` on steps ``t`` with ``(t + 1) % H == 0``, else I."""
    base = [top.matrix(t) for t in range(top.period)]
    return [base[t // local_steps] if (t + 1) % local_steps == 0 else np.eye(top.n)
            for t in range(local_steps * len(base))]


@pytest.mark.parametrize("name, local_steps, form", [
    ("complete", 4, "diffusion"),  # Local SGD
    ("ring", 3, "consensus"),
    ("exponential", 2, "diffusion-cta"),
    ("one-peer-exponential", 1, "diffusion"),
    ("one-peer-exponential", 2, "consensus"),
    ("random switching", 1, "diffusion"),  # two non-commuting rounds: the dense route
    ("random switching", 2, "diffusion-cta"),
])
def test_periodic_state_equals_the_explicit_period(name, local_steps, form):
    if name == "random switching":
        top = topology.from_matrix([_random_symmetric_w(8, 5), _random_symmetric_w(8, 6)],
                                   name="switching")
    else:
        top = topology.make(name, 8)
    hess, s_mat, h, s = _rotated_problem(3, seed=2)
    lr = 0.1
    curv, xi2 = _brute_force(_explicit_rounds(top, local_steps), lr, hess, s_mat, form)
    p = stationary_disagreement(lr, h, s, topology=top, form=form, local_steps=local_steps)
    assert p.inputs["period"] == local_steps * top.period == len(p.per_phase["bulk"])
    np.testing.assert_allclose(p.per_phase["curvature_disagreement"], curv, rtol=1e-10,
                               atol=1e-15)
    np.testing.assert_allclose(p.per_phase["consensus_distance"], xi2, rtol=1e-10, atol=1e-15)
    assert p.curvature_disagreement == pytest.approx(curv.mean(), rel=1e-10)
    if name != "random switching":  # the two routes agree
        dense = stationary_disagreement(lr, h, s, topology=top, form=form,
                                        local_steps=local_steps, method="dense")
        np.testing.assert_allclose(dense.per_phase["curvature_disagreement"], curv, rtol=1e-10,
                                   atol=1e-15)
    else:
        assert p.method == "dense"
    # the same schedule built into the topology
    built = topology.make(name, 8, local_steps=local_steps) if name != "random switching" else \
        topology.periodic(top, local_steps)
    again = stationary_disagreement(lr, h, s, topology=built, form=form)
    assert again.per_phase == p.per_phase


def test_local_sgd_closed_form_and_phase_zero_after_the_average():
    """Complete graph, diffusion, H local steps: after the average every deviation is 0, then
    ``r`` local steps add ``η² s Σ_{i<r} (1 − η h)^{2i}`` to each of the ``n − 1`` modes."""
    n, lr, big_h = 8, 0.2, 5
    h, s = np.array([0.5, 1.0, 3.0]), np.array([1.0, 0.4, 2.0])
    p = stationary_disagreement(lr, h, s, topology=topology.make("complete", n),
                                local_steps=big_h)
    q = (1 - lr * h) ** 2
    want = [(n - 1) / n * np.sum(h * lr**2 * s * (1 - q**r) / (1 - q)) for r in range(big_h)]
    np.testing.assert_allclose(p.per_phase["curvature_disagreement"], want, rtol=1e-12)
    assert p.per_phase["curvature_disagreement"][0] == 0.0
    assert p.curvature_disagreement == pytest.approx(np.mean(want), rel=1e-12)


@pytest.mark.parametrize("form", FORMS)
def test_one_local_step_is_the_static_result(form):
    top = topology.make("ring", 12)
    a = stationary_disagreement(0.1, [0.5, 2.0], 1.0, topology=top, form=form)
    b = stationary_disagreement(0.1, [0.5, 2.0], 1.0, topology=top, form=form, local_steps=1)
    assert a == b and len(a.per_phase["curvature_disagreement"]) == 1


def test_eigenvalues_with_local_steps():
    top = topology.make("hypercube", 8)
    lam = np.linalg.eigvalsh(top.matrix())
    a = stationary_disagreement(0.1, [1.0, 2.0], [1.0, 0.5], eigenvalues=lam, local_steps=3,
                                form="consensus")
    b = stationary_disagreement(0.1, [1.0, 2.0], [1.0, 0.5], topology=top, local_steps=3,
                                form="consensus")
    np.testing.assert_allclose(a.per_phase["curvature_disagreement"],
                               b.per_phase["curvature_disagreement"], rtol=1e-12)


# ------------------------------------------------ 2b. heterogeneity: the deterministic part
def _het_topologies() -> dict[str, topology.Topology]:
    tops = _static_topologies(8)
    tops["torus 3x4"] = topology.make("torus", 12)  # a two-dimensional circulant
    return tops


@pytest.mark.parametrize("name", ["ring", "exponential", "random symmetric", "random directed",
                                  "torus 3x4"])
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("lr", [0.05, 0.2])
def test_heterogeneity_equals_the_brute_force_fixed_point(name, form, lr):
    top = _het_topologies()[name]
    hess, s_mat, h, s = _rotated_problem(3, seed=1)
    z = _offsets(top.n, 3, seed=11)
    curv, xi2 = _brute_force([top.matrix()], lr, hess, s_mat, form, offsets=z)
    p = stationary_disagreement(lr, h, s, topology=top, form=form, heterogeneity=_along(z, hess))
    assert p.method == ("dense" if name == "random directed" else "eigen")
    assert p.curvature_disagreement == pytest.approx(curv[0], rel=1e-10)
    assert p.consensus_distance == pytest.approx(xi2[0], rel=1e-10)
    noise = stationary_disagreement(lr, h, s, topology=top, form=form)
    assert p.terms["directions"] == pytest.approx(noise.curvature_disagreement, rel=1e-12)
    assert p.terms["heterogeneity"] == pytest.approx(curv[0] - noise.curvature_disagreement,
                                                     rel=1e-9)
    assert sum(p.per_direction["curvature_disagreement"]) == pytest.approx(
        p.curvature_disagreement, rel=1e-12)
    assert sum(p.per_direction["heterogeneity"]) == pytest.approx(p.terms["heterogeneity"],
                                                                  rel=1e-12)
    if name != "random directed":  # the two routes agree
        dense = stationary_disagreement(lr, h, s, topology=top, form=form, method="dense",
                                        heterogeneity=_along(z, hess))
        assert dense.terms["heterogeneity"] == pytest.approx(p.terms["heterogeneity"],
                                                             rel=1e-10)


@pytest.mark.parametrize("name, local_steps, form", [
    ("complete", 4, "diffusion"),  # Local SGD
    ("ring", 3, "consensus"),
    ("exponential", 2, "diffusion-cta"),
    ("exponential", 3, "diffusion"),
    ("one-peer-exponential", 1, "diffusion"),
    ("one-peer-exponential", 2, "consensus"),
    ("random symmetric", 2, "diffusion"),
    ("random switching", 1, "diffusion"),  # two non-commuting rounds: the dense route
    ("random switching", 2, "consensus"),
])
def test_periodic_heterogeneity_equals_the_explicit_period(name, local_steps, form):
    if name == "random switching":
        top = topology.from_matrix([_random_symmetric_w(8, 5), _random_symmetric_w(8, 6)],
                                   name="switching")
    elif name == "random symmetric":
        top = _static_topologies(8)[name]
    else:
        top = topology.make(name, 8)
    hess, s_mat, h, s = _rotated_problem(3, seed=2)
    z = _offsets(8, 3, seed=12, scale=2.0)
    lr = 0.1
    curv, xi2 = _brute_force(_explicit_rounds(top, local_steps), lr, hess, s_mat, form,
                             offsets=z)
    p = stationary_disagreement(lr, h, s, topology=top, form=form, local_steps=local_steps,
                                heterogeneity=_along(z, hess))
    np.testing.assert_allclose(p.per_phase["curvature_disagreement"], curv, rtol=1e-10,
                               atol=1e-15)
    np.testing.assert_allclose(p.per_phase["consensus_distance"], xi2, rtol=1e-10, atol=1e-15)
    assert p.curvature_disagreement == pytest.approx(curv.mean(), rel=1e-10)
    if name != "random switching":
        dense = stationary_disagreement(lr, h, s, topology=top, form=form, method="dense",
                                        local_steps=local_steps, heterogeneity=_along(z, hess))
        np.testing.assert_allclose(dense.per_phase["heterogeneity"], p.per_phase["heterogeneity"],
                                   rtol=1e-10, atol=1e-15)


@pytest.mark.parametrize("form", FORMS)
def test_heterogeneity_by_hand(form):
    """``E y_kj = −c z_kj / (1 − m)`` written out with numpy's eigenvectors of a symmetric W."""
    top = topology.make("ring", 10)
    lam, u = np.linalg.eigh(top.matrix())
    lam, u = lam[:-1], u[:, :-1]  # k >= 2 (the top eigenvector is the average's)
    lr, h = 0.1, np.array([0.0, 0.5, 2.0])
    het = _offsets(10, 3, seed=13)
    zk = u.T @ het  # [n - 1, m]
    lk, hj = lam[:, None], h[None, :]
    mean = {"diffusion": -lr * lk * zk / (1 - lk * (1 - lr * hj)),
            "consensus": -lr * zk / (1 - lk + lr * hj),
            "diffusion-cta": -lr * zk / (1 - lk * (1 - lr * hj))}[form]
    p = stationary_disagreement(lr, h, 0.0, topology=top, form=form, heterogeneity=het)
    assert p.terms["directions"] == 0.0 and p.terms["bulk"] == 0.0
    assert p.curvature_disagreement == pytest.approx((hj * mean**2).sum() / 10, rel=1e-12)
    assert p.consensus_distance == pytest.approx((mean**2).sum() / 10, rel=1e-12)
    assert p.inputs["heterogeneity_zeta2"] == pytest.approx((het**2).sum(axis=0) / 10,
                                                            rel=1e-12)


def test_local_sgd_heterogeneity_closed_form():
    """Local SGD: from 0 after the average, ``r`` local steps drift each node to
    ``d_r = −z (1 − q^r) / h`` (``q = 1 − η h``), so phase r holds
    ``(1/n) Σ_j h_j ||z_j||² ((1 − q_j^r) / h_j)²``."""
    n, lr, big_h = 8, 0.2, 5
    h = np.array([0.5, 1.0, 3.0])
    het = _offsets(n, 3, seed=14)
    p = stationary_disagreement(lr, h, 0.0, topology=topology.make("complete", n),
                                local_steps=big_h, heterogeneity=het)
    q, norm2 = 1 - lr * h, (het**2).sum(axis=0)
    want = [np.sum(h * norm2 * ((1 - q**r) / h) ** 2) / n for r in range(big_h)]
    np.testing.assert_allclose(p.per_phase["heterogeneity"], want, rtol=1e-12, atol=1e-16)
    assert p.per_phase["curvature_disagreement"] == p.per_phase["heterogeneity"]


def test_heterogeneity_zero_and_scaling():
    top = topology.make("ring", 8)
    base = stationary_disagreement(0.1, [1.0, 2.0], 0.5, topology=top, bulk_hs=1.0)
    zero = stationary_disagreement(0.1, [1.0, 2.0], 0.5, topology=top, bulk_hs=1.0,
                                   heterogeneity=np.zeros((8, 2)))
    assert zero.curvature_disagreement == pytest.approx(base.curvature_disagreement, rel=1e-12)
    assert zero.terms["heterogeneity"] == 0.0 and base.terms["heterogeneity"] == 0.0
    het = _offsets(8, 2, seed=15)
    one = stationary_disagreement(0.1, [1.0, 2.0], 0.0, topology=top, heterogeneity=het)
    # quadratic in the offsets; the column sums' tolerance is relative (tiny offsets pass)
    tiny = stationary_disagreement(0.1, [1.0, 2.0], 0.0, topology=top,
                                   heterogeneity=1e-20 * het + 1e-28)
    assert tiny.terms["heterogeneity"] == pytest.approx(1e-40 * one.terms["heterogeneity"],
                                                        rel=1e-6)
    # a torch tensor and a nested list are accepted
    import torch

    for given in (torch.from_numpy(het), het.tolist()):
        again = stationary_disagreement(0.1, [1.0, 2.0], 0.0, topology=top, heterogeneity=given)
        assert again.terms == one.terms



# --------------------------------------------------- 3. flatlab's own runs match the prediction
N, D = 16, 4
CURVATURE = np.array([0.5, 1.0, 2.0, 4.0])
STEPS, BURN, BATCHES = 4000, 200, 20
RUNS = [(g, lr, f) for g in ("ring", "exponential", "complete") for lr in (0.05, 0.15)
        for f in FORMS] + [("complete", 0.1, "diffusion", 4), ("ring", 0.1, "consensus", 2)]


def _intervals(case) -> int:
    """Phases with an interval (complete + diffusion: 0 right after the exact average)."""
    name, _, form, local_steps = (*case, 1)[:4]
    return local_steps - (name == "complete" and form == "diffusion")


#: Heterogeneous runs (every node its own minimizer b_i, same H): one interval each.
HET_RUNS = [(g, lr, f) for g in ("ring", "exponential") for lr in (0.05, 0.15)
            for f in ("diffusion", "consensus")]
#: Scale of the minimizers b_i: the heterogeneity term is 0.3 to 3 times the noise term here.
SPREAD = 0.3

#: The intervals of the family (Bonferroni below): the homogeneous and heterogeneous runs.
N_INTERVALS = sum(_intervals(r) for r in RUNS) + len(HET_RUNS)


def _quadratic(seed: int, spread: float = 0.0, noisy: bool = True, steps: int = STEPS + BURN):
    """Every node ``f_i(x) = ½ (x − b_i)ᵀ H (x − b_i)`` (H rotated, eigenvalues CURVATURE) and
    gradients ``(X − B) H + Ξ`` with Gaussian rows of covariance ``S = L Lᵀ`` (pre-drawn,
    seeded; none when not ``noisy``).

    ``b_i = spread · N(0, I)`` (0: the homogeneous problem, ``x* = 0``). With one ``H`` the
    minimizer is ``x* = b̄``, so ``g_i = H (x_i − x*) + ζ_i + ξ_i`` with ``ζ_i = H (b̄ − b_i)``;
    returns ``Z V`` (column ``j``: the offsets along the eigenvector of ``CURVATURE[j]``).
    """
    import torch

    rng = np.random.default_rng(seed)
    v, _ = np.linalg.qr(rng.standard_normal((D, D)))
    hess = v @ np.diag(CURVATURE) @ v.T
    chol = 0.5 * np.tril(rng.standard_normal((D, D))) + np.eye(D)
    s = np.einsum("aj,ab,bj->j", v, chol @ chol.T, v)
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(steps, N, D, generator=gen, dtype=torch.float64) \
        @ torch.from_numpy(chol.T) * float(noisy)
    b = spread * np.random.default_rng(seed + 1000).standard_normal((N, D))
    offsets = (b.mean(axis=0) - b) @ hess  # rows ζ_i, summing to 0
    hess_t, shift = torch.from_numpy(hess), torch.from_numpy(b @ hess)

    def grad_fn(X, t):  # noqa: N803
        return X @ hess_t - shift + noise[t]

    return grad_fn, hess, s * float(noisy), offsets @ v


def _trace_series(name, lr, form, local_steps, seed, spread=0.0, noisy=True, steps=STEPS,
                  burn=BURN):
    """``tr(H Σ_t)`` after ``burn + t`` steps, ``t < steps``, the noise ``s_j`` and ``Z V``."""
    import torch

    import flatlab

    grad_fn, hess, s, het = _quadratic(seed, spread, noisy, steps + burn)
    top = topology.make(name, N, local_steps=local_steps)
    xs = flatlab.simulate(form, top, grad_fn, torch.zeros(N, D, dtype=torch.float64),
                          steps=steps + burn, lr=lr).numpy()
    dev = xs - xs.mean(axis=1, keepdims=True)
    trace = np.einsum("tia,ab,tib->t", dev, hess, dev) / N  # tr(H Σ_t), every step
    # xs[t] is the iterate after t steps; burn % H == 0
    return trace[burn:burn + steps], s, het


def _batch_means(series: np.ndarray, level: float) -> tuple[float, float]:
    """Mean and the half-width of its ``level`` t-interval from BATCHES batch means."""
    means = series.reshape(BATCHES, -1).mean(axis=1)
    half = st.t.ppf(0.5 + level / 2, BATCHES - 1) * means.std(ddof=1) / np.sqrt(BATCHES)
    return float(means.mean()), float(half)


#: 99% for the family of intervals (Bonferroni), so a correct prediction fails with < 1% chance.
LEVEL = 1 - 0.01 / N_INTERVALS


@pytest.mark.parametrize("case", RUNS, ids=lambda r: "-".join(map(str, r)))
def test_flatlab_runs_match_the_prediction(case):
    name, lr, form, local_steps = (*case, 1)[:4]
    seed = RUNS.index(case) + 1
    trace, s, _ = _trace_series(name, lr, form, local_steps, seed)
    pred = stationary_disagreement(lr, CURVATURE, s, topology=topology.make(name, N), form=form,
                                   local_steps=local_steps)
    if local_steps == 1 and name == "complete" and form == "diffusion":
        assert pred.curvature_disagreement == 0.0
        assert np.abs(trace).max() <= 1e-28  # W = J: every node identical after each step
        return
    # each phase s = r (mod H) on its own (H = 1: the whole series)
    for r, want in enumerate(pred.per_phase["curvature_disagreement"]):
        phase = trace[r::local_steps]
        if want == 0.0:  # Local SGD right after the average
            assert r == 0 and np.abs(phase).max() <= 1e-28
            continue
        mean, half = _batch_means(phase, LEVEL)
        assert abs(mean - want) <= half, (r, mean, half, want)
        assert half <= 0.1 * want, (r, half, want)  # the interval is tight enough to fail


@pytest.mark.parametrize("case", HET_RUNS, ids=lambda r: "-".join(map(str, r)))
def test_heterogeneous_flatlab_runs_match_the_prediction(case):
    """Own minimizers b_i and Gaussian noise: the time average of ``tr(H Σ_t)`` lies in its
    interval around noise + heterogeneity, and not around the noise alone (the interval sees
    the heterogeneity term)."""
    name, lr, form = case
    seed = 100 + HET_RUNS.index(case)
    trace, s, het = _trace_series(name, lr, form, 1, seed, spread=SPREAD)
    pred = stationary_disagreement(lr, CURVATURE, s, topology=topology.make(name, N), form=form,
                                   heterogeneity=het)
    mean, half = _batch_means(trace, LEVEL)
    want = pred.curvature_disagreement
    assert abs(mean - want) <= half, (mean, half, want, pred.terms)
    assert half <= 0.1 * want, (half, want)
    assert abs(mean - pred.terms["directions"]) > half  # the noise alone is refuted
    assert 0.2 < pred.terms["heterogeneity"] / pred.terms["directions"] < 5


@pytest.mark.parametrize("name, lr, form, local_steps", [
    *[(g, lr, f, 1) for g in ("ring", "exponential") for lr in (0.05, 0.15)
      for f in ("diffusion", "consensus")],
    ("complete", 0.1, "diffusion", 4),  # Local SGD
    ("ring", 0.1, "consensus", 3),
    ("exponential", 0.1, "diffusion-cta", 2),
])
def test_heterogeneity_alone_is_the_deterministic_limit(name, lr, form, local_steps):
    """Noise 0: the run converges to the periodic fixed point, every phase to 1e-8."""
    steps = 4 * local_steps
    trace, s, het = _trace_series(name, lr, form, local_steps, 7, spread=1.0, noisy=False,
                                  steps=steps, burn=600 * local_steps)
    assert np.all(s == 0)
    pred = stationary_disagreement(lr, CURVATURE, 0.0, topology=topology.make(name, N),
                                   form=form, local_steps=local_steps, heterogeneity=het)
    assert pred.terms["directions"] == 0.0
    assert pred.curvature_disagreement == pytest.approx(pred.terms["heterogeneity"], rel=1e-15)
    want = np.tile(pred.per_phase["curvature_disagreement"], steps // local_steps)
    np.testing.assert_allclose(trace, want, rtol=1e-10, atol=1e-14)


# ----------------------------------------------------------------------------- 4. bad input
def test_result_is_json_ready():
    p = stationary_disagreement(0.1, [1.0, 2.0], 0.5, topology=topology.make("ring", 8),
                                local_steps=2, bulk_hs=1.0)
    assert isinstance(p, DisagreementPrediction) and float(p) == p.curvature_disagreement
    d = json.loads(json.dumps(p.as_dict()))
    assert d["terms"].keys() == {"directions", "heterogeneity", "bulk"}
    assert len(d["per_phase"]["bulk"]) == len(d["per_phase"]["heterogeneity"]) == 2
    assert 0 < d["stability_margin"] <= 1 and d["inputs"]["noise"] == [0.5, 0.5]


@pytest.mark.parametrize("kwargs, pattern", [
    (dict(lr=-0.1), r"^lr must be > 0 \(got -0.1\)$"),
    (dict(lr=float("nan")), "lr must be a finite number"),
    (dict(lr=0.3, form="consensus"),
     r"unstable step: lr = 0.3 with curvature h = 4 .* consensus form needs \|lambda_k - lr h\|"),
    (dict(lr=0.3, curvature=[0.0], form="consensus", local_steps=2, eigenvalues=[1, -1, 0.5],
          topology=None), "h = 0 .* over one period of 2 steps"),
    (dict(lr=0.6), r"lr \* h = 2.4 > 2 for curvature\[1\] = 4"),
    (dict(noise=[1.0, 2.0, 3.0]), "noise has 3 values but curvature 2"),
    (dict(curvature=[1.0, -4.0]), r"curvature\[1\] must be >= 0"),
    (dict(curvature="1,2"), "curvature must be a number or a 1-D sequence"),
    (dict(curvature=[], noise=0.0), "curvature is empty and bulk_hs is 0"),
    (dict(topology=None), "give exactly one of topology"),
    (dict(eigenvalues=[1, 0.5]), "give exactly one of topology"),
    (dict(topology=None, eigenvalues=[0.9, 0.5]), "must include 1"),
    (dict(topology=None, eigenvalues=[1, 1.5]), r"eigenvalues\[1\] = 1.5 is outside \[-1, 1\]"),
    (dict(topology=None, eigenvalues=[1, 1, 0.5], bulk_hs=1.0), "bulk_hs needs every"),
    (dict(form="sgd"), "unknown form 'sgd'; accepted: diffusion, consensus, diffusion-cta"),
    (dict(local_steps=0), "local_steps must be an integer >= 1"),
    (dict(local_steps=2.0), "local_steps must be an integer >= 1"),
    (dict(bulk_hs=-1.0), "bulk_hs must be >= 0"),
    (dict(method="magic"), "unknown method 'magic'; accepted: auto, eigen, dense"),
    (dict(heterogeneity=np.zeros((8, 2))),
     r"heterogeneity has shape \(8, 2\) but needs \[n, m\] = \[16, 2\]"),
    (dict(heterogeneity=np.zeros(16)), r"heterogeneity has shape \(16,\) but needs"),
    (dict(heterogeneity=np.ones((16, 2))),
     r"heterogeneity column 0 sums to 16 over the nodes, not ~0 \(tolerance 1e-06"),
    (dict(heterogeneity=np.array([[1.0, 0.0]] * 8 + [[-1.0, 1e-5]] * 8)),
     "heterogeneity column 1 sums to 8e-05"),
    (dict(heterogeneity=np.where(np.eye(16, 2, -3) > 0, np.nan, 0.0)),
     r"heterogeneity\[3, 0\] must be a finite number \(got nan\)"),
    (dict(heterogeneity="zeros"), "heterogeneity must be an \\[n, m\\] array"),
    (dict(heterogeneity=[[0.0, 1.0], [0.0]]), "heterogeneity must be an \\[n, m\\] array"),
    (dict(topology=None, eigenvalues=[1, 0.5], heterogeneity=np.zeros((2, 2))),
     "heterogeneity needs the eigenvectors of W"),
    (dict(topology="ring"), "build it first"),
    (dict(topology=topology.make("ring", 8, weights="push-sum")), "column-stochastic"),
    (dict(topology=topology.make("ring", 8, local_steps=2), local_steps=3),
     "already takes 2 local steps"),
    (dict(topology=topology.from_matrix(_random_directed_w(8, 4)), method="eigen"),
     "method 'eigen' does not apply"),
    (dict(topology=None, eigenvalues=[1, 0.5], method="dense"), "method 'dense' needs a topology"),
])
def test_bad_input_is_refused_in_one_line(kwargs, pattern):
    args = dict(lr=0.1, curvature=[1.0, 4.0], noise=1.0, topology=topology.make("ring", 16))
    args.update(kwargs)
    with pytest.raises(TheoryError, match=pattern) as info:
        stationary_disagreement(args.pop("lr"), args.pop("curvature"), args.pop("noise"), **args)
    assert "\n" not in str(info.value)


def test_exported_from_the_package_like_the_other_calculators():
    import flatlab

    assert flatlab.stationary_disagreement is stationary_disagreement
    assert flatlab.DisagreementPrediction is DisagreementPrediction
    assert {"stationary_disagreement", "DisagreementPrediction"} <= set(flatlab.__all__)


def test_one_noise_value_in_a_list_is_broadcast():
    top = topology.make("ring", 8)
    a = stationary_disagreement(0.1, [1.0, 2.0, 4.0], [0.5], topology=top)
    b = stationary_disagreement(0.1, [1.0, 2.0, 4.0], 0.5, topology=top)
    assert a == b and a.inputs["noise"] == [0.5, 0.5, 0.5]


def test_stability_margin_local_sgd_and_ring():
    """``stability_margin = 1 − max (Π_t |m_t|)^(1/period)``; ``step_contraction = max |m_t|``."""
    lr, h = 0.2, np.array([0.5, 1.0, 3.0])
    # Local SGD: the period ends in the exact average (margin 1), the local steps shrink the
    # slowest direction by 1 − lr h_min per step, a flat one (the bulk) not at all
    local = stationary_disagreement(lr, h, 1.0, topology=topology.make("complete", 8),
                                    local_steps=4)
    assert local.stability_margin == 1.0
    assert local.step_contraction == pytest.approx(1 - lr * 0.5, rel=1e-12)
    assert any("stability_margin is 1" in note for note in local.notes)
    flat = stationary_disagreement(lr, h, 1.0, topology=topology.make("complete", 8),
                                   local_steps=4, bulk_hs=1.0)
    assert flat.stability_margin == 1.0 and flat.step_contraction == 1.0
    # ring, static: one step is the period
    ring = topology.make("ring", 8)
    lam = np.abs(np.linalg.eigvalsh(ring.matrix())[:-1]).max()
    p = stationary_disagreement(lr, h, 1.0, topology=ring)
    assert p.stability_margin == pytest.approx(1 - lam * (1 - lr * 0.5), rel=1e-12)
    assert p.step_contraction == pytest.approx(1 - p.stability_margin, rel=1e-12)
    eig = np.linalg.eigvalsh(ring.matrix())[:-1]
    c = stationary_disagreement(lr, h, 1.0, topology=ring, form="consensus")
    assert c.stability_margin == pytest.approx(
        1 - np.abs(eig[:, None] - lr * h[None, :]).max(), rel=1e-12)
    # ring with 3 local steps: the geometric mean over the period, and the local steps' factor
    r3 = stationary_disagreement(lr, h, 1.0, topology=ring, local_steps=3)
    assert r3.stability_margin == pytest.approx(1 - lam ** (1 / 3) * (1 - lr * 0.5), rel=1e-12)
    assert r3.step_contraction == pytest.approx(1 - lr * 0.5, rel=1e-12)
    dense = stationary_disagreement(lr, h, 1.0, topology=ring, local_steps=3, method="dense")
    assert dense.stability_margin == pytest.approx(r3.stability_margin, rel=1e-9)
    assert dense.step_contraction == pytest.approx(r3.step_contraction, rel=1e-12)


def test_the_average_may_be_marginal_but_the_deviations_must_contract():
    # h = 0 (a flat direction) is fine: its average wanders, its deviations are stationary
    p = stationary_disagreement(0.1, [0.0], 1.0, topology=topology.make("ring", 8))
    assert p.curvature_disagreement == 0.0 and p.consensus_distance > 0


# ------------------------------------------------------------------------------------- CLI
def _cli(capsys, *argv):
    code = main(["disagreement", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_prints_the_numbers_terms_and_margin(capsys):
    code, out, err = _cli(capsys, "--topology", "ring", "--nodes", "16", "--lr", "0.1",
                          "--curvature", "0.5,1,2,4", "--noise", "1", "--bulk-hs", "2",
                          "--local-steps", "2")
    assert code == 0 and err == ""
    for text in ("E tr(H Sigma)", "directions", "bulk", "E Xi^2", "stability margin",
                 "per phase", "per direction", "source:"):
        assert text in out
    p = stationary_disagreement(0.1, [0.5, 1, 2, 4], 1.0, topology=topology.make("ring", 16),
                                bulk_hs=2.0, local_steps=2)
    assert f"{p.curvature_disagreement:.6g}" in out


def test_cli_json_parses_and_matches_the_api(capsys):
    code, out, _ = _cli(capsys, "--eigenvalues", "1,0.5,0.5,-0.2", "--lr", "0.1",
                        "--curvature", "1,3", "--noise", "1,2", "--form", "consensus", "--json")
    assert code == 0
    d = json.loads(out)
    p = stationary_disagreement(0.1, [1, 3], [1, 2], eigenvalues=[1, 0.5, 0.5, -0.2],
                                form="consensus")
    assert d == json.loads(json.dumps(p.as_dict()))


def test_cli_heterogeneity_from_a_csv_matches_the_api(capsys, tmp_path):
    rng = np.random.default_rng(0)
    Z = rng.standard_normal((8, 2))  # noqa: N806
    Z -= Z.mean(0)  # noqa: N806 - the mean gradient vanishes at the minimum
    f = tmp_path / "zeta.csv"
    np.savetxt(f, Z, delimiter=",", fmt="%.17g")
    code, out, err = _cli(capsys, "--topology", "ring", "--nodes", "8", "--lr", "0.1",
                          "--curvature", "1,2", "--noise", "1", "--heterogeneity", str(f),
                          "--json")
    assert code == 0 and err == ""
    p = stationary_disagreement(0.1, [1, 2], 1.0, topology=topology.make("ring", 8),
                                heterogeneity=Z)
    assert json.loads(out) == json.loads(json.dumps(p.as_dict()))
    assert p.terms["heterogeneity"] > 0
    code, out, _ = _cli(capsys, "--topology", "ring", "--nodes", "8", "--lr", "0.1",
                        "--curvature", "1,2", "--noise", "1", "--heterogeneity", str(f))
    assert code == 0 and "heterogeneity (constant offsets)" in out
    bad = tmp_path / "bad.csv"
    bad.write_text("1,x\n")
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    for path, needle in ((tmp_path / "none.csv", "no such file"), (bad, "not a CSV of numbers"),
                         (empty, "the file is empty"), (tmp_path, "not a file")):
        code, out, err = _cli(capsys, "--topology", "ring", "--nodes", "8", "--lr", "0.1",
                              "--curvature", "1,2", "--noise", "1", "--heterogeneity", str(path))
        assert code == 2 and out == "" and err.count("\n") == 1 and needle in err


@pytest.mark.parametrize("argv, pattern", [
    (["--topology", "ring", "--nodes", "16", "--lr", "-1", "--curvature", "1", "--noise", "1"],
     "lr must be > 0"),
    (["--topology", "ring", "--nodes", "16", "--lr", "0.3", "--curvature", "4", "--noise", "1",
      "--form", "consensus"], "unstable step"),
    (["--eigenvalues", "1,0.5", "--lr", "0.1", "--curvature", "1,2", "--noise", "1,2,3"],
     "noise has 3 values but curvature 2"),
    (["--topology", "ring", "--nodes", "8", "--eigenvalues", "1,0", "--lr", "0.1",
      "--curvature", "1", "--noise", "1"], "not both"),
    (["--lr", "0.1", "--curvature", "1", "--noise", "1"], "the network (--topology NAME"),
    (["--topology", "ring", "--nodes", "8"],
     "needs --lr ETA and --curvature h1,h2,... and --noise s"),
    (["--eigenvalues", "1,x", "--lr", "0.1", "--curvature", "1", "--noise", "1"],
     "--eigenvalues takes the eigenvalues of W separated by commas"),
    (["--eigenvalues", "1,0.5", "--nodes", "3", "--lr", "0.1", "--curvature", "1",
      "--noise", "1"], "--nodes 3 but --eigenvalues gives 2 values"),
    (["--topology", "ring", "--nodes", "8", "--lr", "0.1", "--curvature", "1", "--noise", "1",
      "--form", "sgd"], "unknown form"),
    (["--topology", "blob", "--nodes", "8", "--lr", "0.1", "--curvature", "1", "--noise", "1"],
     "unknown topology 'blob'"),
])
def test_cli_bad_input_is_one_line_and_exit_2(capsys, argv, pattern):
    code, out, err = _cli(capsys, *argv)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and pattern in err and err.startswith("flatlab disagreement: error")


def test_cli_argparse_error_is_one_line_and_exit_2(capsys):
    with pytest.raises(SystemExit) as info:
        main(["disagreement", "--topology", "ring", "--nodes", "8", "--lr", "x"])
    assert info.value.code == 2
    assert capsys.readouterr().err.count("\n") == 1
