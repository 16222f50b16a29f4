"""A damaged run in a sweep: the others are still listed, the damaged one is named in one line.

One real sweep of three tiny runs (``seed=0,1,2``, six steps each) is trained once per module;
each test damages a copy of it.
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import pandas as pd
import pytest
import yaml

import flatlab.results
from flatlab.cli import main
from flatlab.errors import RunDirError, UnreadableRunWarning

REPO = Path(__file__).resolve().parents[1]
TINY = ["data.name=digits", "model.name=logistic", "topology.nodes=4", "train.steps=6",
        "measure.every=3", "measure.train_subset=100", "device=cpu"]
RUNS = ("seed=0", "seed=1", "seed=2")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished sweep of three runs, and its summary read while every run was intact."""
    base = tmp_path_factory.mktemp("sweep")
    spec = {"base": str(REPO / "configs" / "ring16.yaml"), "out": str(base / "sw"),
            "grid": {"seed": [0, 1, 2]}}
    (base / "s.yaml").write_text(yaml.safe_dump(spec))
    assert main(["sweep", str(base / "s.yaml"), *TINY, "--no-progress"]) == 0
    intact = flatlab.results.summary(base / "sw").set_index("run")
    assert list(intact.index) == list(RUNS) and set(intact.status) == {"done"}
    return base / "sw", intact


@pytest.fixture
def sweep(trained, tmp_path):
    """A fresh copy of the sweep (``sw/seed=0`` ...) in this test's folder."""
    shutil.copytree(trained[0], tmp_path / "sw")
    return tmp_path / "sw"


def test_the_library_leaves_the_damaged_run_out_with_a_warning(sweep, trained):
    (sweep / "seed=1" / "status.json").write_text('{"step": 6}')
    with pytest.warns(UnreadableRunWarning) as caught:
        s = flatlab.results.summary(sweep)
    assert [str(w.message) for w in caught] == [
        f"run seed=1 left out: status file {sweep / 'seed=1' / 'status.json'} has no 'status' "
        "field (a flatlab status holds both); start over with --restart (run(..., "
        "resume=False)) or delete the directory"]
    pd.testing.assert_frame_equal(s.set_index("run"), trained[1].loc[["seed=0", "seed=2"]])
    with pytest.warns(UnreadableRunWarning, match="run seed=1 left out"):
        df = flatlab.results.load(sweep)
    assert set(df.run) == {"seed=0", "seed=2"} and set(df.seed) == {0, 2}
    # strict: the first damaged run is the error, as it was before
    for read in (flatlab.results.summary, flatlab.results.load):
        with pytest.raises(RunDirError, match="seed=1/status.json has no 'status' field"):
            read(sweep, strict=True)
    # the readouts: the table of the readable runs, and the runs left out, without a warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        table, left_out = flatlab.results.summary_readable(sweep)
        frame, left_out_too = flatlab.results.load_readable(sweep)
    assert list(table.run) == ["seed=0", "seed=2"] and set(frame.run) == {"seed=0", "seed=2"}
    assert left_out == left_out_too and [u.run for u in left_out] == ["seed=1"]
    assert "has no 'status' field" in left_out[0].message


def test_a_sweep_with_no_readable_run_is_an_error(sweep):
    for r in RUNS:
        (sweep / r / "status.json").write_text("{")
    table, left_out = flatlab.results.summary_readable(sweep)
    assert table is None and [u.run for u in left_out] == list(RUNS)
    with pytest.raises(RunDirError, match="none of the 3 runs under .* can be read; the first: "
                                          "status file .*seed=0/status.json"):
        flatlab.results.summary(sweep)
