"""The stationary disagreement under late messages, against runs of the delayed mixer.

``stationary_disagreement_under_delays`` solves the augmented second-moment map; here it meets
(1) the delay-free theory in the limit of no late message, to rounding, and (2) a Monte-Carlo
of the recursion run through :class:`flatlab.comm.DelayedMixer` itself (256 independent
coordinates, 5,500 measured steps), inside 4 batch-means standard errors and 1%.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flatlab.comm import DelayedMixer
from flatlab.errors import TheoryError
from flatlab.theory import stationary_disagreement
from flatlab.theory.faults import stationary_disagreement_under_delays
from flatlab.topology import make
from flatlab.topology.faults import LinkFailures, MessageDelays

RING = make("ring", 6)


@pytest.mark.parametrize("form", ["diffusion", "consensus"])
def test_no_late_message_is_the_delay_free_theory(form):
    got = stationary_disagreement_under_delays(RING, MessageDelays(6, 1, p=1e-12), 0.1,
                                               [2.0, 0.5], [1.0, 0.3], form=form)
    want = stationary_disagreement(0.1, [2.0, 0.5], [1.0, 0.3], topology=RING, form=form)
    assert got.consensus_distance == pytest.approx(want.consensus_distance, rel=1e-9)
    assert got.curvature_disagreement == pytest.approx(want.curvature_disagreement, rel=1e-9)


def simulate(form: str, late: MessageDelays, lr: float, h: float, s: float,
             steps: int = 6000, burn: int = 500, columns: int = 256) -> np.ndarray:
    mixer = DelayedMixer(RING, late, device="cpu", dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    X = torch.zeros(6, columns, dtype=torch.float64)  # noqa: N806
    out = []
    for t in range(steps):
        g = h * X + s ** 0.5 * torch.randn(6, columns, generator=gen, dtype=torch.float64)
        X = mixer.mix(X - lr * g, t) if form == "diffusion" else mixer.mix(X, t) - lr * g  # noqa: N806
        if t >= burn:
            out.append(float(((X - X.mean(0)) ** 2).sum(0).mean()) / 6)
    return np.asarray(out)


@pytest.mark.parametrize("form", ["diffusion", "consensus"])
def test_the_prediction_is_what_the_delayed_mixer_does(form):
    late = MessageDelays(6, tau=2, p=0.5, seed=3)
    pred = stationary_disagreement_under_delays(RING, late, 0.1, 2.0, 1.0, form=form)
    xi2 = simulate(form, late, 0.1, 2.0, 1.0)
    batches = xi2.reshape(-1, 500).mean(axis=1)
    se = batches.std(ddof=1) / np.sqrt(len(batches))
    assert abs(xi2.mean() - pred.consensus_distance) < 4 * se
    assert xi2.mean() == pytest.approx(pred.consensus_distance, rel=0.01)
    # and the delays change it measurably: late values let the nodes drift further apart
    free = stationary_disagreement(0.1, 2.0, 1.0, topology=RING, form=form)
    assert pred.consensus_distance > free.consensus_distance + 20 * se
    assert 0 < pred.contraction < 1 and pred.tau == 2 and pred.p == 0.5


def test_what_the_map_does_not_cover_is_refused_in_one_line():
    late = MessageDelays(6, tau=2, seed=0)
    with pytest.raises(TheoryError, match="form 'diffusion-cta' is not derived"):
        stationary_disagreement_under_delays(RING, late, 0.1, 1.0, 1.0, form="diffusion-cta")
    with pytest.raises(TheoryError, match="static, doubly stochastic"):
        stationary_disagreement_under_delays(LinkFailures(RING, p=0.2).topology(4), late, 0.1,
                                             1.0, 1.0)
    with pytest.raises(TheoryError, match="over the topology's 6 nodes"):
        stationary_disagreement_under_delays(RING, MessageDelays(4, tau=1), 0.1, 1.0, 1.0)
    with pytest.raises(TheoryError, match="curvature must be numbers > 0"):
        stationary_disagreement_under_delays(RING, late, 0.1, 0.0, 1.0)
    with pytest.raises(TheoryError, match=r"n\(tau \+ 1\) <= 256 \(got 64 nodes, tau = 4\)"):
        stationary_disagreement_under_delays(make("ring", 64), MessageDelays(64, tau=4), 0.1,
                                             1.0, 1.0)
    with pytest.raises(TheoryError, match="no stationary regime"):
        stationary_disagreement_under_delays(RING, late, 1.5, 2.0, 1.0, form="consensus")
