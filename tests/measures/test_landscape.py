"""Landscape slices and interpolation against closed forms; filter normalization exactly."""

import numpy as np
import pytest
import torch
from torch import nn

from flatlab.engine import ParamLayout
from flatlab.errors import FlatlabError
from flatlab.measures import (
    MeasureError,
    filter_normalized_direction,
    interpolate,
    node_to_average,
    node_to_node,
    slice_1d,
    slice_2d,
)


def quadratic(P=6, seed=0):
    rng = np.random.default_rng(seed)
    Q = np.linalg.qr(rng.standard_normal((P, P)))[0]
    H = Q @ np.diag(np.linspace(0.2, 4.0, P)) @ Q.T
    c = rng.standard_normal(P)
    Ht, ct = torch.tensor(H), torch.tensor(c)

    def f(x):
        r = x - ct
        return 0.5 * r @ Ht @ r

    def fn(x):
        r = np.asarray(x) - c
        return 0.5 * r @ H @ r

    return f, fn, H, c


def net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Unflatten(1, (1, 8)), nn.Conv1d(1, 4, 3), nn.BatchNorm1d(4),
                         nn.ReLU(), nn.Flatten(), nn.Linear(24, 5), nn.ReLU(),
                         nn.Linear(5, 3)).double()


def test_filter_normalized_direction_matches_filter_norms():
    m = net()
    layout = ParamLayout.from_module(m)
    x = layout.flatten_module(m)
    d = filter_normalized_direction(layout, x, seed=3)
    assert d.shape == x.shape and d.dtype == torch.float64
    dp, xp = layout.unflatten(d), layout.unflatten(x)
    multi = 0
    for name, _, shape in layout:
        if len(shape) <= 1:
            assert not dp[name].any(), name  # biases and BN weights zeroed
        else:
            multi += 1
            dn = dp[name].reshape(shape[0], -1).norm(dim=1)
            xn = xp[name].reshape(shape[0], -1).norm(dim=1)
            assert torch.allclose(dn, xn, rtol=0, atol=1e-12), name
            assert not torch.allclose(dp[name], xp[name])  # a random direction, not x
    assert multi == 3
    assert torch.equal(filter_normalized_direction(layout, x, seed=3), d)
    assert not torch.equal(filter_normalized_direction(layout, x, seed=4), d)
    kept = layout.unflatten(filter_normalized_direction(layout, x, seed=3, ignore=None))
    for name, _, shape in layout:
        if len(shape) <= 1:
            assert torch.equal(kept[name], xp[name])
        else:
            assert torch.equal(kept[name], dp[name])


def test_directions_come_from_their_named_stream_and_a_second_is_not_the_next_seeds():
    """``seed_for(seed, "landscape", index)`` (flatlab.seeds): a 2-D slice's second direction
    is independent of another seed's first (``seed + 1`` made them equal)."""
    from flatlab.seeds import seed_for

    m = net()
    layout = ParamLayout.from_module(m)
    x = layout.flatten_module(m)
    gen = torch.Generator().manual_seed(seed_for(3, "landscape", 1))
    raw = torch.randn(x.shape, generator=gen, dtype=x.dtype)
    d = filter_normalized_direction(layout, x, seed=3, index=1)
    first = next(name for name, _, shape in layout if len(shape) > 1)
    a, b = layout.unflatten(d)[first], layout.unflatten(raw)[first]
    ratio = a.reshape(a.shape[0], -1) / b.reshape(b.shape[0], -1)  # one positive scale a filter
    assert torch.allclose(ratio, ratio[:, :1].expand_as(ratio), rtol=1e-12) and (ratio > 0).all()
    assert not torch.equal(d, filter_normalized_direction(layout, x, seed=4, index=0))
    assert not torch.equal(d, filter_normalized_direction(layout, x, seed=3, index=0))


def test_filter_normalized_direction_bad_input():
    m = net()
    layout = ParamLayout.from_module(m)
    x = layout.flatten_module(m)
    for call in (lambda: filter_normalized_direction(layout, x[:-1]),
                 lambda: filter_normalized_direction(layout, x, ignore="all"),
                 lambda: filter_normalized_direction(layout, x.expand(2, -1))):
        with pytest.raises(MeasureError) as e:
            call()
        assert "\n" not in str(e.value)


def test_slice_1d_is_the_parabola():
    f, fn, H, c = quadratic()
    rng = np.random.default_rng(1)
    x, d = c + rng.standard_normal(c.size), rng.standard_normal(c.size)
    alphas = np.linspace(-1, 1, 51)
    s = slice_1d(f, torch.tensor(x), torch.tensor(d), alphas)
    g = H @ (x - c)
    expect = fn(x) + alphas * (g @ d) + 0.5 * alphas**2 * (d @ H @ d)
    assert np.allclose(s.losses.numpy(), expect, rtol=1e-12, atol=1e-13)
    assert torch.equal(s.alphas, torch.tensor(alphas))
    assert s.loss == pytest.approx(fn(x), rel=1e-13)


def test_slice_2d_is_the_quadratic_form():
    f, fn, H, c = quadratic(seed=2)
    rng = np.random.default_rng(3)
    x, d1, d2 = c + rng.standard_normal(c.size), *rng.standard_normal((2, c.size))
    a, b = np.linspace(-1, 1, 7), np.linspace(-0.5, 0.5, 5)
    s = slice_2d(f, torch.tensor(x), torch.tensor(d1), torch.tensor(d2), a, b)
    assert s.losses.shape == (7, 5)
    expect = np.array([[fn(x + ai * d1 + bj * d2) for bj in b] for ai in a])
    assert np.allclose(s.losses.numpy(), expect, rtol=1e-12, atol=1e-13)


def test_interpolation_gap_on_quadratic_is_closed_form():
    # f(x_t) - [(1-t) f(a) + t f(b)] = -t(1-t)/2 (b-a)^T H (b-a) for quadratic f
    f, fn, H, c = quadratic(seed=4)
    rng = np.random.default_rng(5)
    xa, xb = c + rng.standard_normal(c.size), c + rng.standard_normal(c.size)
    r = interpolate(f, torch.tensor(xa), torch.tensor(xb), points=21)
    t = np.linspace(0, 1, 21)
    gap = -t * (1 - t) / 2 * ((xb - xa) @ H @ (xb - xa))
    assert np.allclose(r.gaps.numpy(), gap, rtol=1e-10, atol=1e-13)
    assert np.allclose(r.losses.numpy(), [fn((1 - ti) * xa + ti * xb) for ti in t], rtol=1e-12)
    assert r.barrier == pytest.approx(0.0, abs=1e-13)  # convex: the ends are the maximum
    assert r.barrier_t in (0.0, 1.0)
    assert (r.loss_a, r.loss_b) == pytest.approx((fn(xa), fn(xb)), rel=1e-13)
    # a wider grid (Goodfellow et al.): the barrier still only looks at t in [0, 1]
    w = interpolate(f, torch.tensor(xa), torch.tensor(xb), ts=[-0.5, 0.0, 0.5, 1.0, 1.5])
    assert w.gaps[0] > 0 and w.gaps[-1] > 0 and w.barrier == pytest.approx(0.0, abs=1e-13)


def test_interpolation_barrier_of_a_double_well():
    # f(x) = (x^2 - 1)^2 from -1 to 1: the barrier is f(0) = 1, at t = 1/2
    def f(x):
        return ((x**2 - 1) ** 2).sum()

    one = torch.ones(1, dtype=torch.float64)
    r = interpolate(f, -one, one, points=11)
    assert r.barrier == 1.0 and r.barrier_t == 0.5
    t = np.linspace(0, 1, 11)
    assert np.allclose(r.losses.numpy(), ((2 * t - 1) ** 2 - 1) ** 2, rtol=0, atol=1e-14)


def test_node_to_node_and_node_to_average():
    f, fn, H, c = quadratic(seed=6)
    X = torch.tensor(c + np.random.default_rng(7).standard_normal((4, c.size)))
    Xn = X.numpy()
    t = np.linspace(0, 1, 9)
    nn_ = node_to_node(f, X, points=9)
    assert nn_.pairs == ((0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3))
    assert nn_.losses.shape == (6, 9) and nn_.barriers.shape == (6,)
    for k, (i, j) in enumerate(nn_.pairs):
        v = Xn[j] - Xn[i]
        assert np.allclose(nn_.gaps[k].numpy(), -t * (1 - t) / 2 * (v @ H @ v),
                           rtol=1e-10, atol=1e-13)
        assert nn_.loss_a[k].item() == pytest.approx(fn(Xn[i]), rel=1e-13)
    some = node_to_node(f, X, pairs=[(3, 1)], points=9)
    assert some.pairs == ((3, 1),) and torch.allclose(some.losses[0], nn_.losses[4].flip(0))

    na = node_to_average(f, X, points=9)
    xbar = Xn.mean(0)
    assert na.pairs == ((None, 0), (None, 1), (None, 2), (None, 3))
    for i in range(4):
        v = Xn[i] - xbar
        assert np.allclose(na.gaps[i].numpy(), -t * (1 - t) / 2 * (v @ H @ v),
                           rtol=1e-10, atol=1e-13)
        assert na.losses[i, 0].item() == pytest.approx(fn(xbar), rel=1e-13)
        assert na.losses[i, -1].item() == pytest.approx(fn(Xn[i]), rel=1e-13)
    assert torch.all(na.barriers.abs() < 1e-13)


@pytest.mark.parametrize("call", [
    lambda f, x, X: slice_1d(f, x, x[:-1], [0.0, 1.0]),
    lambda f, x, X: slice_1d(f, x, x, []),
    lambda f, x, X: slice_1d(f, x, x, [[0.0]]),
    lambda f, x, X: slice_1d(f, x, x, [float("inf")]),
    lambda f, x, X: slice_2d(f, x, x, x[:-1], [0.0], [0.0]),
    lambda f, x, X: interpolate(f, x, x[:-1]),
    lambda f, x, X: interpolate(f, x, x, points=1),
    lambda f, x, X: interpolate(f, X, X),
    lambda f, x, X: node_to_node(f, x),
    lambda f, x, X: node_to_node(f, X, pairs=[(0, 0)]),
    lambda f, x, X: node_to_node(f, X, pairs=[(0, 9)]),
    lambda f, x, X: node_to_node(f, X, pairs=[(0,)]),
    lambda f, x, X: node_to_average(f, X, xbar=x[:-1]),
], ids=lambda c: "")
def test_bad_input_gives_one_line_errors(call):
    f, _, _, c = quadratic()
    x = torch.tensor(c)
    with pytest.raises(MeasureError) as e:
        call(f, x, torch.stack([x, x + 1]))
    assert str(e.value) and "\n" not in str(e.value)
    assert isinstance(e.value, FlatlabError)
