"""The hooks' contract: what each reads and writes of the run's record, and the order it forces.

The runner's order (flatlab.experiment.hooks) was an unwritten contract; each hook now declares
the record fields it ``reads``, ``writes`` and ``reads_before``, and ``check_order`` refuses an
order that breaks them. The runner checks its own list; here, that list passes, the orders that
would break a run are refused in one line, and the declarations hold in a real run (a hook that
reads a field sees this step's value).
"""

from __future__ import annotations

import pytest

from flatlab.errors import FlatlabError
from flatlab.experiment import Hook, load_config, run
from flatlab.experiment import hooks as H
from flatlab.experiment.tensorboard import TensorBoardLog

CFG = {"name": "order", "data": {"name": "digits", "partition": "iid", "batch_size": 8},
       "model": {"name": "logistic"}, "topology": {"name": "ring", "nodes": 4},
       "optim": {"lr": 0.1}, "train": {"steps": 6},
       "measure": {"every": 3, "train_subset": 100, "test_subset": 100, "metrics": ["loss"]},
       "clock": {"compute": 0.05}, "checkpoint_every": 3, "device": "cpu"}


def named(*classes: type) -> list[Hook]:
    """Hooks of these classes with their declarations, not their machinery."""
    return [object.__new__(c) for c in classes]


RUNNER = (H.Terminate, H.BatchLoss, H.Divergence, H.Measuring, H.Clock, H.Progress,
          H.StopAfter, TensorBoardLog, H.Checkpointing, H.StatusFile)


def test_the_runners_order_keeps_every_declaration():
    H.check_order(named(*RUNNER))


@pytest.mark.parametrize("order,match", [
    ((H.Measuring, H.BatchLoss), "Measuring reads the record's loss_acc before BatchLoss"),
    ((H.Checkpointing, H.Clock), "Checkpointing reads the record's clock_s before Clock"),
    ((H.Clock, H.Measuring), "Measuring reads the record's rows as it was before this step"),
    ((H.StatusFile, H.Checkpointing), "StatusFile reads the record's checkpoint_s"),
    ((TensorBoardLog, H.Measuring), "TensorBoardLog reads the record's measure_s"),
])
def test_an_order_that_breaks_a_declaration_is_refused_in_one_line(order, match):
    with pytest.raises(FlatlabError, match=match) as e:
        H.check_order(named(*order))
    assert "\n" not in str(e.value)


class Spy(Hook):
    """A caller's hook (placed before Checkpointing) that reads what Measuring wrote."""

    reads = frozenset({"rows", "loss_acc"})

    def __init__(self) -> None:
        self.seen: list[tuple[int, bool, float]] = []

    def bind(self, built, record) -> None:
        self.record = record

    def on_step(self, loop) -> None:
        rows = [r for r in self.record.rows if r[0] == loop.step and r[2] == "batch_loss"]
        self.seen.append((loop.step, bool(rows), self.record.loss_acc[1]))


def test_the_declarations_hold_in_a_run(tmp_path):
    spy = Spy()
    run(load_config(CFG), tmp_path / "r", progress=False, hooks=[spy])
    for step, measured, pending in spy.seen:
        if step % 3 == 0:  # Measuring ran before: this step's rows, the batch losses consumed
            assert measured and pending == 0, step
        else:               # BatchLoss ran before: this step's loss is counted
            assert not measured and pending == step % 3, step


def test_a_callers_hook_that_needs_to_run_first_is_refused_before_training(tmp_path):
    class Early(Hook):
        reads_before = frozenset({"rows"})  # wants the record before Measuring fills it

    with pytest.raises(FlatlabError, match="Early reads the record's rows as it was before"):
        run(load_config(CFG), tmp_path / "r", progress=False, hooks=[Early()])
    assert not (tmp_path / "r" / "status.json").exists()
