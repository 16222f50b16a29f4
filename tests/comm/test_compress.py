"""Compressor contracts (docs/reference/algorithms.md §9.1, §16 item 11), against closed forms.

Deterministic contractions are asserted on every sample; the ones that hold in expectation are
asserted by Monte Carlo with a tolerance of five standard errors, and unbiasedness coordinate by
coordinate with a Bernstein bound from the closed-form variance of one draw.
"""

import math

import pytest
import torch

from flatlab.comm import compress as C
from flatlab.errors import FlatlabError

D = 200


def _vectors(n: int = 16, d: int = D, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g, dtype=torch.float64)  # noqa: N806
    X[0] = 0.0  # a zero row must stay zero
    X[1, ::3] = 0.0  # and exact zeros inside a row
    X[2] *= torch.logspace(-3, 3, d, dtype=torch.float64)  # badly scaled coordinates
    return X


def _sq(X: torch.Tensor) -> torch.Tensor:  # noqa: N802, N803
    return (X**2).sum(1)


@pytest.mark.parametrize("q", [C.TopK(0.01), C.TopK(0.1), C.TopK(1.0), C.ScaledSign(),
                               C.Identity()])
def test_deterministic_contraction_on_every_sample(q):
    X = _vectors()  # noqa: N806
    err = _sq(q(X) - X)
    assert (err <= (1 - q.omega(D)) * _sq(X) + 1e-12).all()


def test_scaled_sign_reaches_its_data_dependent_omega():
    X = _vectors()[2:]  # noqa: N806 - rows without exact zeros (sign(0) = 0 sends nothing)
    omega = X.abs().sum(1) ** 2 / (D * _sq(X))
    torch.testing.assert_close(_sq(C.ScaledSign()(X) - X), (1 - omega) * _sq(X), rtol=1e-12,
                               atol=1e-12)
    assert (omega >= 1 / D - 1e-15).all()


def test_top_k_keeps_exactly_the_largest_magnitudes():
    X = _vectors()[1:]  # noqa: N806
    q = C.TopK(0.05)
    k = 10
    Q = q(X)  # noqa: N806
    assert ((Q != 0).sum(1) == k).all()
    kth = X.abs().sort(dim=1, descending=True).values[:, k - 1]
    kept = Q != 0
    assert torch.equal(Q[kept], X[kept])
    assert (X.abs()[kept].view(len(X), k).min(1).values >= kth).all()


def test_approximate_top_k_is_a_threshold_and_exact_with_the_whole_sample():
    X = _vectors(n=8, d=4000)[1:]  # noqa: N806
    assert torch.equal(C.ApproxTopK(0.05, sample=1.0)(X), C.TopK(0.05)(X))
    small = _vectors()  # 200 coordinates: a sample of 60 holds 3 above the threshold, too few
    assert torch.equal(C.ApproxTopK(0.05, sample=0.3)(small), C.TopK(0.05)(small))
    Q = C.ApproxTopK(0.05, sample=0.3)(X)  # noqa: N806 - 60 of 1200 sampled above it
    kept = Q != 0
    assert torch.equal(Q[kept], X[kept])
    for i in range(len(X)):  # a threshold: every kept magnitude above every dropped one
        if kept[i].any() and (~kept[i]).any():
            assert X[i].abs()[kept[i]].min() >= X[i].abs()[~kept[i]].max()


def test_approximate_top_k_keeps_about_k_and_measures_its_omega():
    g = torch.Generator().manual_seed(3)
    X = torch.randn(32, 20_000, generator=g, dtype=torch.float64)  # noqa: N806
    q = C.ApproxTopK(0.01)  # k = 200, threshold from s = 2000 coordinates (20 above it)
    kept = (q(X) != 0).sum(1).double()
    spread = 1 / math.sqrt(0.01 * 2000)  # relative spread of the kept count
    assert ((kept / 200 - 1).abs() < 5 * spread).all()
    assert abs(float(kept.mean()) / 200 - 1) < 5 * spread / math.sqrt(32)
    realised = 1 - _sq(q(X) - X) / _sq(X)  # what the top ~1% of Gaussian mass carries
    exact = 1 - _sq(C.TopK(0.01)(X) - X) / _sq(X)
    assert ((realised / exact - 1).abs() < 0.5).all()
    assert q.omega(20_000) == C.TopK(0.01).omega(20_000)


def _monte_carlo(q, X, draws=4000):  # noqa: N803
    out = torch.stack([C.compress(X, q, seed=s) for s in range(draws)])
    return out


def _bernstein(q, X, draws, log_term=14.0):  # noqa: N803
    """Bernstein bound on ``|mean of draws − E Q(x)_j|`` per coordinate (fails w.p. ~e^-14).

    From the closed-form variance ``σ_j²`` and range ``b_j`` of one draw of ``Q(x)_j``:
    ``√(2σ² L/N) + 2bL/(3N)``; the range term covers rare events (a tiny coordinate rounded up
    once in N draws) that a normal approximation would call a 7σ excursion.
    """
    d = X.shape[1]
    if isinstance(q, C.RandomK):
        k = round(q.fraction * d)
        var, rng = X**2 * (d / k - 1), X.abs() * d / k
    else:
        norm = torch.linalg.vector_norm(X, dim=1, keepdim=True)
        r = q.levels * X.abs() / norm
        p = r - r.floor()
        var, rng = (norm / q.levels) ** 2 * p * (1 - p), (norm / q.levels).expand_as(X)
    return (2 * var * log_term / draws).sqrt() + 2 * rng * log_term / (3 * draws)


@pytest.mark.parametrize("q", [C.RandomK(0.05), C.QSGD(4, biased=True), C.QSGD(1, biased=True)])
def test_contraction_in_expectation(q):
    X = _vectors(n=6)[1:]  # noqa: N806
    out = _monte_carlo(q, X)
    err = ((out - X) ** 2).sum(-1)  # [draws, n]
    mean, se = err.mean(0), err.std(0) / math.sqrt(len(err))
    assert (mean <= (1 - q.omega(D)) * _sq(X) + 5 * se + 1e-12).all()


@pytest.mark.parametrize("q", [C.RandomK(0.05, scaled=True), C.QSGD(4), C.QSGD(1),
                               C.QSGD(64)])
def test_unbiased_with_bounded_variance(q):
    X = _vectors(n=6)[1:]  # noqa: N806
    out = _monte_carlo(q, X)
    assert ((out.mean(0) - X).abs() <= _bernstein(q, X, len(out)) + 1e-12).all()  # E Q(x) = x
    err = ((out - X) ** 2).sum(-1)
    emean, ese = err.mean(0), err.std(0) / math.sqrt(len(err))
    assert (emean <= q.variance(D) * _sq(X) + 5 * ese).all()
    # the 1/(1 + τ) scaling turns it into a contraction with ω = 1/(1 + τ)
    tau = q.variance(D)
    scaled = ((out / (1 + tau) - X) ** 2).sum(-1).mean(0)
    assert (scaled <= tau / (1 + tau) * _sq(X) + 5 * ese).all()


def test_biased_random_k_is_not_unbiased():
    X = _vectors(n=3)[1:]  # noqa: N806
    mean = _monte_carlo(C.RandomK(0.1), X, draws=500).mean(0)
    torch.testing.assert_close(mean, 0.1 * X, atol=0.05 * X.abs().max().item(), rtol=0)


def test_qsgd_values_lie_on_the_level_grid():
    X = _vectors(n=4)[1:]  # noqa: N806
    s = 4
    Q = C.QSGD(s)(X, torch.Generator().manual_seed(1))  # noqa: N806
    norm = torch.linalg.vector_norm(X, dim=1, keepdim=True)
    levels = Q.abs() * s / norm
    torch.testing.assert_close(levels, levels.round(), atol=1e-9, rtol=0)
    assert (torch.sign(Q) * torch.sign(X) >= 0).all()


def test_zero_rows_stay_zero():
    X = torch.zeros(3, D, dtype=torch.float64)  # noqa: N806
    for name in C.COMPRESSORS:
        assert torch.equal(C.compress(X, C.make(name)), X), name


def test_seeded_and_distributed_rows_draw_what_one_process_draws():
    X = _vectors(n=8)  # noqa: N806
    for q in (C.RandomK(0.1), C.QSGD(4)):
        whole = C.compress(X, q, seed=7)
        assert torch.equal(whole, C.compress(X, q, seed=7))
        assert not torch.equal(whole, C.compress(X, q, seed=8))
        parts = [C.compress(X[r], q, seed=7, rows=r, n=8) for r in (slice(0, 3), slice(3, 8))]
        assert torch.equal(torch.cat(parts), whole)


def test_per_block_compression_applies_the_operator_to_each_block():
    X = _vectors(n=4)  # noqa: N806
    blocks = [slice(0, 50), slice(50, 60), slice(60, D)]
    q = C.TopK(0.1)
    out = C.compress(X, q, blocks=blocks)
    for b in blocks:
        assert torch.equal(out[:, b], q(X[:, b]))
    assert C.payload_bytes(q, D, blocks) == (5 + 1 + 14) * 8


def test_payload_and_ratio_closed_forms():
    assert C.payload_bytes(C.Identity(), 1000) == 4000
    assert C.TopK(0.01).payload_bits(1000) == 10 * 64
    assert C.TopK(0.01).ratio(1000) == pytest.approx(0.02)  # values and indices
    assert C.ScaledSign().payload_bits(1000) == 32 + 1000
    assert C.QSGD(15).payload_bits(1000) == 32 + 1000 * 5  # sign + 4 bits for 0..15
    assert C.QSGD(16).tau(10_000) == pytest.approx(min(10_000 / 256, 100 / 16))


def test_bad_input_is_one_clear_error():
    with pytest.raises(FlatlabError, match="unknown compressor 'topk'; choose from"):
        C.make("topk")
    with pytest.raises(FlatlabError, match="fraction must be in"):
        C.make("top-k", fraction=0)
    with pytest.raises(FlatlabError, match="sample must be in"):
        C.make("top-k-approx", sample=0)
    with pytest.raises(FlatlabError, match="levels must be an integer"):
        C.make("qsgd", levels=0)
    with pytest.raises(FlatlabError, match="takes fraction"):
        C.make("top-k", k=3)
    with pytest.raises(FlatlabError, match="tile the parameter vector"):
        C.compress(torch.ones(2, 10), C.TopK(0.5), blocks=[slice(0, 4), slice(5, 10)])
