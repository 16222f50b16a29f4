"""Random streams (flatlab.seeds): named, keyed, never shared, independent of the process split.

- Streams of different names, keys or run seeds differ; in particular node ``i + 1`` of run seed
  ``s`` no longer starts from the model of node ``i`` of seed ``s + 1`` (what ``seed + i`` did).
- A node's initial model depends on its global id only: the rows ``2..3`` of a 4-node stack equal
  a 2-node stack that starts at node 2 (a process's rows of a distributed run), bit for bit.
- Bad stream names and keys are refused.
"""

import itertools

import pytest
import torch

from flatlab import models
from flatlab.engine import NodeStack
from flatlab.errors import FlatlabError
from flatlab.seeds import STREAMS, derive, seed_for


def test_streams_never_share_a_seed():
    seen = {}
    for stream, seed, key in itertools.product(STREAMS, range(6), range(6)):
        v = seed_for(seed, stream, key)
        assert 0 <= v < 2**63
        assert v not in seen, (stream, seed, key, seen.get(v))
        seen[v] = (stream, seed, key)
    # the collision of adding numbers is gone
    assert seed_for(0, "init", 1) != seed_for(1, "init", 0)


def test_a_stream_is_a_pure_function_of_its_key():
    assert seed_for(7, "sampler", 3) == seed_for(7, "sampler", 3) == derive(7, STREAMS["sampler"],
                                                                             3)


def _stack(n, first_node=0):
    def model(seed):
        return models.make("mlp", input_shape=(8,), num_classes=3, seed=seed, hidden=[5])

    return NodeStack(model(0), n, init="different", reinit=model, seed=11, first_node=first_node,
                     dtype=torch.float64)


def test_a_node_starts_from_its_own_model_however_nodes_are_split():
    whole = _stack(4).initial_params()
    assert torch.equal(_stack(2, first_node=2).initial_params(), whole[2:])
    assert torch.equal(_stack(1, first_node=1).initial_params(), whole[1:2])
    assert len({tuple(r.tolist()) for r in whole}) == 4


@pytest.mark.parametrize("call, needle", [
    (lambda: seed_for(0, "inits", 1), "random stream 'inits' is unknown; accepted: init,"),
    (lambda: seed_for(-1, "init"), "integers >= 0"),
    (lambda: seed_for(0, "init", 1.5), "integers >= 0"),
    (lambda: seed_for(0, "init", True), "integers >= 0"),
])
def test_bad_streams_and_keys_are_refused(call, needle):
    with pytest.raises(FlatlabError, match=needle):
        call()
