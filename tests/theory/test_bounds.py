import math

import numpy as np
import pytest

from flatlab import topology
from flatlab.errors import TheoryError
from flatlab.theory import bound, bound_algorithms

CASES = [  # n, rho, L, sigma2, zeta2, F0
    (16, 0.95, 1.0, 1.0, 1.0, 1.0),
    (64, 0.5, 2.0, 0.3, 5.0, 10.0),
    (8, 0.999, 0.1, 4.0, 0.0, 3.0),
    (1024, 0.2, 10.0, 0.01, 0.5, 0.7),
]


@pytest.mark.parametrize("n, rho, L, s2, z2, F0", CASES)
def test_dsgd_matches_the_reference_formulas(n, rho, L, s2, z2, F0):
    b = bound("dsgd", n=n, rho=rho, L=L, sigma2=s2, zeta2=z2, F0=F0, eps=1e-3)
    p, s, z, eps = 1 - rho**2, math.sqrt(s2), math.sqrt(z2), 1e-3
    # T(eps) = L F0 [sigma^2/(n eps^2) + (zeta + sigma sqrt p)/(p eps^1.5) + 1/(p eps)]
    assert b.mode == "iterations"
    assert b.terms["noise"] == pytest.approx(L * F0 * s2 / (n * eps**2), rel=1e-12)
    assert b.terms["consensus"] == pytest.approx(L * F0 * (z + s * math.sqrt(p)) / (p * eps**1.5),
                                                 rel=1e-12)
    assert b.terms["deterministic"] == pytest.approx(L * F0 / (p * eps), rel=1e-12)
    # transient: max(L F0 n^3 (zeta + sigma sqrt p)^4 / (sigma^6 p^4), L F0 n / (sigma^2 p^2))
    expected = max(L * F0 * n**3 * (z + s * math.sqrt(p)) ** 4 / (s**6 * p**4),
                   L * F0 * n / (s2 * p**2))
    assert b.transient_iterations == pytest.approx(expected, rel=1e-10)
    # the error-after-T form at T = transient: noise term equals the largest other term
    e = bound("dsgd", n=n, rho=rho, L=L, sigma2=s2, zeta2=z2, F0=F0, T=b.transient_iterations)
    assert e.terms["noise"] == pytest.approx(max(e.terms["consensus"], e.terms["deterministic"]),
                                             rel=1e-9)


@pytest.mark.parametrize("n, rho, L, s2, z2, F0", CASES)
def test_gradient_tracking_reference_and_zeta_independence(n, rho, L, s2, z2, F0):
    c = 0.7
    b = bound("gradient-tracking", n=n, rho=rho, L=L, sigma2=s2, zeta2=z2, F0=F0, eps=1e-3, c=c)
    p, s, eps = 1 - rho**2, math.sqrt(s2), 1e-3
    assert b.terms["tracking"] == pytest.approx(L * F0 * s / (math.sqrt(p) * c * eps**1.5),
                                                rel=1e-12)
    assert b.terms["deterministic"] == pytest.approx(L * F0 / (p * c * eps), rel=1e-12)
    expected = max(L * F0 * n**3 / (s2 * p**2 * c**4), L * F0 * n / (s2 * p**2 * c**2))
    assert b.transient_iterations == pytest.approx(expected, rel=1e-10)
    other = bound("gradient-tracking", n=n, rho=rho, L=L, sigma2=s2, zeta2=z2 * 100 + 1, F0=F0,
                  eps=1e-3, c=c)
    assert other.terms == b.terms


def test_centralized_and_lower_bound():
    b = bound("centralized", n=32, sigma2=2.0, L=3.0, F0=0.5, eps=1e-2)
    assert b.terms["noise"] == pytest.approx(3 * 0.5 * 2 / (32 * 1e-4), rel=1e-12)
    assert b.terms["deterministic"] == pytest.approx(3 * 0.5 / 1e-2, rel=1e-12)
    assert b.transient_iterations == pytest.approx(3 * 0.5 * 32 / 2.0, rel=1e-12)
    lb = bound("lower-bound", n=32, rho=0.99, sigma2=2.0, L=3.0, F0=0.5, T=100)
    assert lb.terms["topology"] == pytest.approx(1.5 / (math.sqrt(0.01) * 100), rel=1e-12)
    assert lb.transient_iterations == pytest.approx(32 * 1.5 / (2.0 * 0.01), rel=1e-10)
    # the lower bound never exceeds the DSGD bound
    d = bound("dsgd", n=32, rho=0.99, sigma2=2.0, L=3.0, F0=0.5, zeta2=0.0, T=100)
    assert lb.total <= d.total


def test_exact_iterations_invert_the_summed_bound():
    for algo in ("centralized", "dsgd", "gradient-tracking", "lower-bound"):
        b = bound(algo, n=16, rho=0.9, eps=1e-2, c=1.0 if algo == "gradient-tracking" else None)
        assert b.error(b.iterations) == pytest.approx(1e-2, rel=1e-9)
        assert b.error(b.iterations * 0.999) > 1e-2
        # max_i T_i(eps) <= exact <= k^(1/min e) max_i T_i(eps), k terms, exponents >= 1/2;
        # so the papers' additive T(eps) is within a factor k^2 of the exact inverse
        k, largest = len(b.rate), max(b.terms.values())
        assert largest <= b.iterations <= k**2 * largest
        assert b.iterations / k <= b.total <= k**2 * b.iterations


def test_error_mode_terms_total_dominant_and_consts():
    b = bound("dsgd", n=16, rho=0.95, T=1e4)
    assert b.mode == "error" and b.iterations is None
    assert b.total == pytest.approx(sum(b.terms.values()), rel=1e-15)
    assert b.dominant == max(b.terms, key=b.terms.get) == "consensus"
    assert b.constants == "order of magnitude"
    scaled = bound("dsgd", n=16, rho=0.95, T=1e4, consts={"consensus": 0.01})
    assert scaled.terms["consensus"] == pytest.approx(0.01 * b.terms["consensus"], rel=1e-12)
    assert scaled.terms["noise"] == b.terms["noise"]
    assert scaled.dominant == "noise"


def test_topology_supplies_n_rho_tau_and_gradient_tracking_c():
    ring = topology.make("ring", 16)
    b = bound("gradient-tracking", topology=ring, T=100)
    assert b.inputs["n"] == 16 and b.inputs["rho"] == pytest.approx(0.9492530216741912)
    assert b.extras["c"] == pytest.approx(1 - (1 / 3) ** 2, rel=1e-12)  # lambda_min = -1/3
    lazy = bound("gradient-tracking", topology=topology.make("ring", 16, lazy=True), T=100)
    assert lazy.extras["c"] == pytest.approx(1.0, abs=1e-12)  # PSD W
    directed = bound("gradient-tracking", topology=topology.make("exponential", 16), T=100)
    assert directed.extras["c"] == pytest.approx(directed.inputs["p"])
    assert any("lower bound c = p" in note for note in directed.notes)
    ope = topology.make("one-peer-exponential", 12, allow_any_n=True)
    d = bound("dsgd", topology=ope, T=100)
    assert d.inputs["tau"] == 4


def test_tau_enters_dsgd_as_in_koloskova():
    b1 = bound("dsgd", n=8, rho=0.5, zeta2=4.0, sigma2=1.0, eps=1e-2, tau=1)
    b3 = bound("dsgd", n=8, rho=0.5, zeta2=4.0, sigma2=1.0, eps=1e-2, tau=3)
    p = 0.75
    assert b3.terms["deterministic"] == pytest.approx(3 * b1.terms["deterministic"], rel=1e-12)
    expected = (2 * 3 / p + math.sqrt(3 / p)) / 1e-2**1.5
    assert b3.terms["consensus"] == pytest.approx(expected, rel=1e-12)


def test_choco_uses_the_paper_constants():
    ring = topology.make("ring", 8)
    rho = 1 - (2 / 3) * (1 - math.cos(2 * math.pi / 8))
    b = bound("choco", topology=ring, T=1e6, delta=0.1, G2=2.0, sigma2=1.0, L=1.0, F0=1.0)
    gap = 1 - rho
    c = gap**2 * 0.1 / 82
    assert b.constants == "paper"
    assert b.extras["c"] == pytest.approx(c, rel=1e-12)
    assert b.terms["noise"] == pytest.approx((4 + 4) / math.sqrt(8 * 1e6), rel=1e-12)
    assert b.terms["compression"] == pytest.approx(24 * 2.0 * 8 / (c**2 * 1e6), rel=1e-12)
    beta_i = 1 - (1 / 3 + (2 / 3) * math.cos(math.pi))  # ||I - W||_2 = 1 - lambda_min
    gamma = gap**2 * 0.1 / (16 * gap + gap**2 + 4 * beta_i**2 + 2 * gap * beta_i**2 - 8 * gap * 0.1)
    assert b.extras["consensus_step"] == pytest.approx(gamma, rel=1e-12)


def test_momentum_tracking_needs_user_exponents():
    with pytest.raises(TheoryError, match="exponents of p and \\(1 - beta\\)"):
        bound("momentum-tracking", n=8, rho=0.5, beta=0.9, T=10)
    b = bound("momentum-tracking", n=8, rho=0.5, beta=0.9, T=10, exponents=(0.5, 1, 1, 2))
    p = 0.75
    assert b.terms["deterministic"] == pytest.approx(1 / (p * 0.1**2 * 10), rel=1e-12)
    assert any("supplied by the user" in note for note in b.notes)
    z = bound("momentum-tracking", n=8, rho=0.5, beta=0.9, T=10, exponents=(0.5, 1, 1, 2),
              zeta2=100.0)
    assert z.terms == b.terms


def test_no_noise_means_no_transient():
    b = bound("dsgd", n=8, rho=0.5, sigma2=0.0, T=10)
    assert b.transient_iterations is None
    assert b.as_dict()["transient_iterations"] is None


@pytest.mark.parametrize("kwargs, pattern", [
    ({"algorithm": "adam", "n": 4, "T": 1}, "no bound for algorithm 'adam'; accepted"),
    ({"algorithm": "ngpd", "n": 4, "T": 1}, "no bound for ngpd"),
    ({"algorithm": "dsgd", "n": 4, "rho": 0.5}, "give T"),
    ({"algorithm": "dsgd", "n": 4, "T": 1}, "needs the topology"),
    ({"algorithm": "dsgd", "n": 4, "rho": 1.0, "T": 1}, r"rho must be in \[0, 1\)"),
    ({"algorithm": "dsgd", "n": 4, "rho": 0.5, "sigma2": -1, "T": 1}, "sigma2 must be"),
    ({"algorithm": "dsgd", "n": 0, "rho": 0.5, "T": 1}, "positive integer"),
    ({"algorithm": "dsgd", "rho": 0.5, "T": 1}, "give n"),
    ({"algorithm": "dsgd", "n": 4, "rho": 0.5, "T": 1, "consts": {"bias": 2}}, "no term 'bias'"),
    ({"algorithm": "choco", "n": 4, "rho": 0.5, "T": 1}, "compression quality delta"),
    ({"algorithm": "choco", "n": 4, "rho": 0.5, "T": 1, "delta": 0.5}, "G2"),
    ({"algorithm": "choco", "n": 4, "rho": 0.5, "T": 1, "delta": 1.5, "G2": 1},
     r"delta must be in \(0, 1\]"),
    ({"algorithm": "momentum-tracking", "n": 4, "rho": 0.5, "T": 1, "exponents": (1, 1, 1, 1)},
     "beta"),
    ({"algorithm": "dsgd", "n": 4, "rho": 0.5, "T": 1, "tau": 0}, "tau"),
])
def test_errors(kwargs, pattern):
    with pytest.raises(TheoryError, match=pattern):
        bound(**kwargs)


def test_topology_and_rho_conflict():
    with pytest.raises(TheoryError, match="not both"):
        bound("dsgd", topology=topology.make("ring", 8), rho=0.5, T=1)
    with pytest.raises(TheoryError, match="n = 9 but the topology has 8"):
        bound("dsgd", topology=topology.make("ring", 8), n=9, T=1)


def test_aliases_and_listing():
    names = bound_algorithms()
    for name in ("centralized", "dsgd", "diffusion", "consensus", "diffusion-cta",
                 "gradient-tracking", "momentum-tracking", "choco", "lower-bound"):
        assert name in names
    # the DSGD family shares one bound, shown under the registry's names
    a = bound("diffusion", n=8, rho=0.5, T=100)
    b = bound("consensus", n=8, rho=0.5, T=100)
    c = bound("diffusion-cta", n=8, rho=0.5, T=100)
    assert (a.algorithm, b.algorithm, c.algorithm) == ("diffusion", "consensus", "diffusion-cta")
    assert a.family == b.family == c.family == "dsgd" and a.terms == b.terms == c.terms
    assert any("ATC form" in note for note in b.notes)
    # old spellings are still accepted, as the registry's aliases
    for old, new in (("dsgd", "diffusion"), ("d-psgd", "consensus"), ("gt", "gradient-tracking"),
                     ("choco-sgd", "choco"), ("lower", "lower-bound"), ("D_PSGD", "consensus")):
        assert bound(old, n=8, rho=0.5, T=100, delta=0.5, G2=1.0, beta=0.5,
                     exponents=(1, 1, 1, 1)).algorithm == new
    with pytest.raises(TheoryError, match="no bound for ngpd"):
        bound("natural-gradient-primal-dual", n=4, rho=0.5, T=1)


def test_bound_names_are_the_registrys():
    """theory keeps its own name table (it imports no torch); it must agree with the registry."""
    import flatlab.algorithms
    from flatlab.theory.bounds import _NO_BOUND, _NO_BOUND_ALIASES, ALGORITHMS, ALIASES

    registry, registry_aliases = flatlab.algorithms.available(), flatlab.algorithms.aliases()
    assert set(ALGORITHMS) - {"lower-bound"} <= set(registry)
    assert set(_NO_BOUND) <= set(registry) and not set(_NO_BOUND) & set(ALGORITHMS)
    for alias, name in (ALIASES | _NO_BOUND_ALIASES).items():
        assert registry_aliases.get(alias, name) == name, alias
    # every alias the registry has for an algorithm with a bound (or a refused one) is accepted
    known, accepted = set(ALGORITHMS) | set(_NO_BOUND), set(ALIASES) | set(_NO_BOUND_ALIASES)
    assert {a for a, n in registry_aliases.items() if n in known} <= accepted


def test_theory_imports_no_torch():
    import subprocess
    import sys

    code = "import sys, flatlab.theory; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_as_dict_is_json_ready():
    import json

    d = bound("dsgd", topology=topology.make("torus", 16), T=1e3, eps=1e-2).as_dict()
    text = json.dumps(d)
    assert {"terms", "total", "dominant", "transient_iterations", "rate", "notes"} <= set(d)
    assert "NaN" not in text and "Infinity" not in text
    assert np.isfinite(d["iterations"])


def test_a_precomputed_spectrum_gives_the_same_bound():
    from flatlab.theory import spectral

    for t in (topology.make("ring", 12), topology.make("one-peer-exponential", 12,
                                                       allow_any_n=True)):
        for algo, kw in (("gradient-tracking", {}), ("dsgd", {}),
                         ("choco", {"delta": 0.5, "G2": 1.0})):
            a = bound(algo, topology=t, T=50, **kw)
            b = bound(algo, topology=spectral(t), T=50, **kw)
            assert a.as_dict() == b.as_dict()
