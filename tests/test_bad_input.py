"""Bad input of every kind: one line, exit status 2 (or flatlab's own error class), no traceback,
no file changed and nothing marked done; and nothing read from disk ever runs code.

The table covers the command line (config files, overrides, run folders, sweeps, outputs) and the
Python API. Every command-line case snapshots the whole test folder before it runs and asserts
that not one byte changed: a refused input is refused before anything is written.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import pickle
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import flatlab
from flatlab.cli import main
from flatlab.errors import (
    AlgorithmError,
    ConfigError,
    DataError,
    FlatlabError,
    RunDirError,
    TheoryError,
    TopologyError,
)
from flatlab.experiment import load_config, run, rundir
from flatlab.experiment.sweep import load_sweep, run_sweep

REPO = Path(__file__).resolve().parents[1]
TINY = {"name": "tiny", "data": {"name": "digits"}, "model": {"name": "logistic"},
        "topology": {"name": "ring", "nodes": 4}, "train": {"steps": 6},
        "measure": {"every": 3, "train_subset": 100}, "checkpoint_every": 3, "device": "cpu"}


class Evil:
    """A pickle that writes a marker file when it is loaded (what an attacker would ship)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_the_evil_pickle_really_runs_code_when_unpickled(tmp_path):
    """So that the marker staying absent below means something."""
    pickle.loads(pickle.dumps(Evil(tmp_path / "m")))
    assert (tmp_path / "m").exists()


# ---------------------------------------------------------------------- shared runs
@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A finished run, an unfinished one (checkpoint at step 3) and one of another config."""
    base = tmp_path_factory.mktemp("runs")
    cfg = load_config(TINY)
    run(cfg, base / "done", progress=False)
    run(cfg, base / "part", progress=False, stop_after=4)
    run(load_config(TINY, ["seed=1"]), base / "other", progress=False, stop_after=4)
    (base / "cfg.yaml").write_text(yaml.safe_dump(TINY))
    return base


@pytest.fixture
def lab(runs, tmp_path):
    """A fresh copy of the shared runs in this test's folder, and the config file."""
    for name in ("done", "part", "other"):
        shutil.copytree(runs / name, tmp_path / name)
    shutil.copy(runs / "cfg.yaml", tmp_path / "cfg.yaml")
    return tmp_path


def _tree(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------- case builders
def _ck(d: Path, name: str = "part") -> Path:
    return d / name / "checkpoint.pt"


def _save(obj, path: Path) -> None:
    torch.save(obj, path)


def _evil_checkpoint(d: Path) -> list:
    _save({"step": 3, "state": Evil(d / "marker")}, _ck(d))
    return ["run", d / "cfg.yaml", "--out", d / "part"]


def _evil_init_from(d: Path) -> list:
    _save({"step": 6, "state": {"x": Evil(d / "marker")}}, _ck(d, "done"))
    return ["run", d / "cfg.yaml", f"init_from={d / 'done'}", "--out", d / "new"]


def _evil_yaml(d: Path) -> list:
    (d / "evil.yaml").write_text(f"name: !!python/object/apply:os.system ['touch {d}/marker']\n")
    return ["run", d / "evil.yaml", "--out", d / "new"]


def _evil_npy(d: Path) -> list:
    np.save(d / "w.npy", np.array([Evil(d / "marker")], dtype=object), allow_pickle=True)
    (d / "marker").unlink(missing_ok=True)
    return ["spectral", "--topology", f"matrix:{d / 'w.npy'}"]


def _evil_cifar(d: Path) -> list:
    folder = d / "cifar" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name in flatlab.data.files.CIFAR10_FILES:
        with open(folder / name, "wb") as fh:
            pickle.dump({b"data": Evil(d / "marker"), b"labels": [0]}, fh)
    return ["run", d / "cfg.yaml", "data.name=cifar10", f"data.root={d / 'cifar'}",
            "--out", d / "new"]


def _damaged(content: Callable[[Path], None]) -> Callable[[Path], list]:
    def build(d: Path) -> list:
        content(d)
        return ["run", d / "cfg.yaml", "--out", d / "part"]
    return build


def _truncate(d: Path) -> None:
    raw = _ck(d).read_bytes()
    _ck(d).write_bytes(raw[: len(raw) // 2])


def _edit_checkpoint(edit: Callable[[dict], None]) -> Callable[[Path], None]:
    def change(d: Path) -> None:
        ck = torch.load(_ck(d), weights_only=True)
        edit(ck)
        torch.save(ck, _ck(d))
    return change


def _status(d: Path, text: str, name: str = "part") -> None:
    (d / name / "status.json").write_text(text)


def _cli_out(*argv_tail: str) -> Callable[[Path], list]:
    return lambda d: ["run", d / "cfg.yaml", *argv_tail, "--out", d / "new"]


def _yaml_cfg(text: str) -> Callable[[Path], list]:
    def build(d: Path) -> list:
        (d / "c.yaml").write_text(text)
        return ["run", d / "c.yaml", "--out", d / "new"]
    return build


def _sweep(spec: dict, *extra: str) -> Callable[[Path], list]:
    def build(d: Path) -> list:
        s = {k: (v.replace("@", str(d)) if isinstance(v, str) else v) for k, v in spec.items()}
        (d / "s.yaml").write_text(yaml.safe_dump(s))
        return ["sweep", d / "s.yaml", *extra]
    return build


def _finished_sweep_then_changed(d: Path) -> list:
    spec = {"base": str(d / "cfg.yaml"), "out": str(d / "sw"), "grid": {"seed": [0]}}
    run_sweep(load_sweep(spec), progress=False, verbose=False)
    (d / "s.yaml").write_text(yaml.safe_dump(spec))
    return ["sweep", d / "s.yaml", "optim.lr=0.07", "--no-progress"]


def _alive_elsewhere(d: Path) -> list:
    st = json.loads((d / "part" / "status.json").read_text())
    parent = os.getppid()  # alive for as long as this test
    st.update(pid=parent, host=socket.gethostname(), pid_start=rundir._process_start(parent))
    _status(d, json.dumps(st))
    return ["run", d / "cfg.yaml", "--out", d / "part", "--restart"]


def _corrupt_metrics(cmd: str, *extra: str) -> Callable[[Path], list]:
    def build(d: Path) -> list:
        (d / "done" / "metrics.parquet").write_bytes(b"PAR1 not really")
        return [cmd, d / "done", *extra]
    return build


def _bad_file(name: str, data: bytes | str) -> Callable[[Path], Path]:
    def make(d: Path) -> Path:
        p = d / name
        p.write_bytes(data) if isinstance(data, bytes) else p.write_text(data)
        return p
    return make


def _measure(setting: str) -> Callable[[Path], list]:
    name = setting.split(".")[0]
    return lambda d: ["run", d / "cfg.yaml", f"measure.metrics=[loss,{name}]",
                      f"measure.options.{setting}", "--out", d / "new"]


@dataclass
class Case:
    """One bad command line: ``argv(folder)`` builds its files and returns the arguments."""

    id: str
    argv: Callable[[Path], list]
    match: str


CASES = [
    # 1. nothing read from disk runs code
    Case("checkpoint-runs-code", _evil_checkpoint, "objects other than tensors"),
    Case("init-from-runs-code", _evil_init_from, "init_from.*objects other than tensors"),
    Case("yaml-tag-runs-code", _evil_yaml, r"tag !!python/object/apply:os.system is not allowed"),
    Case("npy-matrix-runs-code", _evil_npy, "unpickling"),
    Case("cifar-batch-runs-code", _evil_cifar,
         "names .*open, .*refused: loading it could run code"),
    # 2. damaged or foreign run files
    Case("checkpoint-truncated", _damaged(_truncate), "truncated or not a checkpoint.*--restart"),
    Case("checkpoint-empty", _damaged(lambda d: _ck(d).write_bytes(b"")), "is empty"),
    Case("checkpoint-random-bytes",
         _damaged(lambda d: _ck(d).write_bytes(b"\x13" + np.random.default_rng(0).bytes(4096))),
         "is not a checkpoint file"),
    Case("checkpoint-zip-garbage",
         _damaged(lambda d: _ck(d).write_bytes(b"PK\x03\x04" + bytes(100))),
         "truncated or not a checkpoint"),
    Case("checkpoint-a-list", _damaged(lambda d: _save([1, 2, 3], _ck(d))),
         "holds a list, not a flatlab checkpoint"),
    Case("checkpoint-missing-fields", _damaged(lambda d: _save({"step": 3}, _ck(d))),
         "field 'state' is missing"),
    Case("checkpoint-other-size",
         _damaged(_edit_checkpoint(lambda ck: ck["state"].update(
             x=torch.zeros(8, ck["state"]["x"].shape[1])))),
         r"belongs to another run: state 'x' has shape \(8, .*this run needs \(4, "),
    Case("checkpoint-other-algorithm",
         _damaged(_edit_checkpoint(lambda ck: ck["state"].update(__class__="TrackingState"))),
         "holds a TrackingState state"),
    Case("checkpoint-of-another-config",
         _damaged(lambda d: shutil.copy(_ck(d, "other"), _ck(d))),
         "written by a run with a different config"),
    Case("checkpoint-bad-rng",
         _damaged(_edit_checkpoint(lambda ck: ck.update(rng=[("not a state", None)]))),
         "cannot be restored"),
    Case("status-not-json", _damaged(lambda d: _status(d, "{not json")),
         "status file .* is not valid JSON.*--restart"),
    Case("status-not-an-object", _damaged(lambda d: _status(d, "[1, 2]")),
         "must hold a JSON object"),
    Case("status-unknown", _damaged(lambda d: _status(d, '{"status": "great", "step": 1}')),
         "status 'great' is unknown"),
    Case("status-not-json-in-results",
         lambda d: (_status(d, "garbage", "done"), ["results", d / "done"])[1],
         "status file .* not valid JSON"),
    Case("status-truncated-in-results",
         lambda d: (_status(d, '{"status": "done", "st', "done"), ["results", d / "done"])[1],
         r"status file .*done/status.json is not valid JSON: it stops before the JSON ends "
         r"\(truncated\?\)"),
    Case("status-empty-in-plot", lambda d: (_status(d, "", "done"), ["plot", d / "done"])[1],
         r"status file .* is not valid JSON: the file is empty \(truncated\?\)"),
    Case("status-a-list-in-results",
         lambda d: (_status(d, "[1, 2]", "done"), ["results", d / "done"])[1],
         r"must hold a JSON object \(got a list\)"),
    Case("status-without-fields-in-results",
         lambda d: (_status(d, '{"name": "done"}', "done"), ["results", d / "done"])[1],
         "status file .* has no 'status' and no 'step' field"),
    Case("run-config-malformed",
         _damaged(lambda d: (d / "part" / "config.yaml").write_text("a: [1,\n")),
         "run config .* is not valid YAML"),
    Case("run-config-tagged-in-plot",
         lambda d: ((d / "done" / "config.yaml").write_text("seed: !!python/name:os.system\n"),
                    ["plot", d / "done"])[1], "tag .* not allowed"),
    Case("metrics-corrupt-results", _corrupt_metrics("results"), "metrics file .* damaged"),
    Case("metrics-corrupt-plot", _corrupt_metrics("plot"), "metrics file .* damaged"),
    Case("run-alive-elsewhere", _alive_elsewhere, "is being run by process"),
    # 2. outputs
    Case("run-out-is-a-file", lambda d: ["run", d / "cfg.yaml", "--out", d / "cfg.yaml"],
         "is a file"),
    Case("run-out-under-a-file",
         lambda d: ["run", d / "cfg.yaml", "--out", d / "cfg.yaml" / "x"], "is a file"),
    Case("csv-into-missing-folder",
         lambda d: ["results", d / "done", "--csv", d / "nope" / "t.csv"], "does not exist"),
    Case("csv-onto-a-folder", lambda d: ["results", d / "done", "--csv", d / "part"],
         "is a folder"),
    Case("plot-into-missing-folder",
         lambda d: ["plot", d / "done", "--out", d / "nope" / "f.png"], "does not exist"),
    Case("plot-unknown-type", lambda d: ["plot", d / "done", "--out", d / "f.xyz"],
         "unknown file type .xyz"),
    Case("demo-out-is-a-file", lambda d: ["demo", "--out", d / "cfg.yaml"], "is a file"),
    # SLURM's options without --engine slurm (they would be ignored)
    Case("run-nodes-without-slurm",
         lambda d: ["run", d / "cfg.yaml", "--nodes", "2", "--out", d / "new"],
         "--nodes is an option of --engine slurm"),
    Case("run-gpus-without-slurm", lambda d: ["run", d / "cfg.yaml", "--gpus-per-node", "1",
                                              "--out", d / "new"],
         "--gpus-per-node is an option of --engine slurm"),
    Case("sweep-partition-without-slurm",
         _sweep({"base": "@/cfg.yaml", "grid": {"seed": [0]}, "out": "@/sw"}, "--partition", "gpu"),
         "--partition is an option of --engine slurm"),
    # 2. sweeps
    Case("sweep-base-malformed",
         lambda d: (_bad_file("b.yaml", "x: [\n")(d),
                    _sweep({"base": "b.yaml", "grid": {"seed": [0]}, "out": "@/sw"})(d))[1],
         "base: config file .* not valid YAML"),
    Case("sweep-base-missing", _sweep({"base": "none.yaml", "grid": {"seed": [0]}}),
         "base: config file .*none.yaml does not exist"),
    Case("sweep-duplicate-key",
         lambda d: (_bad_file("s.yaml", "grid: {seed: [0]}\ngrid: {seed: [1]}\n")(d),
                    ["sweep", d / "s.yaml"])[1], "key 'grid' is given twice"),
    Case("sweep-grid-repeats", _sweep({"base": "@/cfg.yaml", "grid": {"seed": [0, 0]}}),
         "repeats a value"),
    Case("sweep-name-leaves-runs", _sweep({"name": "..", "base": "@/cfg.yaml"}),
         "sweep field name"),
    Case("sweep-out-is-a-file",
         _sweep({"base": "@/cfg.yaml", "grid": {"seed": [0]}, "out": "@/cfg.yaml"}),
         "is a file"),
    Case("sweep-finished-with-other-settings", _finished_sweep_then_changed,
         "sweep point seed=0: run directory .* different config"),
    # 2-3. values
    Case("momentum-not-a-number",
         _cli_out("algorithm.name=dsgdm", "algorithm.params.momentum=abc"),
         "hyper-parameter momentum = 'abc' is not accepted; accepted: a number"),
    Case("nodes-a-billion-run", _cli_out("topology.nodes=1000000000"),
         "above the limit of 1000000 nodes"),
    Case("nodes-a-billion-spectral",
         lambda d: ["spectral", "--topology", "ring", "--nodes", "1000000000"],
         "above the limit"),
    Case("complete-too-large",
         lambda d: ["spectral", "--topology", "complete", "--nodes", "100000"],
         r"limit of 2048 nodes \(its cost grows as n\^2\)"),
    Case("negative-seed",
         lambda d: ["spectral", "--topology", "erdos-renyi", "--nodes", "8", "--seed", "-1"],
         "seed -1 is not accepted"),
    Case("empty-matrix-file",
         lambda d: ["spectral", "--topology", f"matrix:{_bad_file('w.txt', '')(d)}"],
         "holds no numbers"),
    Case("lr-1e999-in-yaml", _yaml_cfg("optim: {lr: 1e999}\n"), "optim.lr: inf is not a finite"),
    Case("lr-1e999-override", _cli_out("optim.lr=1e999"), "optim.lr: inf is not a finite"),
    Case("lr-inf-override", _cli_out("optim.lr=.inf"), "optim.lr: inf is not a finite"),
    Case("duplicate-key-in-config", _yaml_cfg("seed: 1\noptim: {lr: 0.1}\nseed: 2\n"),
         r"key 'seed' is given twice \(first on line 1\).*line 3"),
    Case("same-override-twice", _cli_out("optim.lr=0.1", "optim.lr=0.2"),
         "override optim.lr is given twice"),
    Case("override-mapping-key-twice",
         _cli_out("measure.options={hessian_top: {k: 1}, hessian_top: {k: 2}}"),
         "override measure.options: key 'hessian_top' is given twice"),
    Case("override-tagged", _cli_out("seed=!!python/name:os.getpid"),
         "override seed: tag !!python/name:os.getpid is not allowed"),
    Case("name-dotdot", _cli_out("name=.."), "config field name"),
    Case("name-with-slash", _cli_out("name=a/b"), "config field name"),
    Case("name-dot", _cli_out("name=."), "config field name"),
    Case("config-is-a-folder", lambda d: ["run", d / "done"], "config file .* is not a file"),
    Case("config-not-utf8", lambda d: ["run", _bad_file("c.yaml", b"\xff\xfe\x00a")(d)],
         "is not text"),
    Case("exponents-nan",
         lambda d: ["bounds", "--algorithm", "momentum-tracking", "--topology", "ring", "--nodes",
                    "8", "--beta", "0.9", "--exponents", "nan,1,1,1"],
         "exponent a1 must be a finite number"),
    Case("bounds-L-nan",
         lambda d: ["bounds", "--algorithm", "dsgd", "--topology", "ring", "--nodes", "8",
                    "--L", "nan"], "L must be a finite number"),
    Case("plot-hue-bogus", lambda d: ["plot", d / "done", "--hue", "bogus"],
         "hue 'bogus' is not a column"),
    # 4. measure settings: refused with the config, before the folder exists
    Case("measure-k-0", _measure("hessian_top.k=0"), r"measure\.options\.hessian_top\.k = 0"),
    Case("measure-tol-negative", _measure("hessian_top.tol=-1"),
         r"measure\.options\.hessian_top\.tol = -1"),
    Case("measure-max-iter-below-k", lambda d: _measure("hessian_top.k=5")(d)[:-2]
         + ["measure.options.hessian_top.max_iter=2", "--out", d / "new"],
         "max_iter = 2 is below k = 5"),
    Case("measure-samples-0", _measure("sharpness_average.samples=0"),
         r"sharpness_average\.samples = 0 is out of range; accepted: an integer >= 2"),
    Case("measure-points-0", _measure("barrier_to_average.points=0"),
         r"barrier_to_average\.points = 0"),
    Case("measure-matvecs-2", _measure("hessian_trace.num_matvecs=2"),
         "hutch.. needs num_matvecs >= 3"),
    Case("measure-runs-0", _measure("spectral_density.num_runs=0"),
         r"spectral_density\.num_runs = 0"),
    Case("measure-span-0", _measure("landscape_1d.span=0"), r"landscape_1d\.span = 0"),
    Case("measure-steps-negative", _measure("sharpness_worst.steps=-1"),
         r"sharpness_worst\.steps = -1"),
    Case("measure-seed-negative", _measure("hessian_top.seed=-1"), r"hessian_top\.seed = -1"),
    Case("measure-rho-a-string", _measure("sharpness_worst.rho=abc"),
         r"sharpness_worst\.rho = 'abc' is invalid"),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_command_line_is_one_line_exit_2_and_changes_nothing(case, lab, capsys, monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "FLATLAB_DATA"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(lab)
    argv = [str(a) for a in case.argv(lab)]
    before = _tree(lab)
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 2, (out, err)
    assert err.count("\n") == 1 and err.startswith("flatlab "), err
    assert "Traceback" not in err and not out
    import re

    assert re.search(case.match, err), err
    assert not (lab / "marker").exists(), "a file read from disk ran code"
    assert _tree(lab) == before, "a refused input changed files"


def test_the_table_is_large_enough():
    assert len(CASES) + len(API_CASES) >= 60


# ---------------------------------------------------------------------- the Python API
def _evil_run_dir(d: Path) -> Path:
    (d / "evil").mkdir()
    torch.save({"x": Evil(d / "marker")}, d / "evil" / "checkpoint.pt")
    return d / "evil"


def _evil_cifar_root(d: Path) -> Path:
    _evil_cifar(d)
    return d / "cifar"


API_CASES = [
    ("spectral-of-a-name", TheoryError, "build it first",
     lambda d: flatlab.theory.spectral("ring")),
    ("spectral-of-none", TheoryError, "expected a Topology",
     lambda d: flatlab.theory.spectral(None)),
    ("consensus-lr-nan", TheoryError, "lr must be a finite number",
     lambda d: flatlab.theory.predicted_consensus_distance(math.nan, rho=0.5)),
    ("consensus-sigma2-inf", TheoryError, "sigma2 must be a finite number",
     lambda d: flatlab.theory.predicted_consensus_distance(0.1, rho=0.5, sigma2=math.inf)),
    ("mixing-time-nan", TheoryError, "rho must be a finite number",
     lambda d: flatlab.theory.mixing_time(math.nan, 0.1)),
    ("make-momentum-string", AlgorithmError, "momentum = 'abc'",
     lambda d: flatlab.algorithms.make("dsgdm", momentum="abc")),
    ("make-momentum-nan", AlgorithmError, "a finite number",
     lambda d: flatlab.algorithms.make("dsgdm", momentum=math.nan)),
    ("ring-a-billion", TopologyError, "above the limit",
     lambda d: flatlab.topology.make("ring", 10**9)),
    ("final-models-runs-code", RunDirError, "objects other than tensors",
     lambda d: flatlab.experiment.final_models(_evil_run_dir(d))),
    ("cifar-runs-code", DataError, "refused",
     lambda d: flatlab.data.load("cifar10", root=_evil_cifar_root(d))),
    ("results-corrupt-metrics", RunDirError, "metrics file",
     lambda d: flatlab.results.load(_corrupt_metrics("results")(d)[1])),
    ("config-lr-string-1e999", ConfigError, "not a finite number",
     lambda d: load_config({"optim": {"lr": "1e999"}})),
    ("config-duplicate-key", ConfigError, "given twice",
     lambda d: load_config(_bad_file("c.yaml", "seed: 1\nseed: 2\n")(d))),
    ("overrides-twice", ConfigError, "given twice",
     lambda d: flatlab.experiment.parse_overrides(["seed=1", "seed=2"])),
    ("measure-k-0", FlatlabError, "k = 0 is out of range",
     lambda d: flatlab.measures.named.resolve("hessian_top", {"k": 0})),
    ("node-stack-too-large", FlatlabError, "the limit here is",
     lambda d: flatlab.engine.stack.check_fits_in_memory(10**9, 10**6, torch.float32,
                                                         torch.device("cpu"))),
    ("hue-bogus", FlatlabError, "hue 'bogus'",
     lambda d: flatlab.plots.training_curves(flatlab.results.load(d / "done"), hue="bogus")),
    ("status-damaged", RunDirError, "not valid JSON",
     lambda d: (_status(d, "{", "done"), flatlab.experiment.read_status(d / "done"))[1]),
]


@pytest.mark.parametrize("error,match,call", [c[1:] for c in API_CASES],
                         ids=[c[0] for c in API_CASES])
def test_bad_python_input_raises_flatlabs_own_one_line_error(error, match, call, lab):
    with pytest.raises(error, match=match) as info:
        call(lab)
    assert isinstance(info.value, FlatlabError)
    assert "\n" not in str(info.value)
    assert not (lab / "marker").exists(), "a file read from disk ran code"


# ---------------------------------------------------------------------- valid input accepted
def test_exponent_numbers_in_yaml_are_numbers(tmp_path):
    """1e-3 is a number in YAML 1.2 (PyYAML's 1.1 reads it as a string): accepted everywhere."""
    (tmp_path / "c.yaml").write_text(
        "optim: {lr: 1e-3}\nmeasure:\n  metrics: [loss, sharpness_worst]\n  options:\n"
        "    sharpness_worst: {rho: 1e-3}\n")
    cfg = load_config(tmp_path / "c.yaml")
    assert cfg.optim.lr == 1e-3
    assert cfg.measure.options["sharpness_worst"]["rho"] == 1e-3
    # merge keys are plain YAML, and a merged key may be overridden
    (tmp_path / "m.yaml").write_text("data: &d {name: digits, seed: 3}\n"
                                     "model: {name: logistic}\n")
    assert load_config(tmp_path / "m.yaml").data.seed == 3


def test_a_refused_measure_setting_leaves_the_folder_free_for_the_corrected_run(lab, capsys):
    argv = ["run", str(lab / "cfg.yaml"), "measure.metrics=[loss,hessian_top]"]
    out = ["--out", str(lab / "m"), "--no-progress"]
    assert main([*argv, "measure.options.hessian_top.k=0", *out]) == 2
    assert not (lab / "m").exists()
    assert main([*argv, "measure.options.hessian_top.k=1", *out]) == 0, capsys.readouterr().err


def test_a_closed_pipe_ends_silently(tmp_path):
    """``flatlab bounds ... | head``: no BrokenPipeError traceback, status 141 as other tools."""
    cmd = [sys.executable, "-m", "flatlab.cli", "bounds", "--algorithm", "dsgd", "--topology",
           "ring", "--nodes", "16"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=dict(os.environ, PYTHONPATH=str(REPO)))
    proc.stdout.close()  # the reader is gone before the first line is written
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141
    assert err == ""


# ---------------------------------------------------------------------- interrupted runs
def test_a_run_whose_process_is_gone_shows_as_interrupted_and_resumes(lab):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    st = json.loads((lab / "part" / "status.json").read_text())
    # stopped by stop_after: released by its process, as if killed
    assert st["status"] == "running" and st["pid"] is None
    assert st["host"] == socket.gethostname() and isinstance(st["heartbeat"], float)
    assert rundir.shown_status(st) == "interrupted"
    st["pid"], st["pid_start"] = os.getpid(), rundir._process_start(os.getpid())
    assert rundir.shown_status(st) == "running"  # this process is alive
    st["pid"] = dead.pid
    _status(lab, json.dumps(st))
    assert rundir.shown_status(rundir.read_status(lab / "part")) == "interrupted"
    summary = flatlab.results.summary(lab / "part")
    assert summary.status.tolist() == ["interrupted"]
    # a reused pid (another process, another start time) is also gone
    st["pid"], st["pid_start"] = os.getpid(), -1
    assert rundir.process_gone(st)
    # on another host only the heartbeat tells: stale after STALE_S
    st["host"], st["heartbeat"] = "elsewhere", 0.0
    assert rundir.process_gone(st)
    st["heartbeat"] = __import__("time").time()
    assert not rundir.process_gone(st)
    # an interrupted run resumes
    st.update(host=socket.gethostname(), pid=dead.pid)
    _status(lab, json.dumps(st))
    assert run(load_config(TINY), lab / "part", progress=False).status == "done"


def test_the_heartbeat_is_refreshed_while_running_and_stops_at_the_end(tmp_path):
    import time

    w = rundir.StatusWriter(tmp_path, {"name": "x"}, 1, heartbeat_s=0.02)
    w.write("running", 0, 0.0)
    first = rundir.read_status(tmp_path)["heartbeat"]
    deadline = time.time() + 10
    while rundir.read_status(tmp_path)["heartbeat"] == first and time.time() < deadline:
        time.sleep(0.01)
    assert rundir.read_status(tmp_path)["heartbeat"] > first
    w.write("done", 1, 1.0)
    last = (tmp_path / "status.json").read_text()
    time.sleep(0.1)
    assert (tmp_path / "status.json").read_text() == last
    assert rundir.read_status(tmp_path)["status"] == "done"


def test_restart_after_a_kill_never_resumes_the_older_checkpoint(lab):
    """A fresh start removes the old checkpoint: a kill before the first new checkpoint cannot
    resume the state of the run that was there before."""
    cfg = load_config(TINY, ["seed=1", "checkpoint_every=500", "train.steps=6"])
    res = run(cfg, lab / "part", progress=False, resume=False, stop_after=1)
    assert res.status == "running"
    assert not (lab / "part" / "checkpoint.pt").exists()


def test_a_sweep_skips_a_finished_run_of_the_same_config_and_keeps_its_record(lab):
    spec = {"base": str(lab / "cfg.yaml"), "out": str(lab / "sw"), "grid": {"seed": [0]}}
    first = run_sweep(load_sweep(spec), progress=False, verbose=False)
    again = run_sweep(load_sweep(spec), progress=False, verbose=False)
    assert first.status.tolist() == again.status.tolist() == ["done"]
    assert again.skipped.all()
    recorded = yaml.safe_load((lab / "sw" / "sweep.yaml").read_text())
    assert recorded["grid"] == {"seed": [0]} and recorded["overrides"] == {}


def test_under_torchrun_an_input_error_is_printed_once_and_every_rank_exits_2(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(dict(TINY, backend="distributed")))
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
         "--master_port=0", "-m", "flatlab", "run", str(cfg), "optim.lr=-1", "--out",
         str(tmp_path / "r")], capture_output=True, text=True, env=env, timeout=300)
    lines = [ln for ln in (proc.stdout + proc.stderr).splitlines()
             if "flatlab run: error" in ln]
    assert len(lines) == 1 and "config field optim.lr" in lines[0], proc.stderr
    assert proc.returncode != 0
    assert "exitcode  : 2" in proc.stderr or "exit code 2" in proc.stderr.lower() \
        or proc.returncode == 2, proc.stderr
    assert not (tmp_path / "r").exists()
