"""What a training step reads back from the device, counted on the CPU.

On a GPU every read of a device value on the host (``float``, ``bool``, ``.item()``,
``.tolist()``, ``.numpy()``, ``.cpu()``) waits until every kernel queued so far has run, and
nothing new is queued meanwhile. The CPU has no queue, but the same calls go through
``__torch_function__``, so a :class:`TorchFunctionMode` counts them here, with the line of
flatlab that made them: a step of every algorithm (through the runner, with its hooks) may read
one thing, the divergence flag, and that one one step late
(:class:`flatlab.experiment.hooks.Divergence`). A new read in a step (an algorithm that
branches on a device value, a hook that prints the loss) fails here before it costs a GPU run
its overlap. The lagged check itself is tested against the immediate one: same rows, the
divergence seen one step later and named at the step it happened.
"""

import collections
import json
import traceback

import pandas as pd
import pytest
import torch
from torch.overrides import TorchFunctionMode

from flatlab.experiment import Hook, build, load_config, run, train
from flatlab.experiment import hooks as H  # noqa: N812

READS = {torch.Tensor.item, torch.Tensor.__float__, torch.Tensor.__bool__, torch.Tensor.__int__,
         torch.Tensor.__index__, torch.Tensor.__format__, torch.Tensor.tolist,
         torch.Tensor.numpy, torch.Tensor.cpu}


class HostReads(TorchFunctionMode):
    """Counts host reads of tensors, by the innermost flatlab line that made them, while on."""

    def __init__(self):
        super().__init__()
        self.on = False
        self.lines = collections.Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if self.on and func in READS:
            here = [f for f in traceback.extract_stack()[:-1] if "/flatlab/" in f.filename
                    and "/tests/" not in f.filename]
            where = f"{here[-1].filename.rsplit('/flatlab/', 1)[-1]}:{here[-1].name}" if here \
                else "?"
            self.lines[where] += 1
        return func(*args, **(kwargs or {}))


class Window(Hook):
    """A run's own hook: counts from the end of step ``first`` to the end of step ``last`` (the
    steps ``first + 1 .. last`` and all their hooks)."""

    def __init__(self, mode, first, last):
        self.mode, self.first, self.last = mode, first, last

    def on_step(self, loop):
        self.mode.on = self.first <= loop.step < self.last


BASE = {"name": "reads", "dtype": "float32", "seed": 0,
        "data": {"name": "digits", "batch_size": 8}, "model": {"name": "mlp"},
        "topology": {"name": "ring", "nodes": 4}, "optim": {"lr": 0.05}, "train": {"steps": 24},
        "measure": {"every": 1000, "metrics": ["loss"]}, "checkpoint_every": 1000}

CASES = {  # algorithm: overrides (every family: gossip, tracking, momentum, compression,
    # push-sum, primal-dual with K-FAC, asynchronous gossip with stale gradients, faults)
    "diffusion": [], "consensus": ["train.stragglers=0.2"], "centralized": [],
    "gradient-tracking": [], "momentum-tracking": [], "qg-dsgdm": [], "decentlam": [],
    "exact-diffusion": ["topology.name=exponential-undirected"],
    "choco": [], "adagossip": [], "sgp": ["topology.name=exponential"],
    "ecl": [], "ngpd": [],
    "ad-psgd": ["topology.faults.model=async_gossip", "train.staleness.tau=2"],
    "dsgdm": ["topology.faults.model=node_churn", "topology.faults.p=0.2"],
}


def test_every_family_is_counted():
    from flatlab.algorithms import available

    assert set(CASES) <= set(available())


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_step_reads_only_the_lagged_divergence_flag(name, tmp_path, monkeypatch):
    monkeypatch.setattr(H, "_waits_for_device", lambda t: True)  # the GPU's path, on the CPU
    cfg = load_config(dict(BASE, algorithm={"name": name}), CASES[name])
    mode = HostReads()
    window = Window(mode, 8, 18)  # ten steps, away from the start, measurements and the end
    with mode:
        assert run(cfg, tmp_path / name, progress=False, hooks=[window]).status == "done"
    assert mode.lines == {"experiment/hooks.py:on_step": 10}, dict(mode.lines)


def metrics(path):
    return pd.read_parquet(path / "metrics.parquet").sort_values(
        ["step", "metric", "scope"]).reset_index(drop=True)


def test_the_lagged_check_sees_a_divergence_one_step_later_and_names_its_step(tmp_path,
                                                                             monkeypatch):
    tiny = dict(BASE, algorithm={"name": "consensus"}, measure={"every": 1000,
                                                               "metrics": ["loss"]})
    cfg = load_config(tiny, ["optim.lr=1e6", "optim.schedule=constant"])
    now = run(cfg, tmp_path / "now", progress=False)
    monkeypatch.setattr(H, "_waits_for_device", lambda t: True)
    late = run(cfg, tmp_path / "late", progress=False)
    assert now.status == late.status == "diverged"
    first = json.loads((tmp_path / "now" / "status.json").read_text())
    second = json.loads((tmp_path / "late" / "status.json").read_text())
    assert late.step == now.step + 1
    assert f"non-finite loss at step {now.step}" in first["message"]
    assert f"non-finite loss at step {now.step}" in second["message"]
    a, b = metrics(tmp_path / "now"), metrics(tmp_path / "late")
    pd.testing.assert_frame_equal(a[a.metric != "diverged"].reset_index(drop=True),
                                  b[b.metric != "diverged"].reset_index(drop=True))
    assert a[a.metric == "diverged"].step.tolist() == [now.step]
    assert b[b.metric == "diverged"].step.tolist() == [late.step]


class Poison(Hook):
    """Makes the batch loss non-finite at one step (before the divergence check sees it)."""

    def __init__(self, at):
        self.at = at

    def on_step(self, loop):
        if loop.step == self.at:
            loop.batch_loss = loop.batch_loss * float("nan")


@pytest.mark.parametrize("lag", [False, True])
@pytest.mark.parametrize("at", [3, 7])
def test_divergence_ends_the_loop_at_the_step_or_one_later_and_at_the_last_step_at_once(lag, at):
    cfg = load_config({"name": "p", "dtype": "float64", "data": {"name": "digits",
                       "batch_size": 8}, "model": {"name": "logistic"},
                       "topology": {"name": "ring", "nodes": 4},
                       "algorithm": {"name": "diffusion"}, "optim": {"lr": 0.1},
                       "train": {"steps": 7}})
    built = build(cfg)
    state = built.algorithm.init(built.stack.initial_params(), built.oracle, built.mixer)
    _, outcome = train(built.algorithm, state, built.sampler, built.oracle, built.mixer,
                       built.lr, [Poison(at), H.Divergence(built.mixer, lag=lag)], total=7)
    assert outcome.status == "diverged"
    assert outcome.step == (at + 1 if lag and at < 7 else at)
    assert outcome.message == f"non-finite loss at step {at}"


def test_the_loss_is_read_once_a_step_and_only_when_asked():
    cfg = load_config(dict(BASE, algorithm={"name": "diffusion"}, train={"steps": 4}))
    built = build(cfg)
    state = built.algorithm.init(built.stack.initial_params(), built.oracle, built.mixer)
    mode, seen = HostReads(), []

    class Reader(Hook):
        def on_step(self, loop):
            mode.on = True
            assert isinstance(loop.batch_loss, torch.Tensor) and loop.batch_loss.dim() == 0
            seen.append((loop.loss, loop.loss))  # the second read is the cached number
            mode.on = False

    with mode:
        train(built.algorithm, state, built.sampler, built.oracle, built.mixer, built.lr,
              [Reader()], total=4)
    assert all(a == b and isinstance(a, float) for a, b in seen) and len(seen) == 4
    assert sum(mode.lines.values()) == 4
