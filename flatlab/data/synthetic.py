"""Synthetic tasks with known optima: heterogeneous linear models and a Gaussian mixture.

Heterogeneous least squares and logistic regression come with the exact minimizer of their
training objective; the Gaussian mixture with its Bayes accuracy.

The two linear tasks give every node ``i`` its own true model ``W_i = W_0 + h Delta_i``,
``b_i = b_0 + h delta_i`` (``h`` = ``heterogeneity``); entries of ``W_0`` and ``Delta_i`` are
``N(0, 1/d)`` (so ``W a`` has unit variance per output for ``a ~ N(0, I_d)``), entries of ``b_0``
and ``delta_i`` are ``N(0, 1)``. Node ``i`` draws ``samples_per_node`` features ``a ~ N(0, I_d)``;
the training set is stored node by node (``node_ids = [0]*m + [1]*m + ...``) and the test set
is drawn from the same per-node distributions. Everything comes from
``numpy.random.default_rng(seed)``.

The optimum is computed in ``float64`` on the stored (``float32``) training data, so it is the
exact minimizer of what a model trained on ``x_train``/``y_train`` sees, in the parameter names
of the ``logistic`` model (one ``nn.Linear`` called ``linear``).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from scipy.special import log_softmax, softmax

from flatlab.data.dataset import Dataset, check_float, check_int, check_options, derive_seed
from flatlab.errors import DataError

__all__ = [
    "LEAST_SQUARES_DEFAULTS",
    "LOGISTIC_DEFAULTS",
    "GAUSSIAN_MIXTURE_DEFAULTS",
    "load_least_squares",
    "load_logistic",
    "load_gaussian_mixture",
    "logistic_optimum",
]

LEAST_SQUARES_DEFAULTS: dict[str, Any] = {
    "samples_per_node": 64,
    "test_samples_per_node": 64,
    "dim": 10,
    "outputs": 1,
    "heterogeneity": 1.0,
    "noise": 0.1,
}
LOGISTIC_DEFAULTS: dict[str, Any] = {
    "samples_per_node": 64,
    "test_samples_per_node": 64,
    "dim": 10,
    "classes": 2,
    "heterogeneity": 1.0,
    "l2": 0.0,
}
GAUSSIAN_MIXTURE_DEFAULTS: dict[str, Any] = {
    "classes": 3,
    "dim": 2,
    "samples": 2000,
    "test_samples": 1000,
    "separation": 3.0,
    "std": 1.0,
    "feature_shift": 0.0,
    "mc_samples": 200_000,
}

NEWTON_TOL = 1e-10
NEWTON_MAX_ITER = 100
#: Smallest eigenvalue of the (gauge-reduced) Hessian accepted at a logistic optimum; below it
#: the minimizer is not unique or does not exist (separable or rank-deficient data).
HESSIAN_FLOOR = 1e-8


def _require_nodes(name: str, nodes: int | None) -> int:
    if nodes is None:
        raise DataError(f"dataset {name!r} needs nodes=N (the number of nodes, >= 1)")
    return check_int(nodes, f"{name} nodes", minimum=1)


def _true_models(rng: np.random.Generator, n: int, k: int, d: int,
                 heterogeneity: float) -> tuple[np.ndarray, np.ndarray]:
    w0 = rng.standard_normal((k, d)) / math.sqrt(d)
    b0 = rng.standard_normal(k)
    weights = w0 + heterogeneity * rng.standard_normal((n, k, d)) / math.sqrt(d)
    biases = b0 + heterogeneity * rng.standard_normal((n, k))
    return weights, biases


def _features(rng: np.random.Generator, n: int, m: int, d: int) -> np.ndarray:
    return rng.standard_normal((n, m, d))


def _as_float32(a: np.ndarray) -> np.ndarray:
    """Round to float32 (what the dataset stores) and back to float64 for exact solves."""
    return a.astype(np.float32).astype(np.float64)


def _optimum_dict(weight: np.ndarray, bias: np.ndarray) -> dict[str, torch.Tensor]:
    return {"linear.weight": torch.as_tensor(weight, dtype=torch.float64, device="cpu"),
            "linear.bias": torch.as_tensor(bias, dtype=torch.float64, device="cpu")}


def load_least_squares(seed: int = 0, nodes: int | None = None, **options: Any) -> Dataset:
    """Heterogeneous least squares: node ``i`` has ``y = W_i a + b_i + noise * eps``.

    The global training objective is ``f(W, c) = (1/N) sum_s 0.5 ||W a_s + c - y_s||^2``. Its
    minimizer (``optimum``) is the least-squares solution on the stacked data ``[a, 1]``, solved
    in ``float64`` (the minimum-norm one if ``N < d + 1``); ``info["optimum_loss"]`` is ``f`` there.

    Args:
        seed: Seed of everything random.
        nodes: Number of nodes (required).
        **options: ``samples_per_node`` (64), ``test_samples_per_node`` (64), ``dim`` (10),
            ``outputs`` (k, 1), ``heterogeneity`` (1.0), ``noise`` (0.1).

    Returns:
        A regression dataset: inputs ``[n m, d]``, targets ``[n m, k]``.
    """
    opts = check_options("least-squares", options, LEAST_SQUARES_DEFAULTS)
    n = _require_nodes("least-squares", nodes)
    m = check_int(opts["samples_per_node"], "least-squares samples_per_node", minimum=1)
    m_test = check_int(opts["test_samples_per_node"], "least-squares test_samples_per_node",
                       minimum=1)
    d = check_int(opts["dim"], "least-squares dim", minimum=1)
    k = check_int(opts["outputs"], "least-squares outputs", minimum=1)
    h = check_float(opts["heterogeneity"], "least-squares heterogeneity", minimum=0.0)
    noise = check_float(opts["noise"], "least-squares noise", minimum=0.0)

    rng = np.random.default_rng(seed)
    weights, biases = _true_models(rng, n, k, d, h)

    def draw(count: int) -> tuple[np.ndarray, np.ndarray]:
        a = _features(rng, n, count, d)
        y = (np.einsum("nmd,nkd->nmk", a, weights) + biases[:, None, :]
             + noise * rng.standard_normal((n, count, k)))
        return _as_float32(a.reshape(n * count, d)), _as_float32(y.reshape(n * count, k))

    a_train, y_train = draw(m)
    a_test, y_test = draw(m_test)
    design = np.hstack([a_train, np.ones((n * m, 1))])
    theta, *_ = np.linalg.lstsq(design, y_train, rcond=None)  # [d + 1, k]
    weight, bias = theta[:d].T.copy(), theta[d].copy()
    residual = a_train @ weight.T + bias - y_train
    info = {
        "args": {"nodes": n, **opts},
        "optimum_loss": float(0.5 * np.mean(np.sum(residual**2, axis=1))),
        "true_weights": weights,
        "true_biases": biases,
        "objective": "mean over samples of 0.5 * ||W a + c - y||^2",
    }
    return Dataset(
        name="least-squares",
        x_train=torch.as_tensor(a_train, dtype=torch.float32, device="cpu"),
        y_train=torch.as_tensor(y_train, dtype=torch.float32, device="cpu"),
        x_test=torch.as_tensor(a_test, dtype=torch.float32, device="cpu"),
        y_test=torch.as_tensor(y_test, dtype=torch.float32, device="cpu"),
        input_shape=(d,),
        num_classes=k,
        task="regression",
        node_ids=np.repeat(np.arange(n, dtype=np.int64), m),
        optimum=_optimum_dict(weight, bias),
        info=info,
    )


def _centering_basis(k: int) -> np.ndarray:
    """Orthonormal ``[k, k - 1]`` basis of the vectors whose entries sum to zero."""
    u, _, _ = np.linalg.svd(np.eye(k) - 1.0 / k)
    return u[:, : k - 1]


def _kron_moment(weights: np.ndarray, design: np.ndarray, chunk: int = 2048) -> np.ndarray:
    """``(1/N) sum_s weights[s, a, b] design[s, i] design[s, j]`` as ``[a, i, b, j]``.

    Computed in torch (``float64``) in chunks of samples: one matrix product per chunk, fast
    whatever the BLAS threading of numpy, and light on memory.
    """
    w, x = torch.from_numpy(weights), torch.from_numpy(design)
    n_samples, k1, p = w.shape[0], w.shape[1], x.shape[1]
    out = torch.zeros(k1 * k1 * p, p, dtype=torch.float64, device="cpu")
    for start in range(0, n_samples, chunk):
        xs = x[start:start + chunk]
        lifted = (w[start:start + chunk, :, :, None] * xs[:, None, None, :]).reshape(len(xs), -1)
        out += lifted.T @ xs
    return (out / n_samples).reshape(k1, k1, p, p).permute(0, 2, 1, 3).numpy()


def logistic_optimum(a: np.ndarray, y: np.ndarray, classes: int,
                     l2: float = 0.0) -> tuple[np.ndarray, np.ndarray, float, int]:
    """Minimize the mean softmax cross-entropy (plus ``l2/2 (||W||^2 + ||c||^2)``) by Newton.

    Softmax is unchanged when a constant is added to every class's weights and bias, so the
    minimizer is made unique by the class-centred gauge: the rows of ``W`` and the entries of
    ``c`` sum to zero over classes (this is also the minimum-norm minimizer, and with ``l2 > 0``
    the unique one). Newton's method runs in that subspace in ``float64`` with a backtracking
    line search, until the gradient norm is below ``1e-10``.

    Args:
        a: Features ``[N, d]`` (``float64``).
        y: Labels ``[N]`` in ``0..classes-1``.
        classes: Number of classes ``k >= 2``.
        l2: Ridge coefficient on weights and biases.

    Returns:
        ``(weight [k, d], bias [k], objective value, Newton iterations)``.

    Raises:
        DataError: If Newton's method does not converge or the minimizer is not unique (the
            training data are separable or the features rank-deficient).
    """
    n_samples, d = a.shape
    design = np.hstack([a, np.ones((n_samples, 1))])  # [N, p]
    onehot = np.eye(classes)[y]
    basis = _centering_basis(classes)  # [k, k - 1]
    p = d + 1

    def objective(theta: np.ndarray) -> float:
        logp = log_softmax(design @ theta.T, axis=1)
        return float(-np.mean(logp[np.arange(n_samples), y]) + 0.5 * l2 * np.sum(theta**2))

    theta = np.zeros((classes, p))
    value = objective(theta)
    for iteration in range(NEWTON_MAX_ITER + 1):
        probs = softmax(design @ theta.T, axis=1)  # [N, k]
        grad = (probs - onehot).T @ design / n_samples + l2 * theta  # [k, p], rows sum to 0
        grad_norm = float(np.linalg.norm(grad))
        q_p = probs @ basis  # [N, k - 1]
        s_red = np.einsum("ka,nk,kb->nab", basis, probs, basis) - q_p[:, :, None] * q_p[:, None]
        hess = _kron_moment(s_red, design).reshape((classes - 1) * p, (classes - 1) * p)
        hess += l2 * np.eye(hess.shape[0])
        if grad_norm < NEWTON_TOL:
            low = float(np.linalg.eigvalsh(hess)[0])
            if low < HESSIAN_FLOOR:
                raise DataError(f"logistic: the optimum is not unique (smallest Hessian "
                                f"eigenvalue {low:.1e}); the training data are separable or "
                                f"rank-deficient: use more samples_per_node, a smaller dim, "
                                f"or l2 > 0")
            return theta[:, :d].copy(), theta[:, d].copy(), value, iteration
        if iteration == NEWTON_MAX_ITER:
            break
        g_red = (basis.T @ grad).reshape(-1)
        try:
            step = -np.linalg.solve(hess, g_red)
        except np.linalg.LinAlgError:
            break
        direction = (basis @ step.reshape(classes - 1, p))
        slope = float(g_red @ step)
        t = 1.0
        candidate, new_value = theta + direction, objective(theta + direction)
        if grad_norm > 1e-6:  # far from the optimum: backtrack (Armijo)
            while new_value > value + 1e-4 * t * slope and t > 1e-10:
                t *= 0.5
                candidate = theta + t * direction
                new_value = objective(candidate)
            if t <= 1e-10:
                break
        theta, value = candidate, new_value
        if not np.all(np.isfinite(theta)) or np.abs(theta).max() > 1e6:
            break
    raise DataError(f"logistic: Newton's method did not reach gradient norm < {NEWTON_TOL:g} "
                    f"(last {grad_norm:.1e}); the training data are probably separable: use more "
                    f"samples_per_node, a smaller dim, or l2 > 0")


def load_logistic(seed: int = 0, nodes: int | None = None, **options: Any) -> Dataset:
    """Heterogeneous multi-class logistic regression with labels sampled from the true model.

    Node ``i``'s labels are drawn from ``softmax(W_i a + b_i)`` (so the data are not separable
    in general). The global training objective is the mean cross-entropy over the training set
    (plus ``l2/2 (||W||^2 + ||c||^2)``); ``optimum`` is its minimizer in the class-centred gauge
    (see :func:`logistic_optimum`), ``info["optimum_loss"]`` its value.

    Args:
        seed: Seed of everything random.
        nodes: Number of nodes (required).
        **options: ``samples_per_node`` (64), ``test_samples_per_node`` (64), ``dim`` (10),
            ``classes`` (2), ``heterogeneity`` (1.0), ``l2`` (0.0).

    Returns:
        A classification dataset with ``classes`` logits.

    Raises:
        DataError: If the optimum does not exist or is not unique (separable training data).
    """
    opts = check_options("logistic", options, LOGISTIC_DEFAULTS)
    n = _require_nodes("logistic", nodes)
    m = check_int(opts["samples_per_node"], "logistic samples_per_node", minimum=1)
    m_test = check_int(opts["test_samples_per_node"], "logistic test_samples_per_node",
                       minimum=1)
    d = check_int(opts["dim"], "logistic dim", minimum=1)
    k = check_int(opts["classes"], "logistic classes", minimum=2)
    h = check_float(opts["heterogeneity"], "logistic heterogeneity", minimum=0.0)
    l2 = check_float(opts["l2"], "logistic l2", minimum=0.0)

    rng = np.random.default_rng(seed)
    weights, biases = _true_models(rng, n, k, d, h)

    def draw(count: int) -> tuple[np.ndarray, np.ndarray]:
        a = _features(rng, n, count, d)
        probs = softmax(np.einsum("nmd,nkd->nmk", a, weights) + biases[:, None, :], axis=2)
        u = rng.random((n, count, 1))
        labels = (np.cumsum(probs, axis=2)[..., :-1] < u).sum(axis=2)  # inverse CDF
        return _as_float32(a.reshape(n * count, d)), labels.reshape(-1).astype(np.int64)

    a_train, y_train = draw(m)
    a_test, y_test = draw(m_test)
    weight, bias, value, iterations = logistic_optimum(a_train, y_train, k, l2)
    info = {
        "args": {"nodes": n, **opts},
        "optimum_loss": value,
        "newton_iterations": iterations,
        "gauge": "class-centred: rows of the weight and entries of the bias sum to zero",
        "true_weights": weights,
        "true_biases": biases,
        "objective": "mean cross-entropy + l2/2 (||W||^2 + ||c||^2)",
    }
    return Dataset(
        name="logistic",
        x_train=torch.as_tensor(a_train, dtype=torch.float32, device="cpu"),
        y_train=torch.as_tensor(y_train, device="cpu"),
        x_test=torch.as_tensor(a_test, dtype=torch.float32, device="cpu"),
        y_test=torch.as_tensor(y_test, device="cpu"),
        input_shape=(d,),
        num_classes=k,
        task="classification",
        node_ids=np.repeat(np.arange(n, dtype=np.int64), m),
        optimum=_optimum_dict(weight, bias),
        info=info,
    )


def _bayes_predict(x: np.ndarray, means: np.ndarray, shifts: np.ndarray, std: float) -> np.ndarray:
    """Bayes classifier for equal priors and class densities ``mean_j N(mu_c + s_j, std^2 I)``."""
    centres = means[:, None, :] + shifts[None, :, :]  # [C, J, d]
    out = np.empty(len(x), dtype=np.int64)
    for start in range(0, len(x), 20_000):
        chunk = x[start:start + 20_000]
        sq = ((chunk[:, None, None, :] - centres[None]) ** 2).sum(axis=-1)  # [B, C, J]
        logits = -sq / (2 * std**2)
        top = logits.max(axis=2, keepdims=True)
        score = top[..., 0] + np.log(np.exp(logits - top).sum(axis=2))
        out[start:start + len(chunk)] = score.argmax(axis=1)
    return out


def _class_means(rng: np.random.Generator, c: int, d: int, distance: float) -> np.ndarray:
    """Class means ``[c, d]``: a randomly rotated regular simplex when ``d >= c - 1``."""
    if d >= c - 1:
        basis = _centering_basis(c)  # rows of ``basis`` are c points at mutual distance sqrt(2)
        q, r = np.linalg.qr(rng.standard_normal((d, c - 1)))
        rotation = q * np.sign(np.diag(r))  # [d, c - 1], orthonormal columns, Haar distributed
        return distance / math.sqrt(2) * basis @ rotation.T
    return rng.standard_normal((c, d)) * distance / math.sqrt(2 * d)


def load_gaussian_mixture(seed: int = 0, nodes: int | None = None, **options: Any) -> Dataset:
    """Gaussian blobs with a shared isotropic covariance ``std^2 I`` and a known Bayes accuracy.

    Class means are the vertices of a regular simplex with edge ``separation * std`` (every pair
    of classes equally far apart), randomly rotated into ``R^d``, when ``dim >= classes - 1``;
    otherwise they are drawn i.i.d. ``N(0, s^2 I_d)`` with ``s = separation * std / sqrt(2 d)``,
    so that the root-mean-square distance between two means is ``separation * std``. Classes are
    balanced (equal priors). With ``nodes``, the training samples are assigned to nodes at
    random in equal numbers (``node_ids``; the training set is cut to ``floor(samples / nodes) *
    nodes`` samples), and ``feature_shift > 0`` adds to every input of node ``j`` an offset
    ``s_j ~ N(0, (feature_shift * std)^2 / d I_d)``; test inputs get the offset of a random node.

    ``info["bayes_accuracy"]`` is the accuracy of the Bayes classifier on the population:
    exactly ``Phi(||mu_0 - mu_1|| / (2 std))`` for two classes without shift, otherwise a
    Monte Carlo estimate over ``mc_samples`` fresh draws (``info["bayes_accuracy_stderr"]`` is
    its standard error).

    Args:
        seed: Seed of everything random.
        nodes: Optional number of nodes.
        **options: ``classes`` (3), ``dim`` (2), ``samples`` (2000), ``test_samples`` (1000),
            ``separation`` (3.0), ``std`` (1.0), ``feature_shift`` (0.0, needs ``nodes``),
            ``mc_samples`` (200000).

    Returns:
        A classification dataset; ``info["means"]`` and ``info["shifts"]`` hold the centres.
    """
    opts = check_options("gaussian-mixture", options, GAUSSIAN_MIXTURE_DEFAULTS)
    c = check_int(opts["classes"], "gaussian-mixture classes", minimum=2)
    d = check_int(opts["dim"], "gaussian-mixture dim", minimum=1)
    n_train = check_int(opts["samples"], "gaussian-mixture samples", minimum=1)
    n_test = check_int(opts["test_samples"], "gaussian-mixture test_samples", minimum=1)
    sep = check_float(opts["separation"], "gaussian-mixture separation", minimum=0.0)
    std = check_float(opts["std"], "gaussian-mixture std", positive=True)
    shift = check_float(opts["feature_shift"], "gaussian-mixture feature_shift", minimum=0.0)
    mc = check_int(opts["mc_samples"], "gaussian-mixture mc_samples", minimum=1000)
    n = None if nodes is None else check_int(nodes, "gaussian-mixture nodes", minimum=1,
                                             maximum=n_train)
    if shift > 0 and n is None:
        raise DataError("gaussian-mixture feature_shift > 0 needs nodes=N (the shift is per node)")

    rng = np.random.default_rng(seed)
    means = _class_means(rng, c, d, sep * std)
    n_nodes = 1 if n is None else n
    shifts = rng.standard_normal((n_nodes, d)) * shift * std / math.sqrt(d)
    if n is not None:
        n_train = (n_train // n) * n
    node_ids = None if n is None else rng.permutation(np.repeat(np.arange(n), n_train // n))

    def draw(count: int, gen: np.random.Generator,
             node_of: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        labels = gen.permutation(np.arange(count) % c)
        if node_of is None:
            node_of = gen.integers(n_nodes, size=count)
        x = means[labels] + shifts[node_of] + std * gen.standard_normal((count, d))
        return x, labels.astype(np.int64)

    x_train, y_train = draw(n_train, rng, node_ids)
    x_test, y_test = draw(n_test, rng, None)

    if c == 2 and shift == 0:
        dist = float(np.linalg.norm(means[0] - means[1]))
        from scipy.special import ndtr  # the standard normal CDF (scipy.stats is slow to import)

        bayes, stderr, method = float(ndtr(dist / (2 * std))), 0.0, "exact"
    else:
        mc_rng = np.random.default_rng(derive_seed(seed, 1))
        x_mc, y_mc = draw(mc, mc_rng, None)
        centres = shifts if shift > 0 else np.zeros((1, d))
        bayes = float(np.mean(_bayes_predict(x_mc, means, centres, std) == y_mc))
        stderr, method = math.sqrt(bayes * (1 - bayes) / mc), f"monte-carlo ({mc} samples)"
    info = {
        "args": {"nodes": n, **opts},
        "bayes_accuracy": bayes,
        "bayes_accuracy_stderr": stderr,
        "bayes_accuracy_method": method,
        "means": means,
        "shifts": shifts,
        "std": std,
    }
    return Dataset(
        name="gaussian-mixture",
        x_train=torch.as_tensor(x_train, dtype=torch.float32, device="cpu"),
        y_train=torch.as_tensor(y_train, device="cpu"),
        x_test=torch.as_tensor(x_test, dtype=torch.float32, device="cpu"),
        y_test=torch.as_tensor(y_test, device="cpu"),
        input_shape=(d,),
        num_classes=c,
        task="classification",
        node_ids=None if node_ids is None else node_ids.astype(np.int64),
        info=info,
    )
