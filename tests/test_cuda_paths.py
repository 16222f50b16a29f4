"""The public entry points on every device this machine has, against CPU and dense references.

Each test runs on ``cpu``, on ``cuda`` when a GPU is present and on ``cuda:1`` when there are two,
so one command on a CUDA machine (``pytest tests/test_cuda_paths.py``, the CUDA stage of
``benchmarks/gpu.sh``) runs the engine, the mixers, every algorithm, curvature (Lanczos, power
iteration, per-node strategies, PyHessian), the measures, a resumed run, and every algorithm on
two processes (NCCL, one GPU each, where there are two GPUs; gloo on the CPU). The references
are float64: a dense Hessian's ``numpy.linalg.eigvalsh``, ``W @ X`` in numpy, and the same call on
the CPU. Without a GPU the CUDA cases are skipped and the CPU case still checks that every result
comes back on the device of its inputs.
"""

import numpy as np
import pytest
import torch

import flatlab
import flatlab.curvature as C  # noqa: N812
from flatlab.algorithms import available, simulate
from flatlab.comm import SimulatedMixer
from flatlab.data import heterogeneous_quadratics
from flatlab.engine import GradientOracle, NodeStack
from flatlab.experiment import load_config, run
from tests.curvature.test_curvature import Tanh  # the small model of the curvature tests

CUDA = torch.cuda.is_available()
DEVICES = ["cpu",
           pytest.param("cuda", marks=pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")),
           pytest.param("cuda:1", marks=pytest.mark.skipif(
               not CUDA or torch.cuda.device_count() < 2, reason="needs two CUDA GPUs"))]


def problem(device):
    torch.manual_seed(0)
    stack = NodeStack(Tanh(), 3, device=device, dtype=torch.float64, init="different",
                      reinit=lambda s: (torch.manual_seed(s), Tanh())[1], seed=1)
    x = torch.randn(50, 5, dtype=torch.float64)
    y = torch.randint(0, 3, (50,))
    return stack, x.to(device), y.to(device)


def network_for(name, n):
    """The undirected exponential graph, push-sum weights for sgp, asynchronous rounds for
    ad-psgd (20 of them)."""
    if name == "sgp":
        return flatlab.topology.make("exponential", n, weights="push-sum")
    topo = flatlab.topology.make("exponential-undirected", n)
    if name == "ad-psgd":
        from flatlab.topology.faults import AsyncGossip

        return AsyncGossip(topo).topology(20)
    return topo


def exact_top(stack, x, y, X):  # noqa: N803
    """Each node's dense float64 Hessian on the CPU, its eigenvalues descending."""
    cpu = NodeStack(Tanh(), 3, device="cpu", dtype=torch.float64)
    out = []
    for i in range(X.shape[0]):
        fn = C.stack_loss(cpu, x.cpu(), y.cpu())
        H = torch.autograd.functional.hessian(fn, X[i].cpu()).numpy()  # noqa: N806
        out.append(np.linalg.eigvalsh(H)[::-1])
    return np.stack(out)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("method", ["dense", "sparse", "shift"])
def test_mixers_on_the_device_equal_numpy(device, method):
    for name in ("ring", "torus", "exponential"):
        topo = flatlab.topology.make(name, 16)
        if method == "shift" and not getattr(topo, "group", None):
            continue
        X = torch.randn(16, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(3))  # noqa: N806
        mixer = SimulatedMixer(topo, device=device, dtype=torch.float64, method=method)
        got = mixer.mix(X.to(device), 0)
        assert got.device == torch.device(device)
        np.testing.assert_allclose(got.cpu().numpy(), topo.matrix(0) @ X.numpy(), rtol=0,
                                   atol=1e-13)


@pytest.mark.parametrize("device", DEVICES)
def test_every_algorithm_on_the_device_equals_its_cpu_run(device):
    q = heterogeneous_quadratics(8, 4, seed=1)
    X0 = torch.randn(8, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))  # noqa: N806
    H = q.H  # noqa: N806
    for name in available():
        topo = network_for(name, 8)
        kw = {"metric_fn": lambda X, t: H.to(X)}  # noqa: N803
        ref = simulate(name, topo, q.grad_fn(), X0, 20, 0.05, **kw)
        got = simulate(name, topo, q.grad_fn(), X0.to(device), 20, 0.05, **kw)
        assert got.device == torch.device(device), name
        torch.testing.assert_close(got.cpu(), ref, rtol=1e-10, atol=1e-12, msg=name)


@pytest.mark.parametrize("device", DEVICES)
def test_gradients_on_the_device_equal_the_cpu(device):
    stack, x, y = problem(device)
    cpu, xc, yc = problem("cpu")
    X = cpu.initial_params()  # noqa: N806
    for method in ("vmap", "autograd"):
        _, G = GradientOracle(stack, method=method)(X.to(device), (x[None].expand(3, -1, -1),  # noqa: N806
                                                                   y[None].expand(3, -1)))
        _, Gc = GradientOracle(cpu, method=method)(X, (xc[None].expand(3, -1, -1),  # noqa: N806
                                                       yc[None].expand(3, -1)))
        assert G.device == torch.device(device)
        torch.testing.assert_close(G.cpu(), Gc, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("device", DEVICES)
def test_curvature_on_the_device_equals_dense_hessians(device):
    stack, x, y = problem(device)
    X = stack.initial_params()  # noqa: N806
    want = exact_top(stack, x, y, X)
    for strategy in C.NODE_STRATEGIES:
        r = C.node_top_eigenvalues(stack, X, x, y, k=2, tol=1e-8, strategy=strategy)
        assert r.eigenvalues.device == torch.device(device) or r.eigenvalues.device.type == "cpu"
        np.testing.assert_allclose(r.eigenvalues.cpu().numpy(), want[:, :2], rtol=1e-6)
    op = C.model_hessian(stack, X, x, y)
    r = C.lanczos(op, k=2, tol=1e-8)
    np.testing.assert_allclose(r.eigenvalues.cpu().numpy(), want[:, :2], rtol=1e-6)
    p = C.power_iteration(op, k=1, max_iter=3000, tol=1e-10)  # the largest magnitude
    top = want[np.arange(3), np.abs(want).argmax(1)]
    np.testing.assert_allclose(p.eigenvalues[:, 0].cpu().numpy(), top, rtol=1e-4)
    t = C.trace(op, 60, seed=0)
    assert t.estimate.shape == (3,)


@pytest.mark.parametrize("device", DEVICES)
def test_pyhessian_on_the_device_equals_the_dense_hessian(device):
    pytest.importorskip("pyhessian")
    from flatlab.curvature.pyhessian import pyhessian_eigenvalues

    stack, x, y = problem(device)
    x0 = stack.initial_params().mean(0)
    rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state(stack.device) if stack.device.type == "cuda" else None
    r = pyhessian_eigenvalues(stack, x0, x, y, k=1, tol=1e-9, max_iter=2000)
    assert torch.equal(torch.get_rng_state(), rng)
    if cuda_rng is not None:  # the stack's GPU generator is put back too
        assert torch.equal(torch.cuda.get_rng_state(stack.device), cuda_rng)
    assert r.eigenvectors.device.type == "cpu"
    want = exact_top(stack, x, y, x0[None])[0]
    assert float(r.eigenvalues[0]) == pytest.approx(want[np.abs(want).argmax()], rel=1e-5)


CFG = {"name": "dev", "data": {"name": "digits", "partition": "dirichlet", "alpha": 0.5,
                               "batch_size": 8},
       "model": {"name": "mlp", "options": {"hidden": [16]}},
       "topology": {"name": "ring", "nodes": 4}, "algorithm": {"name": "gradient-tracking"},
       "optim": {"lr": 0.1}, "train": {"steps": 12},
       "measure": {"every": 6, "train_subset": 100, "test_subset": 100,
                   "metrics": ["loss", "accuracy", "consensus_distance", "hessian_top",
                               "hessian_trace"]},
       "checkpoint_every": 5, "dtype": "float64"}


@pytest.mark.parametrize("device", DEVICES)
def test_a_run_measures_and_resumes_bit_for_bit_on_the_device(device, tmp_path):
    cfg = load_config(dict(CFG, device=device))
    assert run(cfg, tmp_path / "whole", progress=False).status == "done"
    assert run(cfg, tmp_path / "cut", progress=False, stop_after=7).status == "running"
    assert run(cfg, tmp_path / "cut", progress=False).status == "done"
    a, b = (torch.load(tmp_path / r / "checkpoint.pt", weights_only=True)
            for r in ("whole", "cut"))
    assert torch.equal(a["state"]["x"], b["state"]["x"])
    import pandas as pd

    m = pd.read_parquet(tmp_path / "whole" / "metrics.parquet")
    assert {"hessian_top", "hessian_trace"} <= set(m.metric)
    assert np.isfinite(m.value).all()


def test_full_float32_and_deterministic_set_and_restore_every_setting(monkeypatch):
    from flatlab.engine.precision import deterministic, full_float32

    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    torch.backends.cudnn.allow_tf32 = True
    before = (torch.backends.cuda.matmul.allow_tf32, torch.are_deterministic_algorithms_enabled(),
              torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    with full_float32():
        assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
    assert torch.backends.cudnn.allow_tf32
    with deterministic(True):
        assert torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.deterministic
        assert not torch.backends.cudnn.benchmark
        import os

        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    with deterministic(False):
        assert not torch.are_deterministic_algorithms_enabled()
    assert (torch.backends.cuda.matmul.allow_tf32, torch.are_deterministic_algorithms_enabled(),
            torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark) == before
    import os

    assert "CUBLAS_WORKSPACE_CONFIG" not in os.environ


@pytest.mark.parametrize("device", DEVICES)
def test_a_deterministic_run_equals_the_default_on_the_cpu_and_resumes_on_the_device(
        device, tmp_path):
    cfg = load_config(dict(CFG, device=device, deterministic=True))
    run(cfg, tmp_path / "whole", progress=False)
    run(cfg, tmp_path / "cut", progress=False, stop_after=7)
    run(cfg, tmp_path / "cut", progress=False)
    a, b = (torch.load(tmp_path / r / "checkpoint.pt", weights_only=True)["state"]["x"]
            for r in ("whole", "cut"))
    assert torch.equal(a, b)
    assert not torch.are_deterministic_algorithms_enabled()  # the run put it back
    if device == "cpu":
        run(load_config(dict(CFG, device="cpu")), tmp_path / "plain", progress=False)
        c = torch.load(tmp_path / "plain" / "checkpoint.pt", weights_only=True)["state"]["x"]
        assert torch.equal(a, c)


def test_a_gpu_index_beyond_the_machine_is_one_line(monkeypatch):
    from flatlab.engine.stack import resolve_device
    from flatlab.errors import FlatlabError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(FlatlabError, match=r"'cuda:2' does not exist: this machine has 2 GPUs "
                                           r"\(cuda:0 to cuda:1\)"):
        resolve_device("cuda:2")


def test_distributed_device_choice_per_process(monkeypatch):
    from flatlab.comm.process import _device
    from flatlab.errors import FlatlabError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert _device("auto", 3) == torch.device("cuda:3")
    assert _device("cuda", 2) == torch.device("cuda:2")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    with pytest.raises(FlatlabError, match="would put every process of this machine on one GPU"):
        _device("cuda:1", 2)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    assert _device("cuda:1", 0) == torch.device("cuda:1")
    with pytest.raises(FlatlabError, match="cuda:5 does not exist: this machine has 4 GPUs"):
        _device("cuda:5", 0)


def _two_process_worker(rank, world, port, out, backend):
    """One process per GPU over NCCL, as torchrun would start them (gloo: on the CPU)."""
    import os
    from datetime import timedelta

    import torch.distributed as dist

    from flatlab.comm import DistributedMixer

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    device = torch.device("cuda", rank) if backend == "nccl" else torch.device("cpu")
    if backend == "nccl":
        torch.cuda.set_device(rank)
    dist.init_process_group(backend, rank=rank, world_size=world, timeout=timedelta(seconds=60),
                            device_id=device if backend == "nccl" else None)
    try:
        q = heterogeneous_quadratics(4, 3, seed=5)
        X0 = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))  # noqa: N806
        res = {}
        for name in available():
            topo = network_for(name, 4)
            mixer = DistributedMixer(topo, device=device, dtype=torch.float64)
            rows = mixer.local_rows
            H = q.H[rows]  # noqa: N806

            def grad(X, t, rows=rows):  # noqa: N803
                full = torch.zeros(4, 3, dtype=X.dtype, device=X.device)
                full[rows] = X
                return q.grad_fn()(full.cpu(), t)[rows].to(X.device)

            xs = simulate(name, topo, grad, X0[rows].to(device), 15, 0.05, mixer=mixer,
                          metric_fn=lambda X, t, H=H: H.to(X))  # noqa: N803
            res[name] = xs.cpu()
        torch.save(res, os.path.join(out, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("backend", [
    "gloo", pytest.param("nccl", marks=pytest.mark.skipif(
        not CUDA or torch.cuda.device_count() < 2 or not torch.distributed.is_nccl_available(),
        reason="needs two CUDA GPUs and NCCL"))])
def test_every_algorithm_on_two_processes_equals_one_process(backend, tmp_path):
    import os

    import torch.multiprocessing as mp

    from tests.comm.test_distributed import free_port

    mp.spawn(_two_process_worker, args=(2, free_port(), str(tmp_path), backend), nprocs=2,
             join=True)
    got = [torch.load(os.path.join(tmp_path, f"rank{r}.pt"), weights_only=True) for r in (0, 1)]
    q = heterogeneous_quadratics(4, 3, seed=5)
    X0 = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))  # noqa: N806
    for name in available():
        topo = network_for(name, 4)
        want = simulate(name, topo, q.grad_fn(), X0, 15, 0.05,
                        metric_fn=lambda X, t: q.H.to(X))  # noqa: N803
        both = torch.cat([got[0][name], got[1][name]], dim=1)  # [steps + 1, n, d]
        torch.testing.assert_close(both, want, rtol=1e-10, atol=1e-12, msg=name)


@pytest.mark.parametrize("device", DEVICES)
def test_a_host_mask_reaches_the_device_equal_and_unchanged(device):
    from flatlab.engine.stack import to_device

    host = torch.tensor([True, False, True, True], device="cpu")
    got = to_device(host, torch.device(device))
    assert got.device == torch.device(device) and got.dtype == torch.bool
    assert torch.equal(got.cpu(), host) and host.device.type == "cpu"
    assert to_device(got, torch.device(device)) is got or torch.equal(
        to_device(got, torch.device(device)).cpu(), host)


@pytest.mark.parametrize("device", DEVICES)
def test_a_diverging_run_is_recorded_on_the_device_one_step_late_at_most(device, tmp_path):
    spec = dict(CFG, measure={"every": 1000, "metrics": ["loss"]},
                algorithm={"name": "consensus"}, train={"steps": 30}, dtype="float32")
    fast = ["optim.lr=1e6", "optim.schedule=constant"]  # overflows float32 within a few steps
    res = run(load_config(dict(spec, device=device), fast), tmp_path / "d", progress=False)
    cpu = run(load_config(dict(spec, device="cpu"), fast), tmp_path / "c", progress=False)
    assert res.status == cpu.status == "diverged"
    lag = 1 if device != "cpu" else 0  # on a GPU the flag is read after the next step is queued
    assert res.step == cpu.step + lag and res.step < 30, (res, cpu)
    assert res.message == f"non-finite loss at step {cpu.step}"
