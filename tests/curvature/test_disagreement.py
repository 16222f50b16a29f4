"""tr(HΣ), the gap and the alignment against closed forms (flatlab.curvature.disagreement).

On a quadratic ``f(x) = ½ xᵀAx + bᵀx`` the gap ``(1/n) Σ f(x̄ + d_i) − f(x̄)`` equals ``½ tr(AΣ)``
exactly (the first-order term cancels because ``Σ d_i = 0``); the exact ``tr(AΣ)`` is a numpy
trace; the probe estimate is unbiased (its mean over every sign pattern is exact, and a large
sample lies within a few standard errors); the alignment of deviations built inside, outside and
across a known eigenspace is 1, 0 and the constructed fraction.
"""

import itertools
import math

import numpy as np
import pytest
import torch

from flatlab.curvature import (
    as_operator,
    deviations,
    disagreement_alignment,
    disagreement_curvature,
    disagreement_gap,
    hessian_operator,
)
from flatlab.errors import CurvatureError


def _spd(P, seed):  # noqa: N803
    rng = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(rng.standard_normal((P, P)))  # noqa: N806
    h = np.linspace(0.1, 5.0, P)
    return Q @ np.diag(h) @ Q.T, h, Q


def _D(n, P, seed, scale=0.3):  # noqa: N802, N803
    X = torch.randn(n, P, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))  # noqa: N806
    return deviations(scale * X + 1.0)


def test_exact_trace_equals_the_dense_formula_and_the_gap_is_half_of_it_on_a_quadratic():
    A, _, _ = _spd(7, 0)  # noqa: N806
    At = torch.tensor(A)  # noqa: N806
    b = torch.linspace(-1, 1, 7, dtype=torch.float64)
    D = _D(5, 7, 1)  # noqa: N806
    Dn = D.numpy()  # noqa: N806
    want = float(np.trace(A @ (Dn.T @ Dn / 5)))
    f = lambda x: 0.5 * x @ At @ x + b @ x  # noqa: E731
    xbar = torch.linspace(0.5, -0.5, 7, dtype=torch.float64)
    op = hessian_operator(f, xbar)
    c = disagreement_curvature(op, D)
    assert c.value == pytest.approx(want, rel=1e-12) and c.stderr == 0.0
    assert c.num_matvecs == 5 and c.probes == 0
    assert c.consensus_distance == pytest.approx(float((Dn**2).sum()) / 5, rel=1e-14)
    assert c.rayleigh == pytest.approx(want / c.consensus_distance, rel=1e-14)
    g = disagreement_gap(f, xbar, D, c.value)
    assert g.gap == pytest.approx(0.5 * want, rel=1e-10)
    assert g.predicted == 0.5 * c.value and g.ratio == pytest.approx(1.0, abs=1e-10)
    assert g.loss == pytest.approx(float(f(xbar)), rel=1e-14)


def test_the_probe_estimate_is_unbiased_and_its_standard_error_covers_the_exact_value():
    A, _, _ = _spd(6, 2)  # noqa: N806
    D = _D(4, 6, 3)  # noqa: N806
    exact = disagreement_curvature(A, D).value
    # the estimator's expectation, over all 2^n sign patterns, is exact (cross terms cancel)
    Dn, n = D.numpy(), 4  # noqa: N806
    mean = np.mean([(z := np.array(s) @ Dn / math.sqrt(n)) @ A @ z
                    for s in itertools.product((-1.0, 1.0), repeat=n)])
    assert mean == pytest.approx(exact, rel=1e-12)
    est = disagreement_curvature(as_operator(torch.tensor(A)), D, probes=4000, seed=5)
    assert est.num_matvecs == 4000 and est.stderr > 0
    assert abs(est.value - exact) < 4 * est.stderr
    assert est.stderr < 0.05 * exact  # the test could fail: the interval is narrow
    few = disagreement_curvature(A, D, probes=40, seed=5)
    assert few.stderr > est.stderr  # fewer probes, a wider interval
    assert disagreement_curvature(A, D, probes=40, seed=5) == few  # seeded


def test_alignment_of_deviations_inside_outside_and_across_a_known_eigenspace():
    A, h, Q = _spd(8, 4)  # noqa: N806
    top = torch.tensor(Q[:, -2:].T.copy())  # the top-2 eigenvectors, [2, P]
    rng = np.random.default_rng(0)
    inside = torch.tensor(rng.standard_normal((5, 2)) @ Q[:, -2:].T)
    outside = torch.tensor(rng.standard_normal((5, 6)) @ Q[:, :6].T)
    a_in, a_out = (disagreement_alignment(top, d) for d in (inside, outside))
    assert a_in.share == pytest.approx(1.0, abs=1e-12) and a_out.share == pytest.approx(
        0.0, abs=1e-12)
    assert a_in.chance == 2 / 8 and a_in.enrichment == pytest.approx(4.0)
    # across: 3 parts along the top direction, 4 along an outside one -> 9 / (9 + 16)
    mixed = torch.tensor(np.outer([1.0, -1.0], 3 * Q[:, -1] + 4 * Q[:, 0]))
    a = disagreement_alignment(top, mixed)
    assert a.share == pytest.approx(9 / 25, rel=1e-12)
    np.testing.assert_allclose(a.per_direction.numpy(), [0.0, 9 / 25], atol=1e-12)
    # vectors that are not orthonormal (scaled, mixed) span the same space: the same share
    skew = torch.stack([2 * top[0] + top[1], -0.5 * top[1]])
    assert disagreement_alignment(skew, mixed).share == pytest.approx(9 / 25, rel=1e-12)


@pytest.mark.parametrize("call, needle", [
    (lambda A, D: disagreement_curvature(A, D[:, :3]), "D has 3 columns"),
    (lambda A, D: disagreement_curvature(A, D[0]), "[n, P]"),
    (lambda A, D: disagreement_curvature(A, D, probes=-1), "probes must be an integer >= 0"),
    (lambda A, D: disagreement_curvature(torch.stack([A, A]), D), "one matrix"),
    (lambda A, D: disagreement_alignment(torch.stack([A[0], 2 * A[0]]), D), "dependent"),
    (lambda A, D: disagreement_alignment(A[:, :3], D), "columns"),
])
def test_bad_input_is_refused_in_one_line(call, needle):
    A = torch.tensor(_spd(5, 0)[0])  # noqa: N806
    with pytest.raises(CurvatureError) as e:
        call(A, _D(3, 5, 0))
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_nodes_that_agree_exactly_cost_no_product_and_no_pass():
    """``H 0 = 0`` and ``x̄ + 0 = x̄``: zero deviations are skipped, the values unchanged."""
    A, _, _ = _spd(7, 3)  # noqa: N806
    D = _D(5, 7, 4)  # noqa: N806
    D[1] = 0.0
    D[3] = 0.0
    D[4] = -(D[0] + D[2])  # deviations sum to zero
    op = as_operator(torch.as_tensor(A))
    c = disagreement_curvature(op, D)
    assert c.num_matvecs == 3  # the three non-zero rows
    Dn = D.numpy()  # noqa: N806
    assert c.value == pytest.approx(float(np.trace(A @ Dn.T @ Dn)) / 5, rel=1e-12)
    calls = []

    def f(x):
        calls.append(1)
        return 0.5 * x @ torch.as_tensor(A) @ x

    xbar = torch.ones(7, dtype=torch.float64)
    g = disagreement_gap(f, xbar, D, c.value)
    assert len(calls) == 1 + 3 and g.ratio == pytest.approx(1.0, abs=1e-10)
    zero = disagreement_curvature(op, torch.zeros(5, 7, dtype=torch.float64))
    assert zero.value == 0.0 and zero.num_matvecs == 0
    assert disagreement_gap(f, xbar, torch.zeros(5, 7, dtype=torch.float64), 0.0).gap == 0.0
