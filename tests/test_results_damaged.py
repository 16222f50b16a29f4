"""A damaged run in a sweep: the others are still listed, the damaged one is named in one line.

One real sweep of three tiny runs (``seed=0,1,2``, six steps each) is trained once per module;
each test damages a copy of it. ``flatlab results`` and ``flatlab plot`` over the sweep show the
readable runs, print one line on stderr per run left out (its file and what is wrong) and exit
with status 1; a run directory given directly that cannot be read is refused, status 2.
"""

from __future__ import annotations

import shutil
import warnings
from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import yaml  # noqa: E402

import flatlab.results  # noqa: E402
from flatlab.cli import main  # noqa: E402
from flatlab.errors import RunDirError, UnreadableRunWarning  # noqa: E402

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


def cli(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _truncate(p: Path) -> None:
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


#: Damage done to ``seed=1/status.json``, and what the line about it must say.
STATUS_DAMAGE: dict[str, tuple[Callable[[Path], None], str]] = {
    "truncated": (_truncate, r"is not valid JSON: it stops before the JSON ends \(truncated\?\)"),
    "empty": (lambda p: p.write_text(""), r"is not valid JSON: the file is empty \(truncated\?\)"),
    "garbage": (lambda p: p.write_text("garbage\n"), r"is not valid JSON: Expecting value"),
    "a-list": (lambda p: p.write_text("[1, 2]"), r"must hold a JSON object \(got a list\)"),
    "missing-keys": (lambda p: p.write_text('{"name": "seed=1"}'),
                     "has no 'status' and no 'step' field"),
    "missing-step": (lambda p: p.write_text('{"status": "done"}'), "has no 'step' field"),
    "unknown-status": (lambda p: p.write_text('{"status": "great", "step": 6}'),
                       "status 'great' is unknown"),
    "not-text": (lambda p: p.write_bytes(b"\xff\xfe\x00{"), r"is not text \(not UTF-8\)"),
    "a-folder": (lambda p: (p.unlink(), p.mkdir()), "is not a file"),
}


def _line_about(err: str, command: str, run: str, match: str) -> None:
    """``err`` is one line naming ``run``'s status file and what is wrong with it."""
    import re

    assert err.count("\n") == 1, err
    assert err.startswith(f"flatlab {command}: left out run {run}: "), err
    assert f"{run}/status.json" in err and re.search(match, err), err
    assert "Traceback" not in err


def _shown(out: str, intact: pd.DataFrame, runs: tuple[str, ...]) -> None:
    """The table printed holds exactly ``runs``, each with its own last test accuracy."""
    lines = {ln.split()[0]: ln for ln in out.splitlines()[1:]}
    assert set(lines) == set(runs), out
    assert "test_accuracy" in out.splitlines()[0]
    for r in runs:
        assert f"{intact.loc[r, 'test_accuracy']:.4g}" in lines[r].split(), lines[r]


@pytest.mark.parametrize("damage", list(STATUS_DAMAGE), ids=list(STATUS_DAMAGE))
def test_results_lists_the_others_and_names_the_damaged_run(damage, sweep, trained, capsys):
    spoil, match = STATUS_DAMAGE[damage]
    spoil(sweep / "seed=1" / "status.json")
    code, out, err = cli(capsys, "results", sweep, "--csv", sweep.parent / "t.csv")
    assert code == 1, (out, err)
    _shown(out, trained[1], ("seed=0", "seed=2"))
    _line_about(err, "results", "seed=1", match)
    # the CSV holds the readable runs, with the values they had before the damage
    csv = pd.read_csv(sweep.parent / "t.csv").set_index("run")
    assert list(csv.index) == ["seed=0", "seed=2"]
    intact = trained[1].loc[["seed=0", "seed=2"], csv.columns]
    pd.testing.assert_frame_equal(csv, intact, check_dtype=False, check_exact=False)


def test_a_permission_denied_status_is_named(sweep, trained, capsys):
    p = sweep / "seed=1" / "status.json"
    p.chmod(0)
    try:
        try:
            p.read_bytes()
        except PermissionError:
            pass
        else:
            pytest.skip("this user reads files without read permission (root)")
        code, out, err = cli(capsys, "results", sweep)
    finally:
        p.chmod(0o644)
    assert code == 1
    _shown(out, trained[1], ("seed=0", "seed=2"))
    _line_about(err, "results", "seed=1", "cannot be read: Permission denied")


def test_plot_draws_the_others_and_names_the_damaged_run(sweep, capsys):
    _truncate(sweep / "seed=2" / "status.json")
    code, out, err = cli(capsys, "plot", sweep, "--metric", "test_accuracy", "--hue", "seed")
    assert code == 1, err
    assert out == f"wrote {sweep / 'curves.png'}\n"
    assert (sweep / "curves.png").stat().st_size > 5000
    _line_about(err, "plot", "seed=2", r"truncated\?")


def test_every_damaged_run_has_its_line(sweep, trained, capsys):
    (sweep / "seed=0" / "status.json").write_text("[]")
    _truncate(sweep / "seed=2" / "status.json")
    code, out, err = cli(capsys, "results", sweep)
    assert code == 1
    _shown(out, trained[1], ("seed=1",))
    first, second = err.splitlines()
    _line_about(first + "\n", "results", "seed=0", "must hold a JSON object")
    _line_about(second + "\n", "results", "seed=2", r"truncated\?")


def test_a_sweep_with_no_readable_run_names_them_all(sweep, capsys):
    for r in RUNS:
        (sweep / r / "status.json").write_text("{")
    code, out, err = cli(capsys, "results", sweep, "--csv", sweep.parent / "t.csv")
    assert code == 1 and out == ""
    assert [ln.split(": ")[1] for ln in err.splitlines()] == [f"left out run {r}" for r in RUNS]
    assert not (sweep.parent / "t.csv").exists()
    code, out, err = cli(capsys, "plot", sweep)
    assert code == 1 and out == "" and err.count("\n") == 3
    assert not (sweep / "curves.png").exists()
    table, left_out = flatlab.results.summary_readable(sweep)
    assert table is None and [u.run for u in left_out] == list(RUNS)
    with pytest.raises(RunDirError, match="none of the 3 runs under .* can be read; the first: "
                                          "status file .*seed=0/status.json"):
        flatlab.results.summary(sweep)


def test_other_damaged_files_of_a_run_are_named_too(sweep, trained, capsys):
    """A config.yaml that would run code, and a damaged metrics table, leave their run out.

    The summary of ``results`` does not read ``config.yaml``; the curves of ``plot`` do.
    """
    marker = sweep.parent / "marker"
    (sweep / "seed=0" / "config.yaml").write_text(
        f"seed: !!python/object/apply:os.system ['touch {marker}']\n")
    (sweep / "seed=2" / "metrics.parquet").write_bytes(b"PAR1 not really")
    code, out, err = cli(capsys, "results", sweep)
    assert code == 1
    _shown(out, trained[1], ("seed=0", "seed=1"))
    assert err.count("\n") == 1 and err.startswith("flatlab results: left out run seed=2: "
                                                   "metrics file ")
    assert "seed=2/metrics.parquet cannot be read" in err
    code, out, err = cli(capsys, "plot", sweep, "--hue", "seed")
    assert code == 1 and out.startswith("wrote ")
    first, second = err.splitlines()
    assert first.startswith("flatlab plot: left out run seed=0: run config ")
    assert "seed=0/config.yaml" in first and "is not allowed" in first
    assert second.startswith("flatlab plot: left out run seed=2: metrics file ")
    assert not marker.exists(), "a file read from disk ran code"


@pytest.mark.parametrize("damage", ["truncated", "a-list", "missing-keys"])
def test_a_damaged_run_given_directly_is_refused_with_exit_2(damage, sweep, capsys):
    spoil, match = STATUS_DAMAGE[damage]
    spoil(sweep / "seed=1" / "status.json")
    for command in ("results", "plot"):
        code, out, err = cli(capsys, command, sweep / "seed=1")
        assert code == 2 and out == "", (out, err)
        assert err.startswith(f"flatlab {command}: error: status file ") and err.count("\n") == 1
        assert "seed=1/status.json" in err and "--restart" in err
    assert not (sweep / "seed=1" / "curves.png").exists()


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


def test_an_intact_sweep_reads_as_before(sweep, trained, capsys):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        table, left_out = flatlab.results.summary_readable(sweep)
        s = flatlab.results.summary(sweep, strict=True)
    assert left_out == []
    pd.testing.assert_frame_equal(table, s)
    code, out, err = cli(capsys, "results", sweep)
    assert code == 0 and err == ""
    _shown(out, trained[1], RUNS)


def test_the_help_states_the_exit_status(capsys):
    for command in ("results", "plot"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        out = " ".join(capsys.readouterr().out.split())
        assert "left out" in out and "exit status is 1" in out and "exit status 2" in out

