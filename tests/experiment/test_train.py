"""The training loop (flatlab.experiment.loop.train) against a plain loop, and its hook contract.

- With no hooks, ``train`` is exactly ``state = algo.step(state, batch(t), oracle, mixer, lr(t))``
  for t = start..total-1 (float64, bit for bit), and ``Loop.loss`` is the mean batch loss.
- A hook's outcome ends the loop at that step; the later hooks of that step are not called;
  ``on_end`` runs on every hook with the outcome, ``on_close`` always (also on an exception).
- The runner's hooks reproduce the runner (tests/experiment/test_golden.py: bit for bit).
"""

import pytest
import torch

from flatlab.errors import FlatlabError
from flatlab.experiment import Hook, Outcome, build, load_config, train
from flatlab.experiment.loop import network_mean

CFG = {"name": "t", "dtype": "float64", "seed": 1,
       "data": {"name": "digits", "partition": "iid", "batch_size": 8},
       "model": {"name": "mlp", "options": {"hidden": [8]}},
       "topology": {"name": "ring", "nodes": 4}, "algorithm": {"name": "dsgdm"},
       "optim": {"lr": 0.1, "schedule": "cosine"}, "train": {"steps": 7},
       "measure": {"every": 7, "train_subset": 50, "test_subset": 50}}


def _start():
    run = build(load_config(CFG))
    torch.manual_seed(0)
    state = run.algorithm.init(run.stack.initial_params(), run.oracle, run.mixer)
    return run, state


class Log(Hook):
    def __init__(self, log, name, stop_at=None):
        self.log, self.name, self.stop_at = log, name, stop_at

    def on_start(self, loop):
        self.log.append((self.name, "start", loop.step))

    def on_step(self, loop):
        self.log.append((self.name, "step", loop.step, loop.loss))
        if loop.step == self.stop_at:
            return Outcome("stopped", loop.step, "enough")
        return None

    def on_end(self, loop, outcome):
        self.log.append((self.name, "end", outcome.status, outcome.step))

    def on_close(self):
        self.log.append((self.name, "close"))


def test_train_is_the_plain_loop_bit_for_bit():
    run, state = _start()
    log = []
    got, outcome = train(run.algorithm, state, run.sampler, run.oracle, run.mixer, run.lr,
                         [Log(log, "a")], total=run.total_steps, start=2)
    run2, want = _start()
    for t in range(2, run.total_steps):
        want = run2.algorithm.step(want, run2.sampler.batch(t), run2.oracle, run2.mixer,
                                   run2.lr(t))
        assert log[t - 1] == ("a", "step", t + 1, float(want.loss.mean()))
    assert outcome == Outcome("done", run.total_steps)
    assert torch.equal(got.x, want.x)
    assert log[0] == ("a", "start", 2) and log[-2:] == [("a", "end", "done", 7), ("a", "close")]


def test_an_outcome_ends_the_loop_and_every_hook_hears_it():
    run, state = _start()
    log = []
    _, outcome = train(run.algorithm, state, run.sampler, run.oracle, run.mixer, run.lr,
                       [Log(log, "a", stop_at=3), Log(log, "b")], total=run.total_steps)
    assert outcome == Outcome("stopped", 3, "enough")
    steps = [e for e in log if e[1] == "step"]
    assert [(e[0], e[2]) for e in steps] == [("a", 1), ("b", 1), ("a", 2), ("b", 2), ("a", 3)]
    assert log[-4:] == [("a", "end", "stopped", 3), ("b", "end", "stopped", 3), ("a", "close"),
                        ("b", "close")]


def test_hooks_are_closed_on_an_exception():
    run, state = _start()
    log = []

    class Boom(Hook):
        def on_step(self, loop):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        train(run.algorithm, state, run.sampler, run.oracle, run.mixer, run.lr,
              [Log(log, "a"), Boom()], total=run.total_steps)
    assert log[-1] == ("a", "close") and not any(e[1] == "end" for e in log)


def test_an_unknown_outcome_or_a_wrong_return_is_refused():
    run, state = _start()
    with pytest.raises(FlatlabError, match="outcome 'finished' is unknown; accepted: done"):
        Outcome("finished", 0)

    class Odd(Hook):
        def on_start(self, loop):
            return "stop"

    with pytest.raises(FlatlabError, match="hook Odd returned a str; accepted: None or an"):
        train(run.algorithm, state, run.sampler, run.oracle, run.mixer, run.lr, [Odd()],
              total=run.total_steps)


def test_a_constant_step_size_is_accepted():
    run, state = _start()
    got, _ = train(run.algorithm, state, run.sampler, run.oracle, run.mixer, 0.05, total=3)
    run2, want = _start()
    for t in range(3):
        want = run2.algorithm.step(want, run2.sampler.batch(t), run2.oracle, run2.mixer, 0.05)
    assert torch.equal(got.x, want.x)


def test_network_mean_of_one_process_is_the_mean():
    v = torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64)
    assert network_mean(v, None) == pytest.approx(7 / 3, rel=0, abs=1e-15)


def test_a_hook_given_to_a_run_is_bound_and_may_end_it_early_with_its_results(tmp_path):
    from flatlab.experiment import read_status, run
    from flatlab.experiment.rundir import load_checkpoint

    class EndAt(Hook):
        def bind(self, built, record):
            self.record = record

        def on_step(self, loop):
            if loop.step == 5:
                return Outcome("done", 5, "enough")
            return None

    hook = EndAt()
    cfg = dict(CFG, checkpoint_every=100)
    res = run(cfg, tmp_path / "r", progress=False, hooks=[hook])
    assert (res.status, res.step, res.message) == ("done", 5, "enough")
    st = read_status(tmp_path / "r")
    assert (st["status"], st["step"]) == ("done", 5)
    ck = load_checkpoint(tmp_path / "r" / "checkpoint.pt")
    assert ck.step == 5 and {r[0] for r in ck.metrics} == {0, 5}
    assert hook.record.rows == ck.metrics  # the hook saw what was recorded


def test_a_run_refuses_what_is_not_a_hook_before_writing(tmp_path):
    from flatlab.experiment import run

    with pytest.raises(FlatlabError, match="hooks: a builtin_function_or_method is not a "
                                           "flatlab.experiment.Hook"):
        run(CFG, tmp_path / "r", progress=False, hooks=[print])
    assert not (tmp_path / "r").exists()


def test_a_hook_ending_a_run_at_a_checkpoint_step_keeps_that_checkpoint(tmp_path):
    from flatlab.experiment import read_status, run
    from flatlab.experiment.rundir import load_checkpoint

    class EndAt(Hook):
        def on_step(self, loop):
            return Outcome("done", 4) if loop.step == 4 else None

    res = run(dict(CFG, checkpoint_every=2), tmp_path / "r", progress=False, hooks=[EndAt()])
    assert (res.status, res.step) == ("done", 4)
    assert read_status(tmp_path / "r")["step"] == 4
    ck = load_checkpoint(tmp_path / "r" / "checkpoint.pt")
    assert ck.step == 4 and max(r[0] for r in ck.metrics) == 4
