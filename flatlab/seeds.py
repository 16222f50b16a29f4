"""Every random stream of a run, derived from one seed (``numpy.random.SeedSequence``).

A stream is named, and keyed by what it depends on (a node's global id, a step, an epoch)::

    seed_for(seed, "init", i)            node i's initial model (init: different)
    seed_for(seed, "sampler", epoch)     the minibatch order of an epoch
    seed_for(seed, "eval_subset")        the fixed evaluation subsets (data.seed)
    seed_for(seed, "curvature_subset")   the curvature subset's shuffle (data.seed)
    seed_for(seed, "compressor", t)      a random compressor's draw at step t
    seed_for(seed, "kfac", t)            NGPD's sampled-Fisher labels at step t
    seed_for(seed, "probes", r)          the r-th probe (or start vector) of an estimator
    seed_for(seed, "process", rank)      a process's torch generator (dropout)
    seed_for(seed, "noise", t)           gradient noise of a written-down objective at step t
    seed_for(seed, "restart", j)         Lanczos's j-th restart vector after a breakdown
    seed_for(seed, "faults", t)          which links are down in round t
    seed_for(seed, "stragglers", t)      which nodes miss step t's gradient
    seed_for(seed, "clock", t)           the nodes' simulated compute times at step t
    seed_for(seed, "staleness", t)       which nodes' gradients are late at step t, and by how much
    seed_for(seed, "sharpness")          a sharpness estimator's random start or draws
    seed_for(seed, "landscape", k)       the k-th filter-normalized direction of a landscape
    seed_for(seed, "delays", t)          which messages of round t arrive late, and by how much

``SeedSequence([seed, stream, *keys])`` hashes the whole key, so different streams, steps, nodes
and run seeds never share a random state. Adding numbers did: with ``seed + i`` node ``i + 1``
of run seed ``s`` started from the model of node ``i`` of seed ``s + 1``. A node's stream
depends on its global id only, so it is the same however the nodes are split over processes
(the ``process`` stream, which drives dropout, is per process by nature).

The data layer's functions take a plain ``seed``, as networkx's generators do, and a run hands
each its ``data.seed``: the data set's generator and the partition draw from it directly, label
noise and the held-out split from keys derived from it. For a synthetic data set (numpy's
``default_rng`` in both) the generator and the partition thus start from one random state; they
are kept so because naming these two streams would change every recorded run's data, the
studies' committed tables included. A new data stream takes a name here.

This module needs no torch (only :mod:`flatlab.errors`).
"""

from __future__ import annotations

import numpy as np

from flatlab.errors import FlatlabError

__all__ = ["STREAMS", "seed_for", "derive"]

#: The named streams and their keys in the seed sequence (never renumber: it changes results).
STREAMS = {"init": 1, "sampler": 2, "eval_subset": 3, "curvature_subset": 4, "compressor": 5,
           "kfac": 6, "probes": 7, "process": 8, "noise": 9, "restart": 10, "faults": 11,
           "stragglers": 12, "clock": 13, "staleness": 14, "sharpness": 15, "landscape": 16,
           "delays": 17}


def seed_for(seed: int, stream: str, *keys: int) -> int:
    """The seed of ``stream`` under the run seed ``seed``, keyed by ``keys``.

    Args:
        seed: The run's (or data set's, or estimator's) seed, an integer >= 0.
        stream: A name of :data:`STREAMS`.
        *keys: Integers >= 0 the stream depends on (a node id, a step).

    Returns:
        An integer in ``[0, 2**63)``, for ``torch.Generator.manual_seed`` or
        ``numpy.random.default_rng``.

    Raises:
        FlatlabError: An unknown stream, or a negative or non-integer seed or key.

    Examples:
        >>> seed_for(0, "init", 1) == seed_for(0, "init", 1)
        True
        >>> seed_for(0, "init", 1) != seed_for(1, "init", 0)
        True
    """
    if stream not in STREAMS:  # a typo must not silently alias another stream
        raise FlatlabError(f"random stream {stream!r} is unknown; accepted: "
                         f"{', '.join(STREAMS)}")
    return derive(seed, STREAMS[stream], *keys)


def derive(*keys: int) -> int:
    """A 63-bit seed that depends on every key: ``SeedSequence(keys)``, two words combined.

    The primitive under :func:`seed_for`; the data generators use it directly with their own
    fixed keys (``derive(seed, 31337)``), which keeps the generated data sets as they were.

    Raises:
        FlatlabError: A negative or non-integer key.
    """
    for k in keys:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0:
            raise FlatlabError(f"a seed and its keys must be integers >= 0, got {k!r}")
    state = np.random.SeedSequence([int(k) for k in keys]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])
