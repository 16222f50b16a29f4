"""How far each golden value may move on another CPU: a tolerance from what computed it.

On a machine with the recording's :func:`~tests.golden.fingerprint` the golden runs are compared
bit for bit. Elsewhere every value ``v`` is compared, in the manner of ``tests/precision.py``, as

    ``|v_got − v_want| <= budget · eps32 · scale``

with ``scale`` the size of the numbers ``v`` is computed from (not always ``v``: a consensus gap
of 1e-5 is a difference of losses near 2.3, and rounds like them) and ``budget`` justified by the
computation and by measurement, or to a criterion the computation itself guarantees. The kinds:

- **exact**: keys (step, epoch, metric, scope, run, index, grid coordinates), the learning rate (a
  Python float schedule), bytes sent (a count), convergence flags, sizes of state tensors;
- **one sample**: accuracies count correct argmaxes over ``N`` evaluated samples (120 here), and
  a prediction within rounding of a tie flips on another machine: at most ``1/N``;
- **criterion**: Lanczos (``hessian_top``, ``hessian_top_k``, per-node ``hessian_top``) stops
  when every wanted Ritz pair has residual ``r <= tol · |θ|`` (``flatlab/curvature/lanczos.py``),
  and a Ritz value of a symmetric ``H`` lies within ``r`` of an eigenvalue; so two machines'
  converged values differ by at most ``2 · tol · |θ|`` (``tol = 1e-3`` by default), whatever
  number of steps each took; the residual itself lies in ``[0, tol · |θ|]``; the number of
  products may differ by one (a residual within rounding of its threshold stops one step later).
  A run that did not converge ran ``max_iter`` steps, a fixed computation, and is *rounded*;
- **invariant**: NGPD's ``basis`` holds the eigenvectors of its K-FAC factors. Where a factor has
  a repeated eigenvalue (the output layer's ``G`` has a double eigenvalue 0 on every node here;
  one null direction is the all-ones vector, as softmax gradients sum to zero over the classes),
  its eigenvectors are any orthonormal basis of that eigenspace, and another CPU's ``eigh``
  returns another one: the ``sum`` of the basis moved by 0.54 (relative 1.7e-3) between AVX2 and
  AVX-512 kernels, by 8.4 against the DEFAULT level, with 2 sign flips and 8 rotated columns, all
  at eigenvalue 0. The
  solve ``Q diag(1/(d + s)) Qᵀ`` does not depend on that choice (``x`` and ``z`` agree to 2e-15
  there), so it is not a bug. What is invariant is compared: its size and ``sumsq`` (the number
  of unit eigenvectors plus ``Σ d²``); ``sum``, ``abs`` and ``first`` are not compared;
- **rounded**: every other value is a fixed computation whose rounding differs between kernels.

Why ``eps32`` for float64 runs too: every run starts from a model drawn in float32 (``nn.init``'s
``uniform_``, then cast to float64), and torch's float32 ``uniform_`` rounds differently per
kernel level: DEFAULT and AVX2 kernels differ by one float32 ulp in 508 of 1000 draws (AVX2 and
AVX-512 in none). So on a CPU with other float32 kernels a float64 golden run starts an
``eps32``-relative distance away, and each value moves by ``eps32`` times its sensitivity to the
start after 6 steps; where the float32 kernels agree only float64 rounding differs (1e-15).
Curvature, sharpness and landscape measures run in float32 (``measure.curvature_dtype``).

The budgets (:data:`BUDGET`, in units of ``eps32 · scale``) are 6x or more the largest ratio
measured between kernel levels (``make test-kernels``: DEFAULT, AVX2 and AVX-512 ATen kernels with
MKL, oneDNN, numpy and OpenBLAS held to the same level) on an AMD EPYC (Zen 4) with AVX-512,
against the recording of an AVX2 machine and of this one; the measured worst case of each is in
the comment beside it. A real change (a wrong node's gradient, a missing term, another
measure setting) moves a value by a sizable fraction of its scale, 1e5 times or more beyond.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass

import pandas as pd
import torch

from tests.precision import eps

EPS32 = eps(torch.float32)

#: Samples evaluated per accuracy (``measure.train_subset`` and ``test_subset`` of the golden
#: config): one flipped prediction moves an accuracy by ``1 / N``.
SAMPLES = 120

#: Lanczos's relative residual tolerance (``hessian_top`` and ``hessian_top_nodes`` defaults;
#: the golden options do not change it).
LANCZOS_TOL = 1e-3

#: Budgets in units of ``eps32 · scale``, each with the largest ratio measured between kernel
#: levels (DEFAULT, AVX2, AVX-512; numpy, OpenBLAS, MKL and oneDNN held to the same level).
BUDGET = {
    # float64 trajectories from a start rounded differently in float32: losses, gradient
    # norms and consensus distances after 6 steps, and the summaries of final states
    # (measured worst 0.32: least-squares/state x.sum, DEFAULT against AVX2)
    "trajectory": 16.0,
    # differences of losses (consensus gap, barrier, sharpness, landscape maxima, loss gap),
    # on the scale of the losses they subtract (measured worst 0.88: sharpness_keskar)
    "loss difference": 16.0,
    # float32 curvature with a fixed number of products (Hutch++, SLQ and its density,
    # Lanczos that ran to max_iter), on the scale of the quantity or of the spectrum
    # (measured worst 5.3: hessian_trace_slq, DEFAULT against AVX2)
    "curvature": 32.0,
    # float32 loss evaluations on a grid (landscapes; measured worst 1.8)
    "evaluation": 16.0,
    # rounding added to a Lanczos criterion (measured worst 0.45 of eps32 |θ|, well inside)
    "criterion": 16.0,
}


@dataclass(frozen=True)
class Check:
    """One compared value: where, the difference, the allowed difference, and the rule."""

    table: str
    what: str
    diff: float
    allowed: float
    rule: str
    scale: float = math.nan

    @property
    def ok(self) -> bool:
        """Within its allowance (a NaN against a number is not)."""
        return self.diff <= self.allowed

    def _unit(self) -> float:
        return EPS32 * self.scale if self.scale > 0 else 1.0

    @property
    def ratio(self) -> float:
        """``diff`` in units of ``eps32 · scale`` (in its own units where there is no scale)."""
        return 0.0 if self.diff == 0 else self.diff / self._unit()

    @property
    def budget(self) -> float:
        """``allowed`` in the units of :attr:`ratio`."""
        return self.allowed / self._unit()


def _diff(a: float, b: float) -> float:
    if math.isnan(a) and math.isnan(b):
        return 0.0
    return abs(a - b)


def _rounded(table: str, what: str, got: float, want: float, scale: float, rule: str) -> Check:
    return Check(table, what, _diff(got, want), BUDGET[rule] * EPS32 * scale, rule, scale)


# --------------------------------------------------------------------------------- metrics
#: Metrics whose value is exact on every machine.
EXACT = {"lr", "comm_bytes", "hessian_top_converged", "disagreement_alignment_chance",
         "disagreement_alignment_converged"}
#: Accuracies (one sample).
ACCURACY = {"train_accuracy", "test_accuracy"}
#: Differences of losses: the scale is the loss.
LOSS_DIFFERENCE = {"consensus_gap", "barrier_to_average", "sharpness_average",
                   "sharpness_average_stderr", "sharpness_sam", "sharpness_worst",
                   "landscape_1d_max", "landscape_2d_max", "loss_gap", "disagreement_gap"}
#: Float32 curvature of a fixed number of products, on the scale of the value.
CURVATURE = {"hessian_trace", "hessian_trace_stderr", "hessian_trace_slq"}
#: Float64 trajectory values on their own scale.
TRAJECTORY = {"train_loss", "test_loss", "batch_loss", "grad_norm"}


def _metric_checks(table: str, got: pd.DataFrame, want: pd.DataFrame) -> Iterator[Check]:
    keys = ["step", "epoch", "metric", "scope"]
    pd.testing.assert_frame_equal(got[keys], want[keys], check_exact=True, obj=f"{table} keys")
    value = {(r.step, r.metric, r.scope): r.value for r in want.itertuples()}

    def at(step: int, metric: str, scope: str, default: float = math.nan) -> float:
        return value.get((step, metric, scope), default)

    def loss_scale(step: int, own: float) -> float:
        """The largest training loss recorded at ``step`` (``own`` where none was)."""
        losses = [abs(v) for (s, m, _), v in value.items() if s == step and m == "train_loss"]
        return max(losses, default=abs(own))

    for g, w in zip(got.itertuples(), want.itertuples(), strict=True):
        m, what = w.metric, f"{w.metric}[step {w.step}, {w.scope}]"
        a, b = float(g.value), float(w.value)
        if m in EXACT:
            yield Check(table, what, _diff(a, b), 0.0, "exact")
        elif m in ACCURACY:
            yield Check(table, what, _diff(a, b), 1.0 / SAMPLES + 1e-12, "one sample")
        elif m in LOSS_DIFFERENCE:
            yield _rounded(table, what, a, b, max(loss_scale(w.step, b), abs(b)),
                           "loss difference")
        elif m == "sharpness_keskar":  # 100 (max f − f) / (1 + f), in percent
            f = loss_scale(w.step, 1.0)
            yield _rounded(table, what, a, b, 100 * f / (1 + f), "loss difference")
        elif m == "consensus_distance":  # Ξ² = mean ‖x_i − x̄‖²: moves by 2 √Ξ² ‖δ‖
            rel = at(w.step, "consensus_distance_rel", w.scope)
            norm = math.sqrt(b / rel) if rel > 0 else 0.0
            yield _rounded(table, what, a, b, 2 * math.sqrt(max(b, 0.0)) * norm, "trajectory")
        elif m == "consensus_distance_rel":  # Ξ² / ‖x̄‖²
            yield _rounded(table, what, a, b, 2 * math.sqrt(max(b, 0.0)) + 2 * abs(b),
                           "trajectory")
        elif m in TRAJECTORY:
            yield _rounded(table, what, a, b, abs(b), "trajectory")
        elif m in ("disagreement_curvature", "disagreement_gap_predicted",
                   "disagreement_rayleigh"):
            # (1/n) Σ d_iᵀ H d_i from float32 products: on the scale |λ_max| Ξ² of its terms
            # (divided by Ξ² for the Rayleigh quotient; halved for the prediction)
            xi2 = at(w.step, "consensus_distance", "network")
            terms = abs(at(w.step, "hessian_top", "avg")) * (1.0 if m.endswith("rayleigh")
                                                             else xi2)
            yield _rounded(table, what, a, b, max(abs(b), terms), "curvature")
        elif m == "disagreement_gap_ratio":  # gap / prediction: each part's error over the
            pred = at(w.step, "disagreement_gap_predicted", "avg")  # prediction
            terms = abs(at(w.step, "hessian_top", "avg")) * at(w.step, "consensus_distance",
                                                               "network") / 2
            allowed = (BUDGET["loss difference"] * loss_scale(w.step, 1.0)
                       + BUDGET["curvature"] * abs(b) * max(abs(pred), terms)) * EPS32 / abs(pred)
            yield Check(table, what, _diff(a, b), allowed, "derived: gap / prediction")
        elif m.startswith("disagreement_alignment"):
            # shares of ‖D‖² in Ritz vectors after a fixed 40 Lanczos steps: shares of 1
            yield _rounded(table, what, a, b, 1.0, "curvature")
        elif m == "edge_of_stability":  # η θ / 2 of Lanczos' θ: its criterion, as hessian_top
            flag = at(w.step, "hessian_top_converged", "avg" if w.scope == "avg" else "nodes",
                      1.0)
            theta = abs(at(w.step, m, "mean" if w.scope == "std" else w.scope, b))
            if flag == 1.0:
                yield Check(table, what, _diff(a, b),
                            2 * LANCZOS_TOL * theta + BUDGET["criterion"] * EPS32 * abs(b),
                            "criterion: Lanczos", abs(b))
            else:  # max_iter steps: a fixed computation
                yield _rounded(table, what, a, b, theta, "curvature")
        elif m in CURVATURE and w.scope == "std":  # a spread of per-node estimates: their scale
            yield _rounded(table, what, a, b, abs(at(w.step, m, "mean", b)), "curvature")
        elif m in CURVATURE:
            yield _rounded(table, what, a, b, abs(b), "curvature")
        elif m == "hessian_negative_mass":  # a share of the SLQ weights, in [0, 1]
            yield _rounded(table, what, a, b, 1.0, "curvature")
        elif m == "hessian_top_matvecs":
            yield Check(table, what, _diff(a, b), 1.0, "criterion: one step")
        elif m == "hessian_top_residual":
            top = abs(at(w.step, "hessian_top", w.scope))
            yield Check(table, what, _diff(a, b), LANCZOS_TOL * top, "criterion: residual")
        elif m == "hessian_top" or m.startswith("hessian_top_"):
            flag = at(w.step, "hessian_top_converged",
                      "avg" if w.scope == "avg" else "nodes", 1.0)
            top = abs(at(w.step, "hessian_top", w.scope, b))
            theta = max(abs(b), 1e-3 * top)
            if flag == 1.0:
                yield Check(table, what, _diff(a, b),
                            2 * LANCZOS_TOL * theta + BUDGET["criterion"] * EPS32 * abs(b),
                            "criterion: Lanczos", abs(b))
            else:
                yield _rounded(table, what, a, b, abs(b), "curvature")
        else:
            raise AssertionError(f"{table}: no tolerance rule for metric {m!r}; add one to "
                                 "tests/golden/tolerance.py")


# ----------------------------------------------------------------------------------- state
#: State tensors that are eigenbases (sign and rotation free within repeated eigenvalues): only
#: their invariants are compared.
EIGENBASES = {"basis"}


def _state_checks(table: str, got: pd.DataFrame, want: pd.DataFrame) -> Iterator[Check]:
    pd.testing.assert_series_equal(got["key"], want["key"], obj=f"{table} keys")
    pd.testing.assert_series_equal(got["numel"], want["numel"], obj=f"{table} sizes")
    for g, w in zip(got.itertuples(), want.itertuples(), strict=True):
        rms = math.sqrt(w.sumsq / w.numel) if w.numel else 0.0
        scales = {"sum": w.abs, "abs": w.abs, "sumsq": 2 * w.sumsq, "first": rms}
        if w.key in EIGENBASES:
            scales = {"sumsq": 2 * w.sumsq}
        for col, scale in scales.items():
            yield _rounded(table, f"{w.key}.{col}", float(getattr(g, col)),
                           float(getattr(w, col)), scale, "trajectory")


# ----------------------------------------------------------------------- density, landscape
def _density_checks(table: str, got: pd.DataFrame, want: pd.DataFrame) -> Iterator[Check]:
    keys = ["step", "run", "index"]
    pd.testing.assert_frame_equal(got[keys], want[keys], check_exact=True, obj=f"{table} keys")
    spread = want.groupby(["step", "run"])["eigenvalue"].transform(lambda v: v.abs().max())
    for g, w, s in zip(got.itertuples(), want.itertuples(), spread, strict=True):
        where = f"[step {w.step}, run {w.run}, {w.index}]"
        # Ritz values on the scale of the spectrum; quadrature weights are shares of 1
        yield _rounded(table, "eigenvalue" + where, g.eigenvalue, w.eigenvalue, s, "curvature")
        yield _rounded(table, "weight" + where, g.weight, w.weight, 1.0, "curvature")


def _landscape_checks(table: str, got: pd.DataFrame, want: pd.DataFrame) -> Iterator[Check]:
    keys = ["step", "kind", "scope", "alpha", "beta"]
    pd.testing.assert_frame_equal(got[keys], want[keys], check_exact=True, obj=f"{table} keys")
    for g, w in zip(got.itertuples(), want.itertuples(), strict=True):
        yield _rounded(table, f"loss[step {w.step}, {w.kind}, α {w.alpha:g}, β {w.beta:g}]",
                       g.loss, w.loss, abs(w.loss), "evaluation")


def checks(table: str, got: pd.DataFrame, want: pd.DataFrame) -> list[Check]:
    """Every value of the golden ``table`` (``run/kind``) compared by its rule."""
    kind = table.rsplit("/", 1)[1]
    pd.testing.assert_index_equal(got.columns, want.columns, obj=f"{table} columns")
    assert len(got) == len(want), f"{table}: {len(got)} rows, recorded {len(want)}"
    fn = {"metrics": _metric_checks, "state": _state_checks, "density": _density_checks,
          "landscape": _landscape_checks}.get(kind)
    if fn is None:
        raise AssertionError(f"{table}: no tolerance rule for a {kind!r} table")
    out = list(fn(table, got.reset_index(drop=True), want.reset_index(drop=True)))
    _log(out)
    return out


def _log(out: list[Check]) -> None:
    """With ``FLATLAB_ULPS_LOG=FILE``, append each rule's worst ratio per table (as
    ``tests/precision.py`` logs its comparisons)."""
    path = os.environ.get("FLATLAB_ULPS_LOG")
    if not path:
        return
    worst: dict[str, Check] = {}
    for c in out:
        if c.rule not in worst or c.ratio > worst[c.rule].ratio:
            worst[c.rule] = c
    with open(path, "a") as f:
        for rule, c in sorted(worst.items()):
            f.write(f"golden\t{rule} | {c.table} {c.what}\t{c.ratio:.4g}\t{c.budget:.4g}\n")
