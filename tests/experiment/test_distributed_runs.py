"""Distributed runs through the runner and the command line: real gloo processes on the loopback.

- Equivalence: every algorithm in the registry, run by ``flatlab.experiment.run`` with
  ``backend: distributed`` on 4 processes of 1 node or on 2 processes of 2 nodes (half the
  registry on each), writes the same
  metrics and the same final iterate as the simulated run of the same config, up to float32
  rounding (the order of floating sums differs; tests.precision), with equal byte counts (a
  time-varying topology on 4 processes, a static one on 2); and sgp on a column-stochastic
  topology (push-sum weights on the irregular star, so its weights w are not all 1) on both.
- SAM on every node (``optim.sam_rho``) on 2 processes equals its simulated run.
- Checkpoints hold all nodes: a distributed run stopped and resumed, and a simulated run resumed
  on 2 processes, end exactly as the uninterrupted run.
- Failure: a rank killed (SIGKILL), stopped (SIGSTOP) or hung in its own code makes the others
  exit non-zero within the timeout with one line naming it; the run is marked failed; under
  ``torchrun`` no process is left behind.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import flatlab
from flatlab.algorithms import available
from flatlab.experiment import load_config, run
from tests import precision

pytestmark = pytest.mark.kernels  # float32 results of other kernels: make test-kernels

REPO = Path(__file__).resolve().parents[2]
#: processes -> topology run over the whole registry (the mixer-level suite, tests/comm, covers
#: every topology on both layouts; here the runner is checked on a time-varying and a static one)
TOPOLOGY = {4: "one-peer-exponential", 2: "ring"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def config(algorithm: str, topology: str, **kw) -> dict:
    """The run's config; ``topology`` is a generator name or ``NAME+RULE`` for a weight rule."""
    name, _, rule = topology.partition("+")
    cfg = {
        "name": f"{algorithm}-{topology}",
        "data": {"name": "digits", "partition": "dirichlet", "alpha": 0.5, "batch_size": 8},
        "model": {"name": "mlp", "options": {"hidden": [16]}},
        "topology": {"name": name, "nodes": 4, **({"weights": rule} if rule else {})},
        "algorithm": {"name": algorithm},
        "optim": {"lr": 0.1, "schedule": "cosine", "warmup": 2, "weight_decay": 1e-4},
        "train": {"steps": 12},
        "measure": {"every": 6, "train_subset": 200, "test_subset": 200},
        "checkpoint_every": 5,
        "device": "cpu",
        "init": "different",
        "timeout": 30,
    }
    cfg.update(kw)
    return cfg


def _accepted(algo: str, world: int) -> str:
    """The world's topology, or the first fallback the algorithm accepts (d2 refuses
    lambda_min <= -1/3, the primal-dual methods time-varying graphs)."""
    for name in (TOPOLOGY[world], "ring", "complete"):
        try:
            flatlab.algorithms.make(algo).check_topology(flatlab.topology.make(name, 4))
            return name
        except flatlab.errors.AlgorithmError:
            continue
    raise AssertionError(f"{algo} accepts none of the test topologies")


def cases(world: int) -> list[tuple[str, str]]:
    """Half the registry on each layout, so every algorithm goes through the distributed runner
    once (tests/comm/test_distributed.py compares every algorithm on both layouts at the mixer
    level); diffusion on both, it is the resumed run's reference."""
    names = [a for a in available() if a != "ad-psgd"]  # its own network: FAULT_RUNS
    picked = names[1::2] if world == 4 else names[0::2]
    if "diffusion" not in picked:
        picked = [*picked, "diffusion"]
    return [(a, _accepted(a, world)) for a in picked] + [PUSH_SUM]


#: push-sum on a column-stochastic topology, on both layouts (the hub splits its mass in 4)
PUSH_SUM = ("sgp", "star+push-sum")


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=30))
    try:
        for algo, topo in cases(world):
            cfg = load_config(config(algo, topo, backend="distributed"))
            res = run(cfg, Path(out) / cfg.name, progress=False)
            assert res.status == "done" and res.main == (rank == 0)
        # resumption: a distributed run stopped at step 7 (after the checkpoint at 5) ...
        cfg = load_config(config("diffusion", "ring", name="resumed", backend="distributed"))
        assert run(cfg, Path(out) / "resumed", progress=False, stop_after=7).status == "running"
        assert run(cfg, Path(out) / "resumed", progress=False).status == "done"
        # ... and a simulated run continued on these processes
        cfg = load_config(config("consensus", "ring", name="crossed", backend="distributed"))
        assert run(cfg, Path(out) / "crossed", progress=False).status == "done"
        if world == 2:  # SAM on every node: each process perturbs its own nodes
            cfg = load_config(config("diffusion", "ring", name="sam", backend="distributed",
                                     optim=SAM_OPTIM))
            assert run(cfg, Path(out) / "sam", progress=False).status == "done"
            # faults: both mixers replay the same seeded rounds (issue 34)
            for name, algo, override in FAULT_RUNS:
                cfg = load_config(dict(config(algo, "ring", name=name, backend="distributed"),
                                       **override))
                assert run(cfg, Path(out) / name, progress=False).status == "done"
    finally:
        dist.destroy_process_group()


#: Runs under each fault model, on 2 processes and simulated: a ring of 4 whose links fail
#: (40% each round), whose nodes go offline (30%; they keep their state), that loses messages
#: (30%; row-stochastic rounds), whose nodes miss 30% of their steps' gradients, and a clock.
FAULT_RUNS = [
    ("faults", "gradient-tracking",
     {"topology": {"name": "ring", "nodes": 4, "faults": {"model": "link_failures", "p": 0.4}}}),
    ("churn", "momentum-tracking",
     {"topology": {"name": "ring", "nodes": 4, "faults": {"model": "node_churn", "p": 0.3}}}),
    ("drops", "diffusion",
     {"topology": {"name": "ring", "nodes": 4, "faults": {"model": "message_drops", "p": 0.3}}}),
    ("stragglers", "dsgdm", {"train": {"steps": 12, "stragglers": 0.3}}),
    # and the simulated wall clock: each process's slowest node, combined where measured
    ("clock", "diffusion", {"clock": {"compute": 0.05, "compute_cv": 0.5, "latency": 0.001,
                                      "bandwidth": 1.0e6}}),
    # AD-PSGD: asynchronous pairwise ticks, late gradients (their points are checkpointed and
    # gathered), and the asynchronous clock's mean over both processes' nodes
    ("async", "ad-psgd",
     {"topology": {"name": "ring", "nodes": 4, "faults": {"model": "async_gossip"}},
      "train": {"steps": 12, "staleness": {"tau": 2}},
      "clock": {"compute": 0.05, "compute_cv": 0.5, "latency": 0.001}}),
    # late messages (up to 2 rounds, half of them): each process keeps the past of the rows it
    # receives, and gradient tracking's [X | Y] message is one delayed channel
    ("late", "gradient-tracking",
     {"topology": {"name": "ring", "nodes": 4, "delays": {"tau": 2, "p": 0.5}}}),
]
SAM_OPTIM = {"lr": 0.1, "schedule": "cosine", "warmup": 2, "weight_decay": 1e-4,
             "sam_rho": 0.05}


def _simulated(out: Path, algorithm: str, topology: str, **kw) -> Path:
    cfg = load_config(config(algorithm, topology, **kw))
    assert run(cfg, out / cfg.name, progress=False).status == "done"
    return out / cfg.name


def _final_x(path: Path) -> torch.Tensor:
    return torch.load(path / "checkpoint.pt", weights_only=True)["state"]["x"]


@pytest.fixture(scope="module")
def simulated(tmp_path_factory):
    out = tmp_path_factory.mktemp("simulated")
    for world in TOPOLOGY:
        for algo, topo in cases(world):
            _simulated(out, algo, topo)
    return out


def _values(rows: pd.DataFrame) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Distributed and simulated values (computed in float32) and their steps (at least 1)."""
    return (torch.tensor(rows.value_d.to_numpy(), dtype=torch.float32),
            torch.tensor(rows.value_s.to_numpy(), dtype=torch.float32),
            torch.tensor(rows.step.clip(lower=1).to_numpy(), dtype=torch.float32))


def _compare(dist_dir: Path, sim_dir: Path) -> None:
    """The distributed run against the simulated one, up to float32 rounding (tests.precision).

    Both accumulate rounding (different sums) over the steps: every tolerance is the size of
    what is compared times ``C * eps * t`` at step ``t`` (the final iterate: its magnitude, the
    worst being NGPD's K-FAC-preconditioned steps, 51 eps x scale after 12 steps on AMD EPYC).
    """
    a, b = (pd.read_parquet(p / "metrics.parquet") for p in (dist_dir, sim_dir))
    assert len(a) == len(b)
    m = a.merge(b, on=["step", "metric", "scope"], suffixes=("_d", "_s"))
    assert len(m) == len(a)
    xd, xs = _final_x(dist_dir), _final_x(sim_dir)
    steps = int(m.step.max())
    precision.assert_close(xd, xs, scale=precision.magnitude(xs) * steps, what="final x")

    exact = m.metric.isin(["comm_bytes", "lr"])
    assert (m.value_d[exact] == m.value_s[exact]).all(), m[exact & (m.value_d != m.value_s)]
    # accuracies count predictions: one whose two top logits lie within rounding may flip
    sizes = json.loads((sim_dir / "measures.json").read_text())
    for split in ("train", "test"):
        acc = m[m.metric == f"{split}_accuracy"]
        assert ((acc.value_d - acc.value_s).abs() <= 1 / sizes[f"{split}_eval_size"]).all(), acc
    # consensus distances are differences of iterates: rounding is relative to the iterates,
    # not to the distance (0 in exact arithmetic after d2's step on the complete graph). Their
    # square roots are norms of X - mean(X), so they move at most as much as a node's iterate:
    # at most C eps t max_i |x_i| (measured worst: 3 such units, diffusion on 2 processes)
    node = float(xs.flatten(1).norm(dim=1).max())
    mean = float(xs.flatten(1).mean(0).norm())
    for metric, size in (("consensus_distance", node), ("consensus_distance_rel", node / mean)):
        got, want, t = _values(m[m.metric == metric])
        got, want = got.sqrt(), want.sqrt()
        scale = t * size * (1 + want if metric.endswith("_rel") else 1)  # and |x̄| moves
        precision.assert_close(got, want, scale=scale, what=metric)
    # losses and gradient norms: relative to themselves (no cancellation)
    got, want, t = _values(m[~exact & ~m.metric.str.contains("accuracy|consensus")])
    precision.assert_close(got, want, scale=t * want.abs(), what="metrics")
    sd, ss = (json.loads((p / "status.json").read_text()) for p in (dist_dir, sim_dir))
    assert sd["status"] == "done" and sd["backend"] == "distributed" and sd["processes"] > 1


@pytest.mark.parametrize("world", [4, 2], ids=["4x1", "2x2"])
def test_distributed_runs_equal_simulated_runs(world, simulated, tmp_path):
    # the simulated half of the crossed run, stopped after its checkpoint at step 5
    cfg = load_config(config("consensus", "ring", name="crossed"))
    run(cfg, tmp_path / "crossed", progress=False, stop_after=7)
    mp.spawn(_worker, args=(world, free_port(), str(tmp_path)), nprocs=world, join=True)
    for algo, topo in cases(world):
        _compare(tmp_path / f"{algo}-{topo}", simulated / f"{algo}-{topo}")
    # resumed runs end exactly as uninterrupted ones
    _compare(tmp_path / "resumed", simulated / "diffusion-ring")
    _compare(tmp_path / "crossed", _simulated(tmp_path / "whole", "consensus", "ring"))
    if world == 2:
        _compare(tmp_path / "sam", _simulated(tmp_path / "whole", "diffusion", "ring",
                                              name="sam", optim=SAM_OPTIM))
        for name, algo, override in FAULT_RUNS:
            cfg = load_config(dict(config(algo, "ring", name=name), **override))
            run(cfg, tmp_path / "whole" / name, progress=False)
            _compare(tmp_path / name, tmp_path / "whole" / name)
        late = torch.load(tmp_path / "late" / "checkpoint.pt", weights_only=True)["delays"]
        whole = torch.load(tmp_path / "whole" / "late" / "checkpoint.pt",
                           weights_only=True)["delays"]
        assert late["channel0"].shape[:2] == (4, 3)  # every rank's own rows' past, gathered
        precision.assert_close(late["channel0"], whole["channel0"],
                               scale=precision.magnitude(whole["channel0"]) * 12,
                               what="the late messages' past")
    ck = torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=True)
    assert ck["processes"] == world and len(ck["rng"]) == world
    assert ck["state"]["x"].shape[0] == 4 and ck["mixer"]["bytes"].shape == (4,)


# ---------------------------------------------------------------------- failures
HANG_ON_USR1 = ("import signal, sys, time\n"
                "signal.signal(signal.SIGUSR1, lambda *a: time.sleep(3600))\n"
                "from flatlab.cli import main\n"
                "sys.exit(main(sys.argv[1:]))\n")


def _args(out: Path, timeout: float, nodes: int = 6) -> list[str]:
    return ["run", str(REPO / "configs" / "ring16.yaml"), "backend=distributed",
            f"timeout={timeout}", "train.steps=100000", "measure.every=50", "model.name=mlp",
            "data.name=digits", f"topology.nodes={nodes}", "measure.train_subset=200",
            "measure.test_subset=200", "checkpoint_every=5", "--out", str(out), "--no-progress"]


def _env(rank: int, world: int, port: int) -> dict[str, str]:
    return dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1",
                PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))


def _wait_running(out: Path, procs, limit: float = 120.0) -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit:
        st = out / "status.json"
        if st.is_file() and json.loads(st.read_text())["step"] > 0:
            return
        ended = [p for p in procs if p.poll() is not None]
        assert not ended, "a rank ended before the run started: " + " | ".join(
            p.stderr.read().strip() for p in ended if p.stderr)
        time.sleep(0.2)
    raise AssertionError("the distributed run did not start")


@pytest.mark.parametrize("how", ["kill", "stop", "hang"])
def test_lost_rank_stops_the_others_with_one_line_naming_it(how, tmp_path):
    """Processes started by hand (no launcher): the survivors' own watchdog ends the run."""
    world, lost, timeout = 3, 2, 5.0
    port, out = free_port(), tmp_path / "run"
    procs = [subprocess.Popen([sys.executable, "-c", HANG_ON_USR1, *_args(out, timeout)],
                              env=_env(r, world, port), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for r in range(world)]
    try:
        _wait_running(out, procs)
        time.sleep(0.5)
        t0 = time.monotonic()
        procs[lost].send_signal({"kill": signal.SIGKILL, "stop": signal.SIGSTOP,
                                 "hang": signal.SIGUSR1}[how])
        errs = {}
        for r, p in enumerate(procs):
            if r != lost:
                _, errs[r] = p.communicate(timeout=timeout + 15)
        took = time.monotonic() - t0
    finally:
        for p in procs:
            p.kill()
            p.wait()
    # bounded: the timeout (a hung peer) plus 2.5 heartbeats to name it, plus exit
    assert took < timeout + 2.5 * min(1.0, timeout / 5) + 5.0, took
    for r, err in errs.items():
        assert procs[r].returncode == 1, (r, err)
        lines = [x for x in err.splitlines() if x.strip()]
        assert len(lines) == 1 and lines[0].startswith(f"flatlab run: rank {lost} was lost"), err
        assert ("hung" in lines[0]) == (how == "hang")
    st = json.loads((out / "status.json").read_text())
    assert st["status"] == "failed" and st["message"].startswith(f"rank {lost} was lost")


def test_torchrun_run_and_killed_worker_leaves_no_process(tmp_path):
    """The real launcher: a run finishes, and a killed worker fails the run with nothing left."""
    out = tmp_path / "ok"
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                f"--master_port={free_port()}", "-m", "flatlab"]
    done = subprocess.run([*torchrun, "run", str(REPO / "configs" / "ring16.yaml"),
                           "backend=distributed", "train.steps=4", "measure.every=2",
                           "model.name=mlp", "data.name=digits", "topology.nodes=4",
                           "--out", str(out), "--no-progress"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("done at step 4") == 1  # rank 0 speaks for all
    assert json.loads((out / "status.json").read_text())["processes"] == 2

    out = tmp_path / "killed"
    torchrun[3] = "--nproc_per_node=3"
    torchrun[4] = f"--master_port={free_port()}"
    agent = subprocess.Popen([*torchrun, *_args(out, 5.0)], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _wait_running(out, [agent])
        workers = _children(agent.pid)
        victim = next(p for p in workers if _environ(p).get("RANK") == "1")
        os.kill(victim, signal.SIGKILL)
        _, err = agent.communicate(timeout=40)
    finally:
        if agent.poll() is None:
            os.killpg(agent.pid, signal.SIGKILL)
            agent.wait()
    assert agent.returncode != 0
    assert err.count("flatlab run: rank 1 was lost") == 2, err
    assert not [p for p in workers if _alive(p)]
    st = json.loads((out / "status.json").read_text())
    assert st["status"] == "failed" and st["message"].startswith("rank 1 was lost")


def _children(pid: int) -> list[int]:
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:  # the parent's pid
            kids.append(int(stat.parent.name))
    return kids


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(x.decode(errors="replace").split("=", 1) for x in raw if b"=" in x)


def _alive(pid: int) -> bool:
    try:
        st = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except OSError:
        return False
    return st != "Z"
