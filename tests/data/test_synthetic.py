"""Synthetic tasks: exact optima checked with autograd and lstsq, Bayes accuracy in closed form."""

import math

import numpy as np
import pytest
import scipy.optimize
import torch
import torch.nn.functional as F

from flatlab import data
from tests.data.conftest import one_line_error


def _params(ds):
    return ds.optimum["linear.weight"].clone(), ds.optimum["linear.bias"].clone()


def test_least_squares_shapes_and_nodes():
    ds = data.load("least-squares", nodes=5, seed=1, samples_per_node=20, dim=4, outputs=3)
    assert ds.task == "regression" and ds.num_classes == 3 and ds.input_shape == (4,)
    assert ds.x_train.shape == (100, 4) and ds.y_train.shape == (100, 3)
    assert ds.x_test.shape == (320, 4) and ds.y_train.dtype == torch.float32
    np.testing.assert_array_equal(ds.node_ids, np.repeat(np.arange(5), 20))
    assert ds.node_ids.dtype == np.int64
    w, b = _params(ds)
    assert w.shape == (3, 4) and b.shape == (3,) and w.dtype == torch.float64


def test_least_squares_optimum_has_zero_gradient_and_matches_lstsq():
    ds = data.load("least-squares", nodes=6, seed=2, samples_per_node=30, dim=5, outputs=2)
    a, y = ds.x_train.double(), ds.y_train.double()
    w, b = _params(ds)
    w.requires_grad_(True)
    b.requires_grad_(True)
    loss = 0.5 * ((a @ w.T + b - y) ** 2).sum(dim=1).mean()
    gw, gb = torch.autograd.grad(loss, (w, b))
    assert max(gw.abs().max().item(), gb.abs().max().item()) < 1e-10
    assert loss.item() == pytest.approx(ds.info["optimum_loss"], rel=1e-12)
    stacked = np.hstack([a.numpy(), np.ones((len(a), 1))])
    theta, *_ = np.linalg.lstsq(stacked, y.numpy(), rcond=None)
    np.testing.assert_allclose(w.detach().numpy(), theta[:-1].T, rtol=0, atol=1e-10)
    np.testing.assert_allclose(b.detach().numpy(), theta[-1], rtol=0, atol=1e-10)


def test_least_squares_homogeneous_noiseless_recovers_the_true_model():
    ds = data.load("least-squares", nodes=3, seed=4, heterogeneity=0.0, noise=0.0, dim=6)
    w, b = _params(ds)
    np.testing.assert_allclose(w.numpy(), ds.info["true_weights"][0], atol=1e-5)
    np.testing.assert_allclose(b.numpy(), ds.info["true_biases"][0], atol=1e-5)
    assert ds.info["optimum_loss"] < 1e-12
    assert np.allclose(ds.info["true_weights"], ds.info["true_weights"][0])


def test_least_squares_heterogeneity_raises_the_optimal_loss():
    losses = [data.load("least-squares", nodes=8, seed=0, heterogeneity=h).info["optimum_loss"]
              for h in (0.0, 0.5, 2.0)]
    assert losses[0] < losses[1] < losses[2]
    assert losses[0] == pytest.approx(0.5 * 0.1**2, rel=0.3)  # only the noise is left


def test_synthetic_determinism():
    for name in ("least-squares", "logistic", "gaussian-mixture"):
        a = data.load(name, nodes=4, seed=3)
        b = data.load(name, nodes=4, seed=3)
        c = data.load(name, nodes=4, seed=4)
        assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
        assert not torch.equal(a.x_train, c.x_train)


def _logistic_objective(ds, w, b, l2=0.0):
    logits = ds.x_train.double() @ w.T + b
    return F.cross_entropy(logits, ds.y_train) + 0.5 * l2 * (w.pow(2).sum() + b.pow(2).sum())


@pytest.mark.parametrize("classes, l2", [(2, 0.0), (4, 0.0), (3, 0.05)])
def test_logistic_optimum_has_zero_gradient(classes, l2):
    ds = data.load("logistic", nodes=4, seed=1, classes=classes, l2=l2, dim=5)
    assert ds.num_classes == classes and ds.y_train.max() < classes
    w, b = _params(ds)
    w.requires_grad_(True)
    b.requires_grad_(True)
    loss = _logistic_objective(ds, w, b, l2)
    gw, gb = torch.autograd.grad(loss, (w, b))
    grad_norm = torch.cat([gw.ravel(), gb.ravel()]).norm().item()
    assert grad_norm < 1e-9
    assert loss.item() == pytest.approx(ds.info["optimum_loss"], rel=1e-12)
    # class-centred gauge
    assert w.sum(dim=0).abs().max().item() < 1e-10 and abs(b.sum().item()) < 1e-10


def test_logistic_optimum_agrees_with_lbfgs():
    ds = data.load("logistic", nodes=3, seed=5, classes=3, dim=4)
    k, d = 3, 4
    a, y = ds.x_train.double().numpy(), ds.y_train.numpy()

    def fun(theta):
        t = torch.tensor(theta, requires_grad=True)
        w, b = t[: k * d].reshape(k, d), t[k * d:]
        loss = F.cross_entropy(torch.as_tensor(a) @ w.T + b, torch.as_tensor(y))
        (g,) = torch.autograd.grad(loss, t)
        return loss.item(), g.numpy()

    res = scipy.optimize.minimize(fun, np.zeros(k * d + k), jac=True, method="L-BFGS-B",
                                  options={"gtol": 1e-12, "ftol": 1e-15, "maxiter": 5000})
    w_ref, b_ref = res.x[: k * d].reshape(k, d), res.x[k * d:]
    w_ref, b_ref = w_ref - w_ref.mean(0), b_ref - b_ref.mean()  # same gauge
    w, b = _params(ds)
    assert res.fun == pytest.approx(ds.info["optimum_loss"], abs=1e-10)
    np.testing.assert_allclose(w.numpy(), w_ref, atol=1e-4)
    np.testing.assert_allclose(b.numpy(), b_ref, atol=1e-4)


def test_logistic_labels_are_sampled_from_the_true_model():
    ds = data.load("logistic", nodes=1, seed=0, samples_per_node=20000, dim=3, classes=3)
    w, b = _params(ds)
    tw, tb = ds.info["true_weights"][0], ds.info["true_biases"][0]
    np.testing.assert_allclose(w.numpy(), tw - tw.mean(0), atol=0.1)
    np.testing.assert_allclose(b.numpy(), tb - tb.mean(), atol=0.1)
    acc = (ds.x_train @ w.float().T + b.float()).argmax(1).eq(ds.y_train).float().mean()
    assert acc < 0.99  # not separable


def test_logistic_separable_data_is_refused():
    msg = one_line_error(data.load, "logistic", nodes=1, samples_per_node=4, dim=10)
    assert "separable" in msg
    ds = data.load("logistic", nodes=1, samples_per_node=4, dim=10, l2=0.1)  # l2 makes it unique
    assert ds.info["optimum_loss"] > 0


def test_gaussian_mixture_two_classes_closed_form():
    ds = data.load("gaussian-mixture", classes=2, dim=5, separation=2.5, std=1.5, seed=3)
    means = ds.info["means"]
    dist = np.linalg.norm(means[0] - means[1])
    assert dist == pytest.approx(2.5 * 1.5, rel=1e-12)  # simplex: exact separation
    closed = 0.5 * (1 + math.erf(dist / (2 * 1.5) / math.sqrt(2)))
    assert ds.info["bayes_accuracy"] == pytest.approx(closed, rel=1e-12)
    assert ds.info["bayes_accuracy_method"] == "exact"


def _nearest_mean_accuracy(ds):
    means = torch.as_tensor(ds.info["means"], dtype=torch.float32)
    pred = torch.cdist(ds.x_test, means).argmin(dim=1)
    return pred.eq(ds.y_test).double().mean().item()


@pytest.mark.parametrize("kwargs", [dict(classes=3, dim=2), dict(classes=5, dim=2),
                                    dict(classes=2, dim=3)])
def test_gaussian_mixture_bayes_accuracy_matches_the_test_set(kwargs):
    ds = data.load("gaussian-mixture", seed=1, test_samples=20000, mc_samples=50_000, **kwargs)
    c = kwargs["classes"]
    bayes = ds.info["bayes_accuracy"]
    assert 1 / c < bayes < 1
    acc = _nearest_mean_accuracy(ds)  # Bayes rule for equal priors and a shared isotropic std
    assert abs(acc - bayes) < 4 * math.sqrt(bayes * (1 - bayes) / 20000) + 4 * ds.info[
        "bayes_accuracy_stderr"]
    assert np.ptp(np.bincount(ds.y_train.numpy())) <= 1  # balanced classes


def test_gaussian_mixture_nodes_and_feature_shift():
    ds = data.load("gaussian-mixture", nodes=6, samples=100, feature_shift=3.0, seed=0,
                   mc_samples=20_000)
    assert ds.num_train == 96 and np.all(np.bincount(ds.node_ids) == 16)
    shifts = torch.as_tensor(ds.info["shifts"], dtype=torch.float32)
    assert shifts.shape == (6, 2) and shifts.abs().sum() > 0
    centred = ds.x_train - shifts[torch.as_tensor(ds.node_ids)]
    means = torch.as_tensor(ds.info["means"], dtype=torch.float32)
    # with the node offset removed, samples sit around their class mean
    assert (centred - means[ds.y_train]).pow(2).sum(1).mean().item() < 4 * 2
    plain = data.load("gaussian-mixture", nodes=6, samples=100, seed=0, mc_samples=20_000)
    assert ds.info["bayes_accuracy"] < plain.info["bayes_accuracy"]  # shifts blur the classes


@pytest.mark.parametrize("call, pattern", [
    (lambda: data.load("least-squares"), "needs nodes=N"),
    (lambda: data.load("logistic", nodes=0), "nodes must be >= 1"),
    (lambda: data.load("least-squares", nodes=2, dims=3), "takes no option 'dims'; accepted"),
    (lambda: data.load("least-squares", nodes=2, noise=-1), "noise must be >= 0"),
    (lambda: data.load("logistic", nodes=2, classes=1), "classes must be >= 2"),
    (lambda: data.load("logistic", nodes=2, l2=float("nan")), "l2 must be finite"),
    (lambda: data.load("gaussian-mixture", feature_shift=1.0), "needs nodes=N"),
    (lambda: data.load("gaussian-mixture", std=0), "std must be > 0"),
    (lambda: data.load("gaussian-mixture", nodes=5000), "nodes must be <= 2000"),
    (lambda: data.load("least-squares", nodes=2, seed=-3), "seed must be >= 0"),
    (lambda: data.load("least-squares", nodes=2, dim=True), "dim must be an integer"),
])
def test_errors_are_one_line(call, pattern):
    assert pattern in one_line_error(call)
