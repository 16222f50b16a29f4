"""The training commands: run, sweep, results, plot, listings, and their one-line errors."""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402
import yaml  # noqa: E402

import flatlab  # noqa: E402
from flatlab.cli import main  # noqa: E402
from flatlab.errors import ConfigError  # noqa: E402
from flatlab.experiment import load_config  # noqa: E402
from flatlab.experiment.sweep import expand, load_sweep  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TINY = ["data.name=digits", "model.name=logistic", "topology.nodes=4", "train.steps=6",
        "measure.every=3", "measure.train_subset=100", "device=cpu"]


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_shipped_configs_are_valid():
    cfg = load_config(REPO / "configs" / "ring16.yaml")
    assert cfg.algorithm.name == "diffusion" and cfg.topology.nodes == 16
    points = expand(load_sweep(REPO / "configs" / "sweep_algorithms.yaml"))
    assert len(points) == 9
    assert {c.algorithm.name for _, c in points} == {"centralized", "consensus", "diffusion"}
    cfg = load_config(REPO / "configs" / "sgp16.yaml")
    assert cfg.algorithm.name == "sgp" and cfg.topology.weights == "push-sum"
    with pytest.raises(ConfigError, match="column-stochastic"):  # sgp's topology is its own
        load_config(REPO / "configs" / "sgp16.yaml", ["algorithm.name=diffusion"])
    # but centralized, which never mixes, is the baseline on it
    assert load_config(REPO / "configs" / "sgp16.yaml",
                       ["algorithm.name=centralized"]).algorithm.name == "centralized"


@pytest.mark.parametrize("overrides", [
    ["algorithm.name=centralized", "algorithm.params.momentum=0.9"],
    ["algorithm.params.momentum=0.9", "algorithm.params.nesterov=true",
     "algorithm.params.weight_decay_on=numerator", "optim.weight_decay=0.01"],
])
def test_sgp_config_runs_centralized_and_sgp_with_the_authors_momentum(capsys, tmp_path,
                                                                       overrides):
    code, out, err = run(capsys, "run", REPO / "configs" / "sgp16.yaml", "--out", tmp_path / "r",
                         "--no-progress", "--threads", "1", *TINY, *overrides)
    assert code == 0, err
    assert out.startswith("done at step 6")


def test_run_results_plot(capsys, tmp_path):
    cfg = REPO / "configs" / "ring16.yaml"
    # overrides are taken in any position, here after the options and before the config
    code, out, err = run(capsys, "run", TINY[0], cfg, "--out", tmp_path / "r", "--no-progress",
                         "--threads", "1", *TINY[1:])
    assert code == 0, err
    assert out.startswith("done at step 6")
    # the closing line: last loss and accuracy, wall time and where it went
    line = out.splitlines()[1]
    assert line.startswith("loss ") and "test acc " in line and "train " in line
    assert "measures " in line and "checkpoints " in line
    code, out, err = run(capsys, "run", cfg, "--out", tmp_path / "r", "--no-progress", *TINY)
    assert code == 0 and "(finished before: nothing ran; --restart to train again)" in out
    code, out, _ = run(capsys, "results", tmp_path / "r", "--csv", tmp_path / "s.csv")
    assert code == 0 and "test_accuracy" in out and (tmp_path / "s.csv").exists()
    code, out, _ = run(capsys, "plot", tmp_path / "r", "--metric", "test_accuracy", "--metric",
                       "consensus_distance")
    assert code == 0 and (tmp_path / "r" / "curves.png").stat().st_size > 5000
    code, _, err = run(capsys, "plot", tmp_path / "r", "--metric", "hessian")
    assert code == 2 and "no metric 'hessian'" in err and err.count("\n") == 1


def test_sweep_command(capsys, tmp_path):
    spec = {"base": str(REPO / "configs" / "ring16.yaml"), "out": str(tmp_path / "sw"),
            "grid": {"algorithm.name": ["centralized", "diffusion-cta"]}}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(spec))
    code, out, err = run(capsys, "sweep", tmp_path / "s.yaml", *TINY, "--no-progress")
    assert code == 0, err
    assert "2 done" in out
    # after each point: its status, the time so far and what is left
    assert "[1/2] algorithm.name=centralized: done (" in out and "left)" in out
    df = flatlab.results.load(tmp_path / "sw")
    assert set(df["algorithm.name"]) == {"centralized", "diffusion-cta"}
    # the rerun says what it skipped
    code, out, err = run(capsys, "sweep", tmp_path / "s.yaml", *TINY, "--no-progress")
    assert code == 0 and "2 done (2 finished before, skipped)" in out, out


def test_sweep_grid_overrides_and_parallel_jobs(capsys, tmp_path):
    spec = {"base": str(REPO / "configs" / "ring16.yaml"), "out": str(tmp_path / "sw"),
            "grid": {"algorithm.name": ["centralized", "diffusion-cta"], "seed": [0]}}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(spec))
    # grid.KEY=[...] replaces one axis; the other stays
    points = expand(load_sweep(tmp_path / "s.yaml", ["grid.seed=[3, 4]", "train.steps=2"]))
    assert [(c.algorithm.name, c.seed) for _, c in points] == [
        ("centralized", 3), ("centralized", 4), ("diffusion-cta", 3), ("diffusion-cta", 4)]
    assert all(c.train.steps == 2 for _, c in points)
    # an override of a grid axis would be replaced by the grid: refused, naming the way
    code, _, err = run(capsys, "sweep", tmp_path / "s.yaml", "seed=5")
    assert code == 2 and "seed is a grid axis" in err and "grid.seed=[...]" in err
    assert err.count("\n") == 1 and not (tmp_path / "sw").exists()
    code, out, err = run(capsys, "sweep", tmp_path / "s.yaml", "--jobs", "2", *TINY,
                         "grid.algorithm.name=[centralized,consensus]", "--no-progress")
    assert code == 0, err
    assert "2 done" in out and "about" in out
    df = flatlab.results.summary(tmp_path / "sw")
    assert sorted(df.run) == ["algorithm.name=centralized,seed=0",
                              "algorithm.name=consensus,seed=0"]
    code, _, err = run(capsys, "sweep", tmp_path / "s.yaml", "--jobs", "0")
    assert code == 2 and "--jobs must be an integer >= 1" in err


@pytest.mark.parametrize("setup,argv,pattern", [
    # mistakes that would otherwise fail at every point, found before anything runs
    (None, ["device=cuda:7"], "sweep point algorithm.name=centralized: device 'cuda:7'"),
    (None, ["init_from=nosuch"], "init_from: nosuch holds no checkpoint.pt"),
    ("notes", [], "holds other files (notes.txt)"),
    ("point-notes", [], "holds no run but other files (notes.txt)"),
    ("run", [], "is a run directory (it holds status.json)"),
    (None, ["grid.seed=0"], "expected grid.FIELD=[v1,v2,...]"),
])
def test_sweep_mistakes_are_refused_before_anything_runs(capsys, tmp_path, setup, argv, pattern,
                                                         monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    out = tmp_path / "sw"
    spec = {"base": str(REPO / "configs" / "ring16.yaml"), "out": str(out),
            "grid": {"algorithm.name": ["centralized", "diffusion"]}}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(spec))
    if setup == "notes":
        out.mkdir()
        (out / "notes.txt").write_text("mine")
    elif setup == "point-notes":
        (out / "algorithm.name=diffusion").mkdir(parents=True)
        (out / "algorithm.name=diffusion" / "notes.txt").write_text("mine")
    elif setup == "run":
        out.mkdir()
        (out / "status.json").write_text("{}")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    tiny = [a for a in TINY if not a.startswith("device=")]
    code, _, err = run(capsys, "sweep", tmp_path / "s.yaml", *argv, *tiny)
    assert code == 2 and err.count("\n") == 1 and pattern in err, err
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_listings(capsys):
    code, out, _ = run(capsys, "algorithms")
    assert code == 0
    for name in flatlab.algorithms.available():
        assert name in out
    assert "dsgd" in out
    for cmd, names in (("datasets", flatlab.data.available()),
                       ("models", flatlab.models.available())):
        code, out, _ = run(capsys, cmd)
        assert code == 0 and all(n in out for n in names)
    code, out, _ = run(capsys, "measures")
    assert code == 0 and "consensus_distance" in out


@pytest.mark.parametrize("cmd,names", [
    ("topologies", lambda: [g.name for g in flatlab.topology.catalog()]),
    ("algorithms", flatlab.algorithms.available),
    ("datasets", flatlab.data.available),
    ("models", flatlab.models.available),
    ("measures", lambda: flatlab.measures.named.available()),
])
def test_every_listing_has_json(capsys, cmd, names):
    import json

    code, out, _ = run(capsys, cmd, "--json")
    assert code == 0
    items = json.loads(out)
    assert [i["name"] for i in items] == list(names())


@pytest.mark.parametrize("argv,pattern", [
    (["run", "missing.yaml"], "config file missing.yaml does not exist"),
    (["run", REPO / "configs" / "ring16.yaml", "optim.lr=-1"], "config field optim.lr"),
    (["run", REPO / "configs" / "ring16.yaml", "optim.lrr=1"], "optim.lrr is unknown"),
    (["run", REPO / "configs" / "ring16.yaml", "data.name=cifar10", "data.root=/nonexistent"],
     "cifar10"),
    (["run", REPO / "configs" / "ring16.yaml", "backend=mpi"], "config field backend"),
    (["run", REPO / "configs" / "ring16.yaml", "timeout=0"], "config field timeout"),
    (["run", REPO / "configs" / "ring16.yaml", "algorithm.name=d2"],
     "d2: is unstable on ring (n=16"),
    (["run", REPO / "configs" / "ring16.yaml", "algorithm.name=gradient-tracking",
      "algorithm.params.form=next"], "form must be one of diging, atc"),
    (["run", REPO / "configs" / "sgp16.yaml", "algorithm.name=dsgd"],
     "is column-stochastic (push-sum weights), which only sgp mixes over"),
    (["run", REPO / "configs" / "sgp16.yaml", "algorithm.params.weight_decay_on=x"],
     "weight_decay_on must be one of z, numerator, got 'x'"),
    (["run", REPO / "configs" / "sgp16.yaml", "algorithm.params.nesterov=true"],
     "nesterov needs momentum > 0"),
    (["run", REPO / "configs" / "ring16.yaml", "topology.weights=push-sum"],
     "diffusion: needs doubly stochastic mixing matrices"),
    (["run", REPO / "configs" / "ring16.yaml", "data.holdout=1"], "config field data.holdout"),
    # backend=distributed outside torchrun: no process group to join
    (["run", REPO / "configs" / "ring16.yaml", "backend=distributed"], "launch with `torchrun"),
    (["run", REPO / "configs" / "ring16.yaml", "threads=0"], "config field threads"),
    (["run", REPO / "configs" / "ring16.yaml", "threads=2", "--threads", "1"],
     "threads is given both as --threads and as threads="),
    (["run", REPO / "configs" / "sweep_algorithms.yaml"], "looks like a sweep spec"),
    (["run", REPO / "configs" / "ring16.yaml", "measure.options.hessian_top.k=3"],
     "add hessian_top to measure.metrics"),
    (["run", REPO / "configs" / "ring16.yaml", "threads=100000"], "more than 4 per CPU"),
    (["plot", "/nonexistent/runs"], "/nonexistent/runs does not exist; accepted: a run or"),
    (["sweep", "missing.yaml"], "sweep spec missing.yaml does not exist"),
    (["results", "/nonexistent/runs"], "does not exist"),
])
def test_bad_training_input_is_one_line_and_exit_2(capsys, tmp_path, argv, pattern,
                                                    monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)
    code, out, err = run(capsys, *argv, *(["--out", tmp_path / "x"] if argv[0] == "run" else []))
    assert code == 2
    assert err.count("\n") == 1 and pattern in err, err
    assert not (tmp_path / "x" / "status.json").exists()  # nothing half-written


@pytest.mark.parametrize("argv,pattern", [
    (["--threads", "0"], "--threads: '0' is not auto or an integer >= 1"),
    (["--resart"], "unrecognized arguments: --resart"),
    (["--out", "x", "stray"], "unrecognized arguments: stray (not key=value, e.g. optim.lr"),
    (["lr"], "unrecognized arguments: lr (not key=value"),
    (["--thread", "2"], "unrecognized arguments: --thread"),  # no prefixes of flags
])
def test_bad_run_options_are_one_line_and_exit_2(capsys, tmp_path, argv, pattern):
    with pytest.raises(SystemExit) as info:
        main(["run", str(REPO / "configs" / "ring16.yaml"), *argv])
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.count("\n") == 1 and pattern in err, err


def test_demo_refuses_a_bad_number_of_jobs_in_one_line(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--jobs", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "flatlab demo: error: --jobs must be >= 1 (got 0)"
    assert not any(tmp_path.iterdir())
