"""Convergence bounds in calculator form (docs/reference/theory.md §7-§8).

Every rate is a sum of power laws in the iteration count ``T``,

    error(T) = sum_i c_i a_i T^(-e_i),

bounding ``(1/T) sum_t E ||grad f(xbar_t)||^2`` (non-convex, smooth objective). The first term
(``e = 1/2``) is the linear-speedup term; the others are higher order. From this one form:

* ``terms`` at a given ``T`` (error mode), or the iterations ``(c_i a_i / eps)^(1/e_i)`` each
  term needs to fall below ``eps`` (iterations mode; their sum is the papers' ``T(eps)``);
* ``iterations``: the smallest ``T`` with ``error(T) <= eps``, the exact inverse of the sum;
* ``transient_iterations``: the ``T`` after which the linear-speedup term dominates every other
  term, ``max_i (a_i / a_0)^(1 / (e_i - 1/2))`` (§8.1).

Most theorems state big-O rates with unspecified constants: their terms carry a multiplier
``c_i`` (``consts``, default 1) and the result says ``constants = "order of magnitude"``. CHOCO-SGD
(Koloskova et al., ICLR 2020, Thm 4.1) states its constants and is marked ``"paper"``.
Momentum Tracking's exponents are not available to us (docs/reference/theory.md §7.3 row 7): the
user supplies them. NGPD has no published formula: asking for it raises.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from flatlab.errors import TheoryError
from flatlab.theory.checks import doubly_stochastic, finite, positive, unit_interval
from flatlab.theory.spectral import SpectralSummary, spectral
from flatlab.topology import Topology

__all__ = ["RateTerm", "Bound", "bound", "bound_algorithms", "rate_family", "ALGORITHMS", "ALIASES"]


@dataclass(frozen=True)
class RateTerm:
    """One term ``coefficient * T**(-exponent)`` of an error bound."""

    name: str
    coefficient: float
    exponent: float
    formula: str
    source: str

    def error(self, T: float) -> float:
        """Value of the term after ``T`` iterations."""
        return self.coefficient * T ** (-self.exponent)

    def iterations(self, eps: float) -> float:
        """Iterations after which this term alone is at most ``eps``."""
        return (self.coefficient / eps) ** (1.0 / self.exponent)


@dataclass(frozen=True)
class Bound:
    """A rate evaluated at ``T`` and/or inverted at ``eps``.

    Attributes:
        algorithm: The algorithm registry's name (:func:`flatlab.algorithms.available`) of the
            algorithm asked for, or ``lower-bound``.
        family: The rate's name: ``dsgd`` for ``diffusion``, ``consensus`` and
            ``diffusion-cta`` (one bound for the three), else the algorithm's.
        mode: ``"error"`` (``terms`` are error contributions after ``T`` iterations) or
            ``"iterations"`` (``terms`` are iterations each term needs to reach ``eps``).
        terms: Term name to value, in the mode's unit.
        total: Sum of ``terms``.
        dominant: Name of the largest term.
        iterations: Smallest ``T`` whose bound is ``<= eps`` (``None`` without ``eps``).
        transient_iterations: ``T`` after which the linear-speedup term dominates (``None``
            when that term vanishes, e.g. ``sigma2 = 0``).
        constants: ``"paper"`` or ``"order of magnitude"``.
        criterion: What the bound bounds.
        rate: The terms as power laws, each with its formula and source.
        inputs: The inputs used (``n``, ``rho``, ``p``, ``L``, ...).
        extras: Derived quantities (``c`` of gradient tracking, CHOCO's consensus step, ...).
        notes: Caveats: assumptions, unverified constants, defaults taken.
    """

    algorithm: str
    family: str
    mode: str
    terms: dict[str, float]
    total: float
    dominant: str
    iterations: float | None
    transient_iterations: float | None
    constants: str
    criterion: str
    rate: tuple[RateTerm, ...]
    inputs: dict[str, Any]
    extras: dict[str, float] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    def error(self, T: float) -> float:
        """The bound on the criterion after ``T`` iterations."""
        return sum(term.error(T) for term in self.rate)

    def as_dict(self) -> dict[str, Any]:
        """Plain dictionary (JSON-ready; infinities become ``None``)."""
        d = asdict(self)
        d["rate"] = [asdict(r) for r in self.rate]
        d["notes"] = list(self.notes)
        return _finite(d)


def _finite(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x


# ----------------------------------------------------------------------------------------------
# Inputs


@dataclass
class _Inputs:
    n: int
    L: float
    sigma2: float
    zeta2: float
    F0: float
    rho: float | None
    tau: int
    lambda_min: float | None
    symmetric: bool | None
    beta: float | None
    delta: float | None
    G2: float | None
    c: float | None
    exponents: tuple[float, ...] | None
    notes: list[str] = field(default_factory=list)

    @property
    def sigma(self) -> float:
        return math.sqrt(self.sigma2)

    @property
    def zeta(self) -> float:
        return math.sqrt(self.zeta2)

    @property
    def p(self) -> float:
        return 1.0 - self.need_rho() ** 2

    def need_rho(self) -> float:
        if self.rho is None:
            raise TheoryError("this bound needs the topology: give topology (or rho)")
        return self.rho


# ----------------------------------------------------------------------------------------------
# The rates

KOLOSKOVA_2020 = ("Koloskova, Loizou, Boreiri, Jaggi, Stich, ICML 2020, 'A unified theory of "
                  "decentralized SGD with changing topology and local updates', Thm 2 (non-convex)")
GT_2021 = ("Koloskova, Lin, Stich, NeurIPS 2021, 'An improved analysis of gradient tracking for "
           "decentralized machine learning', Thm (non-convex); c = 1 - min(lambda_n, 0)^2")
CHOCO_2020 = ("Koloskova, Lin, Stich, Jaggi, ICLR 2020, 'Decentralized deep learning with "
              "arbitrary communication compression', Thm 4.1, step sqrt(n/(T+1))")
CENTRAL = "Ghadimi & Lan 2013 (mini-batch SGD with n workers); standard result"
LOWER = ("Lu & De Sa, ICML 2021; Yuan et al., NeurIPS 2022 (lower bound for decentralized "
         "non-convex stochastic optimization with gossip matrix of rate rho)")
MT_2023 = ("Takezawa, Bao, Niwa, Sato, Yamada, TMLR 2023, 'Momentum Tracking'; term shapes of "
           "gradient tracking, exponents supplied by the user")


def _noise(x: _Inputs, source: str) -> RateTerm:
    return RateTerm("noise", math.sqrt(x.L * x.F0 * x.sigma2 / x.n), 0.5,
                    "sqrt(L F0 sigma^2 / (n T))", source)


def _centralized(x: _Inputs) -> list[RateTerm]:
    return [_noise(x, CENTRAL), RateTerm("deterministic", x.L * x.F0, 1.0, "L F0 / T", CENTRAL)]


def _dsgd(x: _Inputs) -> list[RateTerm]:
    p, tau = x.p, x.tau
    if p <= 0:
        raise TheoryError("DSGD's bound needs p = 1 - rho^2 > 0 (a connected topology)")
    consensus = x.L * x.F0 * (x.zeta * tau / p + x.sigma * math.sqrt(tau / p))
    return [
        _noise(x, KOLOSKOVA_2020),
        RateTerm("consensus", consensus ** (2 / 3), 2 / 3,
                 "(L F0 (zeta tau / p + sigma sqrt(tau / p)))^(2/3) / T^(2/3)", KOLOSKOVA_2020),
        RateTerm("deterministic", x.L * x.F0 * tau / p, 1.0, "L F0 tau / (p T)", KOLOSKOVA_2020),
    ]


def _gt_c(x: _Inputs) -> float:
    if x.c is not None:
        return unit_interval("c", x.c, closed_right=True)
    if x.symmetric and x.lambda_min is not None:
        return 1.0 - min(x.lambda_min, 0.0) ** 2
    x.notes.append("c unknown (no symmetric topology given): took its lower bound c = p")
    return x.p


def _gradient_tracking(x: _Inputs) -> list[RateTerm]:
    p = x.p
    c = _gt_c(x)
    if x.tau > 1:
        x.notes.append("the gradient-tracking theorem is for a static W; p is taken over one "
                       "period of the schedule")
    return [
        _noise(x, GT_2021),
        RateTerm("tracking", (x.sigma * x.L * x.F0 / (math.sqrt(p) * c)) ** (2 / 3), 2 / 3,
                 "(sigma L F0 / (sqrt(p) c T))^(2/3)", GT_2021),
        RateTerm("deterministic", x.L * x.F0 / (p * c), 1.0, "L F0 / (p c T)", GT_2021),
    ]


def _momentum_tracking(x: _Inputs) -> list[RateTerm]:
    if x.exponents is None:
        raise TheoryError(
            "momentum-tracking: the exponents of p and (1 - beta) in its rate are not available "
            "(Takezawa et al., TMLR 2023, give them in no closed form; docs/reference/theory.md "
            "§7.3 row 7); supply exponents=(a1, b1, a2, b2) (flatlab bounds: --exponents "
            "a1,b1,a2,b2) for the terms (sigma L F0 / (p^a1 (1-beta)^b1 T))^(2/3) and "
            "L F0 / (p^a2 (1-beta)^b2 T)"
        )
    if len(x.exponents) != 4:
        raise TheoryError(f"momentum-tracking needs 4 exponents (a1, b1, a2, b2); got "
                          f"{len(x.exponents)}")
    a1, b1, a2, b2 = (finite(f"exponent {k}", e)
                      for k, e in zip(("a1", "b1", "a2", "b2"), x.exponents, strict=True))
    if x.beta is None:
        raise TheoryError("momentum-tracking needs the momentum beta in [0, 1)")
    p, one_b = x.p, 1.0 - x.beta
    x.notes.append(f"exponents supplied by the user: a1={a1}, b1={b1}, a2={a2}, b2={b2}; "
                   "the rate does not depend on zeta for any beta in [0, 1) (paper's abstract)")
    return [
        _noise(x, MT_2023),
        RateTerm("tracking", (x.sigma * x.L * x.F0 / (p**a1 * one_b**b1)) ** (2 / 3), 2 / 3,
                 "(sigma L F0 / (p^a1 (1 - beta)^b1 T))^(2/3)", MT_2023),
        RateTerm("deterministic", x.L * x.F0 / (p**a2 * one_b**b2), 1.0,
                 "L F0 / (p^a2 (1 - beta)^b2 T)", MT_2023),
    ]


def _choco(x: _Inputs) -> list[RateTerm]:
    if x.delta is None:
        raise TheoryError("choco needs the compression quality delta in (0, 1] "
                          "(E||Q(x) - x||^2 <= (1 - delta) ||x||^2; 1 = no compression)")
    if x.G2 is None:
        raise TheoryError("choco needs G2, the bound E||grad F_i(x, xi)||^2 <= G2")
    omega = unit_interval("delta", x.delta, closed_right=True)
    gap = 1.0 - x.need_rho()  # CHOCO's eigengap 1 - |lambda_2| (second largest modulus)
    c = gap**2 * omega / 82.0
    return [
        RateTerm("noise", (4 * x.F0 + 4 * x.sigma2 * x.L) / math.sqrt(x.n), 0.5,
                 "(4 F0 + 4 sigma^2 L) / sqrt(n T)", CHOCO_2020),
        RateTerm("compression", 24 * x.G2 * x.n * x.L / c**2, 1.0,
                 "24 G^2 n L / (c^2 T), c = (1 - rho)^2 delta / 82", CHOCO_2020),
    ]


def _lower_bound(x: _Inputs) -> list[RateTerm]:
    gap = 1.0 - x.need_rho()
    return [
        _noise(x, LOWER),
        RateTerm("topology", x.L * x.F0 / math.sqrt(gap), 1.0, "L F0 / (sqrt(1 - rho) T)", LOWER),
    ]


#: Rate name -> (rate, constants, what it depends on). The DSGD family's rate is stated once.
_RATES: dict[str, tuple[Callable[[_Inputs], list[RateTerm]], str, str]] = {
    "centralized": (_centralized, "order of magnitude", "no topology"),
    "dsgd": (_dsgd, "order of magnitude", "depends on zeta"),
    "gradient-tracking": (_gradient_tracking, "order of magnitude", "independent of zeta"),
    "momentum-tracking": (_momentum_tracking, "order of magnitude", "independent of zeta"),
    "choco": (_choco, "paper", "bounded gradients G2 instead of zeta"),
    "lower-bound": (_lower_bound, "order of magnitude", "best achievable rate"),
}

#: The algorithms of the registry (:func:`flatlab.algorithms.available`, canonical names) that
#: have a bound, and the rate each takes; plus ``lower-bound``, which is no algorithm. A table
#: here because theory does not import torch; ``tests/theory/test_bounds.py`` checks it
#: against the registry.
ALGORITHMS: dict[str, str] = {
    "centralized": "centralized",
    "consensus": "dsgd",
    "diffusion": "dsgd",
    "diffusion-cta": "dsgd",
    "gradient-tracking": "gradient-tracking",
    "momentum-tracking": "momentum-tracking",
    "choco": "choco",
    "lower-bound": "lower-bound",
}
#: Other spellings: the registry's aliases of the algorithms above
#: (:func:`flatlab.algorithms.aliases`) and ``lower``.
ALIASES: dict[str, str] = {
    "c-psgd": "centralized",
    "allreduce": "centralized",
    "dgd": "consensus",
    "d-psgd": "consensus",
    "dsgd": "diffusion",
    "diffusion-atc": "diffusion",
    "atc": "diffusion",
    "cta": "diffusion-cta",
    "gt": "gradient-tracking",
    "diging": "gradient-tracking",
    "mt": "momentum-tracking",
    "choco-sgd": "choco",
    "lower": "lower-bound",
}
#: Registry algorithms refused with a reason (aliases in :data:`_NO_BOUND_ALIASES`).
_NO_BOUND = {
    "ngpd": "NGPD (Niwa et al., IEEE TSIPN 2024) states a rate for the averaged parameter but "
            "gives no formula we can evaluate (docs/reference/theory.md §7.3 row 8)",
}


_NO_BOUND_ALIASES = {"natural-gradient-primal-dual": "ngpd"}


def bound_algorithms() -> list[str]:
    """Algorithm names :func:`bound` accepts: the registry's names, then their aliases."""
    return list(ALGORITHMS) + list(ALIASES)


def rate_family(algorithm: str) -> str:
    """The rate :func:`bound` uses for ``algorithm`` (``dsgd`` for consensus and diffusion).

    Raises:
        TheoryError: An algorithm with no bound.
    """
    return ALGORITHMS[_canonical(algorithm)]


def _canonical(algorithm: str) -> str:
    """The registry's name for ``algorithm`` (or ``lower-bound``), refusing one with no bound."""
    key = str(algorithm).strip().lower().replace("_", "-")
    key = ALIASES.get(key, _NO_BOUND_ALIASES.get(key, key))
    if key in _NO_BOUND:
        raise TheoryError(f"no bound for {key}: {_NO_BOUND[key]}")
    if key not in ALGORITHMS:
        raise TheoryError(f"no bound for algorithm {algorithm!r}; accepted: "
                          f"{', '.join(bound_algorithms())}")
    return key


def _solve_iterations(rate: list[RateTerm], eps: float) -> float:
    """Smallest ``T`` (real) with ``sum_i a_i T^-e_i <= eps``, by bisection in ``log T``."""
    live = [r for r in rate if r.coefficient > 0]
    if not live:
        return 0.0
    lo = max(r.iterations(eps) for r in live)  # error(lo) >= eps
    hi = lo * len(live) ** (1.0 / min(r.exponent for r in live))  # each term <= eps / k
    lo_log, hi_log = math.log(lo), math.log(hi)
    for _ in range(200):
        mid = 0.5 * (lo_log + hi_log)
        if sum(r.error(math.exp(mid)) for r in live) <= eps:
            hi_log = mid
        else:
            lo_log = mid
    return math.exp(hi_log)


def bound(algorithm: str, *, n: int | None = None, rho: float | None = None,
          topology: Topology | SpectralSummary | None = None, L: float = 1.0,
          sigma2: float = 1.0, zeta2: float = 1.0, F0: float = 1.0, T: float | None = None,
          eps: float | None = None, delta: float | None = None, beta: float | None = None,
          G2: float | None = None, c: float | None = None, tau: int | None = None,
          exponents: tuple[float, float, float, float] | None = None,
          consts: Mapping[str, float] | None = None) -> Bound:
    """Evaluate a convergence bound: its terms, total, dominant term and transient iterations.

    Args:
        algorithm: A name of the algorithm registry (:func:`flatlab.algorithms.available`, or
            one of its aliases): ``centralized``; ``diffusion``, ``consensus`` and
            ``diffusion-cta``, which share the DSGD bound (aliases ``dsgd``, ``d-psgd``, ...);
            ``gradient-tracking``, ``momentum-tracking``, ``choco``; or ``lower-bound``.
            :func:`bound_algorithms` lists them all.
        n: Number of nodes (default: the topology's).
        rho: ``||W - J||_2``; give it or ``topology``.
        topology: A :class:`~flatlab.topology.Topology`, or its already computed
            :class:`~flatlab.theory.SpectralSummary`; supplies ``n``, ``rho`` (over one period),
            ``tau`` (its period) and ``lambda_min`` (for gradient tracking's ``c``).
        L: Smoothness constant.
        sigma2: Per-node stochastic-gradient variance ``sigma^2``.
        zeta2: Heterogeneity ``zeta^2`` (mean squared deviation of local gradients).
        F0: Initial suboptimality ``f(x_0) - f*``.
        T: Iterations at which to evaluate the error terms.
        eps: Target accuracy on ``(1/T) sum_t E||grad f(xbar_t)||^2``.
        delta: Compression quality ``omega`` of CHOCO-SGD, in ``(0, 1]``.
        beta: Momentum of Momentum Tracking, in ``[0, 1)``.
        G2: Second-moment bound ``E||grad F_i||^2 <= G2`` (CHOCO-SGD).
        c: Gradient tracking's ``c`` (default ``1 - min(lambda_n, 0)^2`` from the topology).
        tau: Rounds over which ``p`` holds (Koloskova et al. 2020); default the period or 1.
        exponents: Momentum Tracking's ``(a1, b1, a2, b2)``, see the module docstring.
        consts: One multiplier per term name (default 1), for order-of-magnitude rates.

    Returns:
        A :class:`Bound`.

    Raises:
        TheoryError: unknown algorithm, missing or out-of-range inputs, no ``T`` and no ``eps``.
    """
    name = _canonical(algorithm)
    if T is None and eps is None:
        raise TheoryError("give T (iterations) or eps (target accuracy), or both")
    x, s = _inputs(n=n, rho=rho, topology=topology, tau=tau, L=L, sigma2=sigma2, zeta2=zeta2,
                   F0=F0, beta=beta, delta=delta, G2=G2, c=c, exponents=exponents)
    build, constants, _ = _RATES[ALGORITHMS[name]]
    rate = _scaled(name, build(x), consts)
    return _result(name, constants, rate, x, s, None if T is None else positive("T", T),
                   None if eps is None else positive("eps", eps))


def _result(name: str, constants: str, rate: list[RateTerm], x: _Inputs,
            s: SpectralSummary | None, T: float | None, eps: float | None) -> Bound:
    """The :class:`Bound` of ``rate`` at ``T`` (error mode) or ``eps`` (iterations mode)."""
    family = ALGORITHMS[name]
    mode, terms = ("error", {r.name: r.error(T) for r in rate}) if T is not None else (
        "iterations", {r.name: r.iterations(eps) for r in rate})
    iterations = None if eps is None else _solve_iterations(rate, eps)
    transient = _transient(rate, x)
    extras = _extras(family, x, s, T)
    if name == "consensus":
        x.notes.append("the rate is Koloskova et al.'s for the ATC form; the DGD/consensus form "
                       "has the same order (Lian et al. 2017)")
    if constants != "paper":
        x.notes.append("constants unspecified in the theorem: values are orders of magnitude "
                       "(multiply terms with consts)")
    return Bound(
        algorithm=name,
        family=family,
        mode=mode,
        terms=terms,
        total=sum(terms.values()),
        dominant=max(terms, key=terms.get),
        iterations=iterations,
        transient_iterations=transient,
        constants=constants,
        criterion="(1/T) sum_t E||grad f(xbar_t)||^2 (non-convex, L-smooth)",
        rate=tuple(rate),
        inputs={"n": x.n, "rho": x.rho, "p": None if x.rho is None else x.p, "tau": x.tau,
                "L": x.L, "sigma2": x.sigma2, "zeta2": x.zeta2, "F0": x.F0, "T": T, "eps": eps,
                "delta": x.delta, "beta": x.beta, "G2": x.G2},
        extras=extras,
        notes=tuple(dict.fromkeys(x.notes)),
    )


def _inputs(*, n: int | None, rho: float | None, topology: Topology | SpectralSummary | None,
            tau: int | None, L: float, sigma2: float, zeta2: float, F0: float,
            beta: float | None, delta: float | None, G2: float | None, c: float | None,
            exponents: tuple[float, ...] | None) -> tuple[_Inputs, SpectralSummary | None]:
    """Check the inputs (``n``, ``rho`` and ``tau`` from the topology); with its spectrum."""
    if topology is not None and rho is not None:
        raise TheoryError("give topology or rho, not both")
    lambda_min = symmetric = None
    doubly_stochastic("the rate bound", topology)
    s = topology if isinstance(topology, SpectralSummary) or topology is None else spectral(
        topology)
    if s is not None:
        rho, lambda_min, symmetric = s.rho, s.lambda_min, s.symmetric
        if n is not None and int(n) != s.nodes:
            raise TheoryError(f"n = {n} but the topology has {s.nodes} nodes")
        n = s.nodes
        tau = s.period if tau is None else tau
    if n is None:
        raise TheoryError("give n (the number of nodes) or a topology")
    if isinstance(n, bool) or int(n) != n or int(n) < 1:
        raise TheoryError(f"n must be a positive integer (got {n!r})")
    if rho is not None:
        rho = unit_interval("rho", rho)
    if tau is not None and (int(tau) != tau or int(tau) < 1):
        raise TheoryError(f"tau must be a positive integer (got {tau!r})")
    x = _Inputs(
        n=int(n), L=positive("L", L), sigma2=positive("sigma2", sigma2, allow_zero=True),
        zeta2=positive("zeta2", zeta2, allow_zero=True), F0=positive("F0", F0),
        rho=rho, tau=int(tau or 1), lambda_min=lambda_min, symmetric=symmetric,
        beta=None if beta is None else unit_interval("beta", beta),
        delta=delta, G2=None if G2 is None else positive("G2", G2, allow_zero=True), c=c,
        exponents=None if exponents is None else tuple(exponents),
    )
    return x, s


def _scaled(name: str, rate: list[RateTerm], consts: Mapping[str, float] | None
            ) -> list[RateTerm]:
    """The terms multiplied by their ``consts`` (each 1 unless given)."""
    consts = dict(consts or {})
    unknown = sorted(set(consts) - {r.name for r in rate})
    if unknown:
        raise TheoryError(f"{name} has no term {unknown[0]!r}; its terms: "
                          f"{', '.join(r.name for r in rate)}")
    return [
        RateTerm(r.name, r.coefficient * positive(f"constant {r.name}", consts.get(r.name, 1.0)),
                 r.exponent, r.formula, r.source)
        for r in rate
    ]


def _transient(rate: list[RateTerm], x: _Inputs) -> float | None:
    """``T`` after which the first (linear-speedup) term dominates; ``None`` when it is 0."""
    lead = rate[0]
    if lead.coefficient > 0:
        return max(
            ((r.coefficient / lead.coefficient) ** (1.0 / (r.exponent - 0.5)) for r in rate[1:]),
            default=0.0,
        )
    x.notes.append("the linear-speedup term vanishes (sigma2 = 0): no transient phase")
    return None


def _extras(family: str, x: _Inputs, s: SpectralSummary | None, T: float | None
            ) -> dict[str, float]:
    """Derived quantities of a rate: gradient tracking's ``c``, CHOCO's step and ``c``."""
    extras: dict[str, float] = {}
    if family == "gradient-tracking":
        extras["c"] = _gt_c(x)
    if family == "choco":
        extras.update(_choco_extras(x, static_symmetric=bool(s and s.symmetric
                                                             and s.period == 1)))
        if T is not None and T < 64 * x.n * x.L**2:
            x.notes.append(f"Thm 4.1 assumes T >= 64 n L^2 = {64 * x.n * x.L**2:g}")
    return extras


def _choco_extras(x: _Inputs, static_symmetric: bool) -> dict[str, float]:
    """CHOCO's ``c`` and, for a static symmetric W, its consensus step ``gamma`` (Thm 4.1)."""
    gap, omega = 1.0 - x.need_rho(), float(x.delta)
    out = {"c": gap**2 * omega / 82.0}
    if static_symmetric and x.lambda_min is not None:
        beta_i = 1.0 - x.lambda_min  # ||I - W||_2 for symmetric W
        out["beta_I"] = beta_i
        out["consensus_step"] = gap**2 * omega / (
            16 * gap + gap**2 + 4 * beta_i**2 + 2 * gap * beta_i**2 - 8 * gap * omega
        )
    return out
