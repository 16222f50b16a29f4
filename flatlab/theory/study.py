"""The spectral-gap study: how the gap and the transient iterations scale with ``n``.

One tidy table, one row per (topology, n, algorithm), for plotting with
:func:`flatlab.plots.spectral_gap`: the spectral gap ``1 - rho`` of each topology and the
transient iterations of DSGD and gradient tracking (docs/reference/theory.md §8.1) at the given
constants. Sizes a generator refuses (a torus of prime ``n``, a hypercube of odd ``n``) are left
out.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from flatlab.errors import TopologyError
from flatlab.theory.bounds import bound
from flatlab.theory.spectral import spectral
from flatlab.topology import make

__all__ = ["spectral_gap_study", "DEFAULT_TOPOLOGIES", "DEFAULT_SIZES"]

DEFAULT_TOPOLOGIES = ("ring", "torus", "hypercube", "exponential", "one-peer-exponential",
                      "random-regular", "erdos-renyi", "star", "complete")
DEFAULT_SIZES = tuple(2**k for k in range(3, 11))


def spectral_gap_study(
    topologies: Sequence[str] = DEFAULT_TOPOLOGIES,
    sizes: Sequence[int] = DEFAULT_SIZES,
    algorithms: Sequence[str] = ("dsgd", "gradient-tracking"),
    *,
    L: float = 1.0,
    sigma2: float = 1.0,
    zeta2: float = 1.0,
    F0: float = 1.0,
    seed: int = 0,
) -> pd.DataFrame:
    """Spectral gap and transient iterations against ``n``.

    Returns:
        DataFrame with columns ``topology, n, period, rho, spectral_gap, p, algorithm,
        transient_iterations``.
    """
    rows = []
    for name in topologies:
        for n in sizes:
            try:
                topo = make(name, n, seed=seed)
            except TopologyError:
                continue
            s = spectral(topo)
            for algo in algorithms:
                b = bound(algo, topology=s, L=L, sigma2=sigma2, zeta2=zeta2, F0=F0, T=1)
                rows.append({"topology": name, "n": n, "period": s.period, "rho": s.rho,
                             "spectral_gap": s.spectral_gap, "p": s.p, "algorithm": algo,
                             "transient_iterations": b.transient_iterations})
    return pd.DataFrame(rows)
