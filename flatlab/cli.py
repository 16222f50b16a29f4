"""The ``flatlab`` command.

    flatlab spectral --topology ring --nodes 16 [--weights metropolis] [--lazy]
                [--link-failures P | --node-churn P | --async-gossip [EVENTS]] [--json]
    flatlab bounds --algorithm diffusion --topology ring --nodes 16 [--L 1 --sigma2 1] [--json]
    flatlab disagreement (--topology ring --nodes 16 | --eigenvalues 1,0.5,...) --lr 0.1
                --curvature 1,2 --noise 1 [--form diffusion] [--local-steps H] [--bulk-hs X]
                [--heterogeneity ZETA.csv] [--json]
    flatlab topologies | algorithms | datasets | models | measures [--json]
    flatlab run CONFIG [key=value ...] [--out DIR] [--no-progress] [--restart] [--threads N]
                [--tensorboard]
    torchrun --nproc_per_node=K -m flatlab run CONFIG backend=distributed [...]
    flatlab sweep SPEC [key=value ...] [grid.KEY=[v1,v2]] [--out DIR] [--jobs K] [--no-progress]
    flatlab results PATH [--csv FILE]
    flatlab plot PATH [--metric test_accuracy] [--out FIG.png]
    flatlab demo [--out DIR] [--small] [--jobs K]

Overrides (``key=value``) may stand anywhere after the command. Bad input of any kind ends
with one line on stderr naming what is wrong and what is accepted, and exit status 2. A
distributed run that loses a process ends with one line naming the lost rank and exit status 1
(the run is marked failed). ``results`` and ``plot`` over a sweep leave out a run whose files
cannot be read (a damaged ``status.json``, ``config.yaml`` or ``metrics.parquet``), show the
others, print one line on stderr per run left out naming its file and what is wrong, and end with
exit status 1; a run directory given directly that cannot be read is refused, exit status 2.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from flatlab.errors import EXIT_USAGE, FlatlabError, OneLineParser, RankLostError

__all__ = ["main"]

#: Ctrl-C: 128 + SIGINT, as shells report a process that SIGINT ended.
EXIT_INTERRUPT = 130
_Parser = OneLineParser


def _add_topology_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--topology", required=required,
                   help="generator name (see `flatlab topologies`) or edges:PATH, "
                        "arcs:PATH, adjacency:PATH, matrix:PATH")
    p.add_argument("--nodes", "-n", type=int, help="number of nodes")
    p.add_argument("--weights", help="metropolis (default), max-degree, uniform or push-sum "
                   "(column-stochastic)")
    p.add_argument("--lazy", action="store_true", help="use (I + W) / 2")
    p.add_argument("--seed", type=int, help="seed of random generators (default 0)")
    p.add_argument("--rows", type=int, help="torus rows")
    p.add_argument("--cols", type=int, help="torus columns")
    p.add_argument("--degree", type=int, help="random-regular degree")
    p.add_argument("--edge-prob", type=float, help="erdos-renyi edge probability")
    p.add_argument("--allow-any-n", action="store_true",
                   help="one-peer-exponential for n not a power of two")


def _topology_from(args: argparse.Namespace):
    from flatlab.topology import make

    params = {k: getattr(args, k) for k in ("rows", "cols", "degree", "edge_prob")
              if getattr(args, k) is not None}
    if args.allow_any_n:
        params["allow_any_n"] = True
    return make(args.topology, args.nodes, weights=args.weights, lazy=args.lazy, seed=args.seed,
                **params)


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        return f"{v:.6g}" if math.isfinite(v) else str(v)
    return str(v)


def _table(rows: Sequence[tuple[str, Any]]) -> str:
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {_fmt(v)}" for k, v in rows)


def _cmd_spectral(args: argparse.Namespace) -> int:
    from flatlab.theory import async_gossip_spectrum, fault_spectrum, spectral
    from flatlab.topology.faults import LinkFailures, NodeChurn

    chosen = [f for f, v in (("--link-failures", args.link_failures),
                             ("--node-churn", args.node_churn),
                             ("--async-gossip", args.async_gossip)) if v is not None]
    if len(chosen) > 1:
        raise FlatlabError(f"give one fault model, not {' and '.join(chosen)}; accepted: "
                           "--link-failures P, --node-churn P or --async-gossip [EVENTS]")
    if chosen:
        given = [f for f, v in (("--eps", args.eps), ("--method", args.method)) if v is not None]
        if given:
            raise FlatlabError(f"{' and '.join(given)} {'set' if len(given) > 1 else 'sets'} "
                               "the spectral summary of a fixed "
                               f"graph; with {chosen[0]} the rates come from "
                               "the random rounds (summed, or --samples draws); accepted: "
                               "leave them out")
        top, seed = _topology_from(args), args.seed or 0
        if args.async_gossip is not None:
            events = None if args.async_gossip == "n" else args.async_gossip
            f = async_gossip_spectrum(top, events=events)
        else:
            model = (LinkFailures(top, args.link_failures, seed=seed) if args.node_churn is None
                     else NodeChurn(top, args.node_churn, seed=seed))
            f = fault_spectrum(model, samples=args.samples)
        if args.json:
            print(json.dumps(f.as_dict()))
            return 0
        if args.async_gossip is not None:
            print(f"{f.topology}, asynchronous pairwise gossip (AD-PSGD): a round is "
                  f"{events or f.n} ticks, each averaging a random node with a random "
                  "neighbour (closed form); effective spectral gap "
                  f"1 - bound = {_fmt(1 - f.mean_square_bound)}")
        else:
            what = "link" if args.node_churn is None else "node"
            print(f"{f.topology}, each {what} down with probability {_fmt(f.p)} per round "
                  f"({f.method}: {f.samples} failure patterns)")
        print(_table([
            ("E||e_t+1||^2 / E||e_t||^2 <=  lambda_2(E[W^T W])  (mean-square bound)",
             f.mean_square_bound),
            ("exact mean-square rate  rho(E[(W-J) x (W-J)])",
             "n > 16: not computed" if f.rate is None else f.rate),
            ("expected iterate  ||E[W] - J||^2  (mean-square scale, <= exact)",
             f.mean_rate**2),
            ("without failures (synchronous rounds of W)  ||W - J||^2", f.failure_free),
            ("largest standard error of an entry", f.stderr)]))
        return 0
    s = spectral(_topology_from(args), eps=1e-3 if args.eps is None else args.eps,
                 method=args.method or "auto")
    if args.json:
        print(json.dumps(s.as_dict()))
    else:
        print(_table(list(s.as_dict().items())))
    return 0


def _parse_consts(items: Sequence[str]) -> dict[str, float]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        try:
            if not sep:
                raise ValueError
            out[key.strip()] = float(value)
        except ValueError:
            raise FlatlabError(f"--const takes TERM=NUMBER (got {item!r})") from None
    return out


def _parse_exponents(text: str | None) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise FlatlabError(f"--exponents takes four numbers a1,b1,a2,b2 (got {text!r})") from None


#: Flags a bound cannot do without, by rate family: asked for together, as they are spelled.
_BOUND_FLAGS = {
    "choco": (("delta", "--delta D", "the compression quality in (0, 1]"),
              ("G2", "--G2 G", "the bound E||grad F_i||^2 <= G2")),
    "momentum-tracking": (("beta", "--beta B", "the momentum in [0, 1)"),
                          ("exponents", "--exponents a1,b1,a2,b2",
                           "the exponents of p and (1 - beta) in its two higher-order terms, "
                           "which Takezawa et al. (TMLR 2023) do not give in closed form")),
}


def _check_bound_flags(args: argparse.Namespace) -> None:
    """Every flag the asked-for bound needs, named at once, before anything is computed."""
    from flatlab.theory.bounds import bound_algorithms, rate_family

    if args.algorithm is None:
        network = "" if args.topology or (args.rho is not None and args.nodes) else (
            " and the network (--topology NAME --nodes N, or --rho R --nodes N)")
        raise FlatlabError(f"give --algorithm NAME{network}; accepted names: "
                           f"{', '.join(bound_algorithms())}")
    family = rate_family(args.algorithm)
    for fam, flags in (*_BOUND_FLAGS.items(), ("gradient-tracking", (("c", "--c C", ""),))):
        for attr, flag, _ in flags:
            if fam != family and getattr(args, attr) is not None:
                raise FlatlabError(f"{flag.split()[0]} is not used by {args.algorithm}'s bound "
                                   f"(it is {fam}'s); accepted: drop it")
    missing = [(flag, what) for attr, flag, what in _BOUND_FLAGS.get(family, ())
               if getattr(args, attr) is None]
    if missing:
        raise FlatlabError(f"{args.algorithm} needs " + " and ".join(
            f"{flag} ({what})" for flag, what in missing))
    if family == "centralized" and args.topology is None and args.nodes is None:
        raise FlatlabError("centralized needs --nodes N (or a --topology)")
    if family != "centralized" and args.topology is None and (args.rho is None
                                                              or args.nodes is None):
        raise FlatlabError("give the network: --topology NAME --nodes N, or --rho R with "
                           "--nodes N")


def _cmd_bounds(args: argparse.Namespace) -> int:
    from flatlab.theory import bound
    from flatlab.theory.bounds import ALGORITHMS

    _check_bound_flags(args)
    topo = _topology_from(args) if args.topology else None
    T, eps = args.T, args.eps
    if T is None and eps is None:
        T = 10_000
    b = bound(
        args.algorithm, n=args.nodes if topo is None else None, rho=args.rho, topology=topo,
        L=args.L, sigma2=args.sigma2, zeta2=args.zeta2, F0=args.F0, T=T, eps=eps,
        delta=args.delta, beta=args.beta, G2=args.G2, c=args.c,
        exponents=_parse_exponents(args.exponents), consts=_parse_consts(args.const),
    )
    if args.json:
        print(json.dumps(b.as_dict()))
        return 0
    errors = b.mode == "error"
    print(f"{b.algorithm}: {b.criterion}")
    shared = [a for a, rate in ALGORITHMS.items() if rate == b.family]
    if len(shared) > 1:
        print(f"rate: {b.family} (one bound for {', '.join(shared)})")
    if errors:
        print(f"terms (error after T = {_fmt(T)}; constants: {b.constants})")
    else:
        print(f"terms (iterations T for each term alone to reach eps = {eps:g}; constants: "
              f"{b.constants})")
    width = max(len(r.name) for r in b.rate)
    for r in b.rate:
        formula = r.formula if errors else f"T at which {r.formula} = eps"
        print(f"  {r.name:<{width}}  {_fmt(b.terms[r.name]):>12}   {formula}")
    total = (("total (error after T)", b.total) if errors else
             ("total (sum of the terms' T: the papers' T(eps) form)", b.total))
    print(_table([
        total, ("dominant", b.dominant),
        ("iterations to eps (smallest T whose whole bound <= eps)",
         None if b.iterations is None else math.ceil(b.iterations)),
        ("transient iterations", b.transient_iterations),
        *((k, v) for k, v in b.extras.items()),
    ]))
    print(f"source: {b.rate[0].source}")
    for note in b.notes:
        print(f"note: {note}")
    return 0


def _parse_numbers(text: str | None, flag: str, what: str) -> list[float] | None:
    """A comma-separated list of numbers (``1,0.5,0.25``), or ``None`` when not given."""
    if text is None:
        return None
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise FlatlabError(f"{flag} takes {what} separated by commas, e.g. 1,0.5 "
                           f"(got {text!r})") from None


def _read_matrix(path: str):
    """A numeric CSV (one row per node, one column per direction) as an ``[n, m]`` array."""
    import warnings

    import numpy as np

    accepted = "accepted: a CSV of numbers, one row per node and one column per direction"
    if not Path(path).exists():
        raise FlatlabError(f"--heterogeneity {path}: no such file; {accepted}")
    if not Path(path).is_file():
        raise FlatlabError(f"--heterogeneity {path}: not a file; {accepted}")
    try:
        with warnings.catch_warnings():  # an empty file warns; it is refused below
            warnings.simplefilter("ignore", UserWarning)
            z = np.loadtxt(path, delimiter=",", ndmin=2, dtype=float)
    except ValueError as e:
        why = str(e).split(";")[0]  # numpy's reason, without its advice on usecols
        raise FlatlabError(f"--heterogeneity {path}: not a CSV of numbers ({why}); "
                           f"{accepted}") from None
    if z.size == 0:
        raise FlatlabError(f"--heterogeneity {path}: the file is empty; {accepted}")
    return z


def _cmd_disagreement(args: argparse.Namespace) -> int:
    from flatlab.theory import stationary_disagreement

    missing = [flag for flag, value in (("--lr ETA", args.lr), ("--curvature h1,h2,...",
                                                                args.curvature),
                                        ("--noise s (or s1,s2,...)", args.noise))
               if value is None]
    has_topology = args.topology is not None
    if has_topology == (args.eigenvalues is not None):
        if has_topology:
            raise FlatlabError("give the network once: --topology NAME --nodes N or "
                               "--eigenvalues 1,l2,...,ln, not both")
        missing.append("the network (--topology NAME --nodes N, or --eigenvalues 1,l2,...,ln)")
    if missing:
        raise FlatlabError("disagreement needs " + " and ".join(missing))
    eigenvalues = _parse_numbers(args.eigenvalues, "--eigenvalues", "the eigenvalues of W")
    if eigenvalues is not None and args.nodes is not None and args.nodes != len(eigenvalues):
        raise FlatlabError(f"--nodes {args.nodes} but --eigenvalues gives {len(eigenvalues)} "
                           "values; accepted: all n eigenvalues of W (1 included)")
    curvature = _parse_numbers(args.curvature, "--curvature", "the curvatures h_j")
    noise = _parse_numbers(args.noise, "--noise", "the noise variances s_j (or one s)")
    heterogeneity = None if args.heterogeneity is None else _read_matrix(args.heterogeneity)
    p = stationary_disagreement(
        args.lr, curvature, noise,
        topology=_topology_from(args) if has_topology else None, eigenvalues=eigenvalues,
        form=args.form, local_steps=args.local_steps, bulk_hs=args.bulk_hs,
        heterogeneity=heterogeneity, method=args.method)
    if args.json:
        print(json.dumps(p.as_dict()))
        return 0
    print(f"{p.form} on {p.inputs['topology']}, lr = {_fmt(p.inputs['lr'])}")
    print(_table([
        ("E tr(H Sigma)  (curvature_disagreement)", p.curvature_disagreement),
        ("  directions (noise)", p.terms["directions"]),
        ("  bulk (small-step limit)", p.terms["bulk"]),
        ("  heterogeneity (constant offsets)", p.terms["heterogeneity"]),
        ("E Xi^2  (consensus_distance, directions)", p.consensus_distance),
        ("stability margin (1 - contraction per step, geometric mean over the period)",
         p.stability_margin),
        ("largest one-step factor (step_contraction)", p.step_contraction),
        ("method", p.method),
    ]))
    if p.inputs["period"] > 1:
        print(f"per phase r: after s = r (mod {p.inputs['period']}) steps; r a multiple of "
              f"local_steps = {p.inputs['local_steps']}: right after a gossip round")
        rows = [("r", "tr(H Sigma)", "Xi^2")]
        rows += [(str(r), _fmt(c), _fmt(x)) for r, (c, x) in enumerate(zip(
            p.per_phase["curvature_disagreement"], p.per_phase["consensus_distance"],
            strict=True))]
        _print_rows([("  " + a, b, c) for a, b, c in rows])
    print("per direction")
    rows = [("h", "s", "tr(H Sigma)", "Xi^2")]
    rows += [(_fmt(h), _fmt(s), _fmt(c), _fmt(x)) for h, s, c, x in zip(
        p.inputs["curvature"], p.inputs["noise"], p.per_direction["curvature_disagreement"],
        p.per_direction["consensus_distance"], strict=True)]
    _print_rows([("  " + r[0], *r[1:]) for r in rows])
    print(f"source: {p.source}")
    for note in p.notes:
        print(f"note: {note}")
    return 0


def _cmd_topologies(args: argparse.Namespace) -> int:
    from flatlab.topology import catalog

    gens = catalog()
    def faults(g: Any) -> list[str]:  # topology.faults models a run on it can train under
        if g.time_varying:
            return []
        return ["message_drops"] if g.directed else ["link_failures", "node_churn",
                                                     "message_drops", "async_gossip"]

    if args.json:
        print(json.dumps([{"name": g.name, "size": g.size, "params": list(g.params),
                           "weights": list(g.weight_rules), "directed": g.directed,
                           "time_varying": g.time_varying, "random": g.random,
                           "faults": faults(g)}
                          for g in gens], indent=1))
        return 0
    rows = [("name", "size condition", "parameters", "weights", "kind")]
    for g in gens:
        kind = ", ".join(k for k, on in (("directed", g.directed),
                                         ("time-varying", g.time_varying),
                                         ("random", g.random)) if on) or "-"
        rows.append((g.name, g.size, ", ".join(g.params) or "-", ", ".join(g.weight_rules), kind))
    _print_rows(rows)
    print("\nfiles: edges:PATH (two columns i j), arcs:PATH (directed i -> j), adjacency:PATH "
          "(square symmetric), matrix:PATH (W as given); .npy, .npz or text.\nweights: "
          "metropolis (default), max-degree, uniform (regular graphs); --lazy for (I + W)/2; "
          "push-sum: column-stochastic P[j, i] = 1/(outdeg_i + 1), for sgp (and centralized).")
    print("faults (topology.faults, on a static graph): link_failures and node_churn (undirected, "
          "metropolis or max-degree weights, recomputed on what is up), message_drops (any "
          "doubly stochastic W; consensus and diffusion only), async_gossip (AD-PSGD's "
          "pairwise averaging with a random neighbour, events ticks a round; algorithm "
          "ad-psgd); train.stragglers and train.staleness (late gradients) on any graph; "
          "topology.delays (messages up to tau rounds late; doubly stochastic gossip, simulated "
          "backend).")
    return 0


def _print_rows(rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


def _plain(text: str) -> str:
    """A docstring line as plain text: ``literal`` and :role:`target` markup removed."""
    text = re.sub(r":\w+:`~?([^`]+)`", r"\1", text)
    return text.replace("``", "")


def _cmd_algorithms(args: argparse.Namespace) -> int:
    from dataclasses import fields

    from flatlab import algorithms

    inv: dict[str, list[str]] = {}
    for alias, name in algorithms.aliases().items():
        inv.setdefault(name, []).append(alias)
    items = []
    for name in algorithms.available():
        cls = algorithms.get(name)
        items.append({"name": name, "aliases": sorted(inv.get(name, [])),
                      "params": {f.name: f.default for f in fields(cls)}, "exact": cls.exact,
                      "summary": _plain((cls.__doc__ or "").strip().splitlines()[0])
                      .rstrip(".")})
    if args.json:
        print(json.dumps(items, indent=1, default=str))
        return 0
    rows = [("name", "aliases", "hyper-parameters (defaults)", "exact", "summary")]
    for a in items:
        hp = ", ".join(f"{k}={v}" for k, v in a["params"].items()) or "-"
        rows.append((a["name"], ", ".join(a["aliases"]) or "-", hp,
                     "yes" if a["exact"] else "no", a["summary"]))
    _print_rows(rows)
    return 0


def _cmd_datasets(args: argparse.Namespace) -> int:
    from flatlab import data

    if args.json:
        print(json.dumps([{"name": k, **v} for k, v in data.catalog().items()], indent=1,
                         default=str))
        return 0
    for name, info in data.catalog().items():
        extra = "; needs local files" if info.get("local_files") else ""
        print(f"{name}: {info['description']} [{info['shapes']}]{extra}")
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    from flatlab import models

    if args.json:
        print(json.dumps([{"name": k, "description": v.description}
                          for k, v in models.catalog().items()], indent=1))
        return 0
    for name, info in models.catalog().items():
        print(f"{name}: {info.description}")
    return 0


def _cmd_measures(args: argparse.Namespace) -> int:
    from flatlab.experiment.config import BASIC_METRICS
    from flatlab.measures import named

    items = named.describe()
    if args.json:
        print(json.dumps(items, indent=1))
        return 0
    for m in items:
        default = " (default)" if m["name"] in BASIC_METRICS else ""
        print(f"{m['name']}{default}: {m['summary']} [on {m['on']}]")
        print(f"    metrics: {', '.join(m['metrics'])}")
        settings = ", ".join(f"{k}={v}" for k, v in m["settings"].items())
        print(f"    settings: {settings}")
        if m["thin"] > 1:
            print(f"    without its own every: every {m['thin']}th measurement")
    print("always recorded: lr, comm_bytes (all nodes, so far), batch_loss (node mean of the "
          "minibatch losses since the last measurement). Settings: measure.options.NAME.KEY=V")
    return 0


def _output_file(path: str, flag: str, kinds: Sequence[str] = ()) -> Path:
    """A file to write: its folder must exist, it must not be a folder, its suffix known."""
    p = Path(path)
    if p.is_dir():
        raise FlatlabError(f"{flag} {p} is a folder; accepted: a file name")
    if not p.absolute().parent.is_dir():
        raise FlatlabError(f"{flag} {p}: folder {p.parent} does not exist; create it first")
    if kinds and p.suffix.lstrip(".").lower() not in kinds:
        raise FlatlabError(f"{flag} {p}: unknown file type {p.suffix or '(none)'}; accepted: "
                           f"{', '.join('.' + k for k in kinds)}")
    return p


def _output_dir(path: str | Path, flag: str) -> Path:
    """A folder to write into (created if missing): neither it nor a parent may be a file."""
    p = Path(path)
    for q in (p, *p.absolute().parents):
        if q.exists():
            if not q.is_dir():
                raise FlatlabError(f"{flag} {p}: {q} is a file; accepted: a folder (created if "
                                   "missing)")
            break
    return p


def _threads_arg(text: str) -> str:
    """``--threads``: auto or a whole number >= 1 (checked here, applied as ``threads=``)."""
    if text != "auto" and not (text.isdigit() and int(text) >= 1):
        raise argparse.ArgumentTypeError(f"{text!r} is not auto or an integer >= 1")
    return text


def _with_flags(args: argparse.Namespace) -> list[str]:
    """The overrides with the flags that set fields (a field given both ways is refused).

    ``--threads N`` is ``threads=N``, ``--tensorboard`` is ``log.tensorboard=true``.
    """
    given = {o.split("=", 1)[0].strip() for o in args.overrides}
    extra = []
    for key, flag, value in (("threads", "--threads", args.threads),
                             ("log.tensorboard", "--tensorboard",
                              "true" if args.tensorboard else None)):
        if value is None:
            continue
        if key in given:
            raise FlatlabError(f"{key} is given both as {flag} and as {key}=; give it once")
        extra.append(f"{key}={value}")
    return [*args.overrides, *extra]


def _cmd_run(args: argparse.Namespace) -> int:
    from flatlab.experiment import load_config, run, slurm

    resources = slurm.resources_from(args)  # a SLURM option without --engine slurm: refused
    cfg = load_config(args.config, _with_flags(args))
    out = _output_dir(args.out if args.out else Path("runs") / cfg.name, "--out")
    if resources is not None:
        return _run_on_slurm(args, cfg, out, resources)
    res = run(cfg, out, progress=not args.no_progress, resume=not args.restart)
    if res.main:  # in a distributed run, rank 0 speaks for all
        from flatlab.experiment.results import run_line

        print(f"{res.status} at step {res.step}: {res.path}"
              + (f" ({res.message})" if res.message else "")
              + ("" if res.ran or res.mended else
                 " (finished before: nothing ran; --restart to train again)")
              + (f" (mended: {res.mended})" if res.mended else ""))
        print(run_line(res.path))
    return 0 if res.status in ("done", "diverged") else 1


def _run_on_slurm(args: argparse.Namespace, cfg: Any, out: Path, resources: Any) -> int:
    """``flatlab run --engine slurm``: the run as one SLURM job (:func:`slurm.submit_run`)."""
    from flatlab.experiment import slurm
    from flatlab.experiment.results import run_line

    row = slurm.submit_run(cfg, out, resources, resume=not args.restart, wait=not args.no_wait)
    print(f"{row['status']} at step {row['step']}: {out}"
          + (f" ({row['message']})" if row["message"] else "")
          + ("" if row["ran"] else " (finished before: nothing ran; --restart to train again)"))
    if row["status"] in ("done", "diverged"):
        print(run_line(out))
    return 0 if row["status"] in ("done", "diverged", "queued") else 1


def _cmd_sweep(args: argparse.Namespace) -> int:
    from flatlab.experiment.sweep import load_sweep, run_sweep

    if args.jobs < 1:
        raise FlatlabError(f"--jobs must be an integer >= 1 (got {args.jobs})")
    from flatlab.experiment import slurm
    from flatlab.experiment.sweep import expand

    spec = load_sweep(args.spec, _with_flags(args))
    if args.out:
        spec.out = _output_dir(args.out, "--out")
    if args.status or args.cancel:
        names = [name for name, _ in expand(spec)]
        if args.cancel:
            print(f"cancelled {slurm.cancel(spec.out)} SLURM jobs: {spec.out}")
        counts = slurm.status_counts(spec.out, names)
        print(", ".join(f"{v} {k}" for k, v in sorted(counts.items())) + f": {spec.out}")
        return 0
    resources = slurm.resources_from(args)
    if resources is not None and args.jobs != 1:
        raise FlatlabError(f"--jobs {args.jobs} runs on this machine; on SLURM, --max-running "
                           "says how many runs go at once; accepted: --engine slurm without "
                           "--jobs, or --engine local --jobs N")
    df = run_sweep(spec, progress=not args.no_progress, jobs=args.jobs, slurm=resources,
                   wait=not args.no_wait)
    counts = df.status.value_counts().to_dict()
    finished = df.status.isin(["done", "diverged"])
    skipped = int((df.skipped & finished).sum())
    held = int((df.skipped & df.status.isin(["queued", "running"])).sum())
    print(", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
          + (f" ({skipped} finished before, skipped)" if skipped else "")
          + (f" ({held} still held by SLURM, not submitted again)" if held else "")
          + f": {spec.out}")
    return 0 if counts.get("failed", 0) == 0 else 1


#: Exit status of ``results`` and ``plot`` when a run of the sweep could not be read (it was left
#: out, and named on stderr): the readable runs were shown, but not all of the sweep.
EXIT_UNREADABLE = 1

#: The help's note on runs that cannot be read (``results`` and ``plot``).
_UNREADABLE_HELP = ("A run of a sweep whose files cannot be read (a damaged status.json, "
                    "config.yaml or metrics.parquet) is left out: the other runs are shown, one "
                    "line on stderr names each run left out, its file and what is wrong, and the "
                    "exit status is 1. A run directory given directly that cannot be read is "
                    "refused in one line, exit status 2.")


def _left_out(command: str, unreadable: Sequence[Any]) -> int:
    """One line on stderr per run left out; the exit status (0 when none)."""
    sys.stdout.flush()  # the table first, then what it lacks
    for u in unreadable:
        print(f"flatlab {command}: left out run {u.run}: {u.message}", file=sys.stderr)
    return EXIT_UNREADABLE if unreadable else 0


def _cmd_results(args: argparse.Namespace) -> int:
    import pandas as pd

    from flatlab.experiment.io import atomic_write
    from flatlab.results import summary_readable

    csv = _output_file(args.csv, "--csv") if args.csv else None
    df, unreadable = summary_readable(args.path)
    if df is not None:
        if csv is not None:  # atomic: a full disk leaves no half (or empty) file behind
            atomic_write(csv, lambda p: df.to_csv(p, index=False))
        with pd.option_context("display.width", 200, "display.max_columns", 30):
            print(df.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    return _left_out(args.command, unreadable)


def _cmd_plot(args: argparse.Namespace) -> int:
    import matplotlib
    import matplotlib.figure

    matplotlib.use("Agg")
    from flatlab.experiment.io import atomic_write
    from flatlab.plots import training_curves
    from flatlab.results import load_readable

    if not Path(args.path).exists():
        raise FlatlabError(f"{args.path} does not exist; accepted: a run or sweep directory")
    kinds = sorted(matplotlib.figure.Figure().canvas.get_supported_filetypes())
    out = _output_file(args.out if args.out else str(Path(args.path) / "curves.png"), "--out",
                       kinds)
    df, unreadable = load_readable(args.path)
    if df is not None:
        fig = training_curves(df, metrics=args.metric or None, hue=args.hue)
        atomic_write(out, lambda p: fig.savefig(p, dpi=150, format=out.suffix[1:].lower()))
        print(f"wrote {out}")
    return _left_out(args.command, unreadable)


def _cmd_demo(args: argparse.Namespace) -> int:
    from flatlab.demo import run_demo

    if args.jobs < 1:
        raise FlatlabError(f"--jobs must be >= 1 (got {args.jobs})")
    run_demo(_output_dir(args.out, "--out"), small=args.small, progress=not args.no_progress,
             workers=args.jobs)
    return 0


def _events(text: str) -> int | str:
    """``--async-gossip``'s ticks per round: an integer, or ``n`` (the number of nodes)."""
    return text if text == "n" else int(text)


_events.__name__ = "integer"  # argparse's message names the type: "invalid integer value"


def _parser() -> tuple[_Parser, dict[str, argparse.ArgumentParser]]:
    parser = _Parser(prog="flatlab", description="Flatness versus optimization in "
                     "decentralized learning: training, topologies, spectral gaps and bounds.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("spectral", help="spectral summary of a topology")
    _add_topology_args(p)
    p.add_argument("--eps", type=float, default=None,
                   help="accuracy of the mixing time (default 1e-3)")
    p.add_argument("--method", default=None, help="auto (default), fft, dense or sparse")
    p.add_argument("--link-failures", type=float, metavar="P",
                   help="each link down with probability P per round (Metropolis weights on "
                        "the surviving graph): the mean-square bound and the exact rate")
    p.add_argument("--node-churn", type=float, metavar="P",
                   help="each node offline with probability P per round (it keeps its value; "
                        "the online nodes mix among themselves)")
    p.add_argument("--async-gossip", type=_events, nargs="?", const="n", metavar="EVENTS",
                   help="AD-PSGD's asynchronous pairwise gossip, EVENTS ticks a round (default "
                        "n): E[W], the mean-square bound and the exact rate, in closed form")
    p.add_argument("--samples", type=int, default=20000,
                   help="draws when the failure patterns are too many to sum (default 20000)")
    p.add_argument("--json", action="store_true", help="one JSON object")
    p.set_defaults(func=_cmd_spectral)

    p = sub.add_parser("bounds", help="terms of a convergence bound")
    p.add_argument("--algorithm", help="(required) a registry name: centralized; consensus, "
                   "diffusion, diffusion-cta (one DSGD bound); gradient-tracking, "
                   "momentum-tracking, choco; or lower-bound (aliases such as dsgd too)")
    _add_topology_args(p, required=False)
    p.add_argument("--rho", type=float, help="||W - J||_2 instead of a topology")
    for name, default, helptext in (("--L", 1.0, "smoothness"), ("--sigma2", 1.0, "noise"),
                                    ("--zeta2", 1.0, "heterogeneity"),
                                    ("--F0", 1.0, "f(x0) - f*")):
        p.add_argument(name, type=float, default=default, help=f"{helptext} (default 1)")
    p.add_argument("--T", type=float, help="iterations (default 10000 when no --eps)")
    p.add_argument("--eps", type=float, help="target accuracy")
    p.add_argument("--delta", type=float, help="compression quality (choco)")
    p.add_argument("--beta", type=float, help="momentum (momentum-tracking)")
    p.add_argument("--G2", type=float, help="gradient second moment (choco)")
    p.add_argument("--c", type=float, help="gradient tracking's c")
    p.add_argument("--exponents", help="momentum-tracking a1,b1,a2,b2")
    p.add_argument("--const", action="append", default=[], metavar="TERM=X",
                   help="multiplier of one term (repeatable)")
    p.add_argument("--json", action="store_true", help="one JSON object")
    p.set_defaults(func=_cmd_bounds)

    p = sub.add_parser("disagreement", help="predicted stationary disagreement curvature "
                       "E tr(H Sigma) and consensus distance of DSGD near a minimum")
    _add_topology_args(p, required=False)
    p.add_argument("--eigenvalues", metavar="1,L2,...",
                   help="all n eigenvalues of a symmetric W (1 included) instead of a topology")
    p.add_argument("--lr", type=float, help="(required) step size")
    p.add_argument("--curvature", metavar="H1,H2,...",
                   help="(required) Hessian eigenvalues h_j >= 0 of the explicit directions")
    p.add_argument("--noise", metavar="S or S1,S2,...",
                   help="(required) gradient-noise variance s_j along each direction, or one s")
    p.add_argument("--form", default="diffusion",
                   help="diffusion (ATC, default), consensus (DGD) or diffusion-cta")
    p.add_argument("--local-steps", type=int, default=1,
                   help="gossip every H steps (default 1)")
    p.add_argument("--bulk-hs", type=float, default=0.0,
                   help="remaining sum of h_j s_j, in the small-step limit (default 0)")
    p.add_argument("--heterogeneity", metavar="FILE.csv",
                   help="the nodes' constant gradient offsets along each direction: a CSV, one "
                        "row per node, one column per direction, each column summing to 0 "
                        "(needs --topology)")
    p.add_argument("--method", default="auto", help="auto, eigen or dense")
    p.add_argument("--json", action="store_true", help="one JSON object")
    p.set_defaults(func=_cmd_disagreement)

    for name, func, helptext in (
            ("topologies", _cmd_topologies, "list topology generators"),
            ("algorithms", _cmd_algorithms, "list algorithms"),
            ("datasets", _cmd_datasets, "list datasets"), ("models", _cmd_models, "list models"),
            ("measures", _cmd_measures, "list the named measures a run can schedule")):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("--json", action="store_true", help="the list as JSON")
        p.set_defaults(func=func)

    p = sub.add_parser("run", help="train one run from a YAML config",
                       usage="flatlab run CONFIG [key=value ...] [options]",
                       epilog="key=value overrides (e.g. optim.lr=0.1 algorithm.name=consensus) "
                              "may stand anywhere after the command")
    p.add_argument("config", help="YAML config file (see configs/)")
    p.add_argument("--out", help="run directory (default runs/<name>)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--restart", action="store_true",
                   help="start over instead of resuming from the checkpoint")
    p.add_argument("--threads", type=_threads_arg,
                   help="CPU threads (the same as threads=N; default auto: one)")
    p.add_argument("--tensorboard", action="store_true",
                   help="also log to TensorBoard event files in the run directory")
    from flatlab.slurm_options import add_arguments

    add_arguments(p, "the run as one job of --nodes x --tasks-per-node processes "
                     "(backend=distributed)", one_run=True)
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("sweep", help="a resumable grid of runs from a sweep spec",
                       usage="flatlab sweep SPEC [key=value ...] [grid.KEY=[v1,v2] ...] "
                             "[options]",
                       epilog="key=value overrides apply to every run; grid.KEY=[v1,v2] sets "
                              "one axis of the grid; both may stand anywhere after the command")
    p.add_argument("spec", help="sweep YAML (base, grid, overrides, out)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--out", help="sweep folder (default: the spec's out, or runs/<name>)")
    p.add_argument("--jobs", type=int, default=1,
                   help="runs in parallel, in separate processes (default 1)")
    p.add_argument("--threads", type=_threads_arg,
                   help="CPU threads of each run (the same as threads=N; default auto: one)")
    p.add_argument("--tensorboard", action="store_true",
                   help="every run also logs to TensorBoard (tensorboard --logdir OUT)")
    from flatlab.slurm_options import add_arguments

    add_arguments(p, "the sweep's runs")
    g = p.add_argument_group("the sweep's SLURM jobs")
    g.add_argument("--status", action="store_true",
                   help="count the sweep's queued, running, done and failed runs; run nothing")
    g.add_argument("--cancel", action="store_true",
                   help="cancel the sweep's queued and running SLURM jobs; run nothing")
    p.set_defaults(func=_cmd_sweep)

    p = sub.add_parser("results", help="one line per run: status and last metrics",
                       epilog=_UNREADABLE_HELP)
    p.add_argument("path", help="a run or sweep directory")
    p.add_argument("--csv", help="also write the table here")
    p.set_defaults(func=_cmd_results)

    p = sub.add_parser("plot", help="training curves from a run or sweep directory",
                       epilog=_UNREADABLE_HELP)
    p.add_argument("path", help="a run or sweep directory")
    p.add_argument("--metric", action="append", help="metric to plot (repeatable)")
    p.add_argument("--hue", default="algorithm.name", help="config column for colours")
    p.add_argument("--out", help="figure file (default PATH/curves.png)")
    p.set_defaults(func=_cmd_plot)

    p = sub.add_parser("demo", help="the main job: the large-batch regime on mnist1d, "
                       "flatness against optimization of centralized SGD and diffusion at a "
                       "small and a large batch")
    p.add_argument("--out", default="results/demo", help="output folder (default results/demo)")
    p.add_argument("--small", action="store_true", help="a quick, tiny version")
    p.add_argument("--no-progress", action="store_true", help="no progress lines")
    p.add_argument("--jobs", type=int, default=2, help="runs in parallel (default 2)")
    p.set_defaults(func=_cmd_demo)
    return parser, dict(sub.choices)


def _overrides(args: argparse.Namespace, extra: list[str], parser: argparse.ArgumentParser
               ) -> list[str]:
    """The ``key=value`` overrides, wherever they stood; anything else unknown is refused.

    For ``run`` and ``sweep`` the config (spec) is the first word that is not ``key=value``
    (or is an existing file), so ``flatlab run optim.lr=0.1 CONFIG`` works too.
    """
    field = {"run": "config", "sweep": "spec"}.get(args.command)
    stray = [a for a in extra if a.startswith("-")]
    if field is None:
        if extra:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        return []
    words = [getattr(args, field), *(a for a in extra if not a.startswith("-"))]

    def is_override(w: str) -> bool:
        return "=" in w and not Path(w).is_file()

    configs = [w for w in words if not is_override(w)]
    if stray or len(configs) > 1:
        parser.error(f"unrecognized arguments: {' '.join(stray or configs[1:])}"
                     + ("" if stray else f" (not key=value, e.g. optim.lr=0.1: one "
                                          f"{field.upper()} and key=value overrides are "
                                          "accepted)"))
    if not configs:
        parser.error(f"the {field.upper()} file is missing (the words given are all "
                     "key=value overrides)")
    at = words.index(configs[0])
    setattr(args, field, configs[0])
    return words[:at] + words[at + 1:]


#: How long a rank > 0 waits before leaving on bad input, so that rank 0 has printed it.
_SILENT_RANK_DELAY_S = 3.0


def _speaks() -> bool:
    """Whether this process prints errors: always, except ranks > 0 under torchrun."""
    return os.environ.get("RANK", "0") in ("", "0")


def _matplotlib_config_dir() -> None:
    """Give matplotlib a private cache folder where the user's is not writable (a read-only HOME).

    matplotlib then makes a temporary one itself, but says so in two warning lines on every
    command; flatlab makes it quietly (``MPLCONFIGDIR``, set only when the user has not).
    """
    if os.environ.get("MPLCONFIGDIR"):
        return
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    wanted = Path(base) / "matplotlib"
    try:
        wanted.mkdir(parents=True, exist_ok=True)
        if os.access(wanted, os.W_OK):
            return
    except OSError:
        pass
    import tempfile

    os.environ["MPLCONFIGDIR"] = tempfile.mkdtemp(prefix="flatlab-matplotlib-")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status.

    Bad input (a :class:`~flatlab.errors.FlatlabError`): one line on stderr, status 2 (under
    ``torchrun`` printed by rank 0 only, status 2 on every rank). A lost rank: one line, status 1.
    Another failure to read or write a file: one line, status 1. ``results`` or ``plot`` over a
    sweep with runs that cannot be read: the others shown, one line per run left out, status 1.
    Output into a closed pipe (``flatlab bounds ... | head``): silent, status 141 (128 + SIGPIPE,
    as other tools end). Ctrl-C (SIGINT): one line, status 130 (128 + SIGINT); a run it stops is
    left ``interrupted`` (not failed) and resumes from its last checkpoint.
    """
    _matplotlib_config_dir()
    for stream in (sys.stdout, sys.stderr):  # a path Python decoded with surrogate escapes (a
        # non-ASCII folder in a plain-ASCII locale) is printed as the bytes it was, not refused
        if getattr(stream, "errors", None) == "strict" and hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="surrogateescape")
    parser, subparsers = _parser()
    args, extra = parser.parse_known_args(argv)
    args.overrides = _overrides(args, extra, subparsers.get(getattr(args, "command", ""), parser))
    try:
        code = args.func(args)
        sys.stdout.flush()  # inside the try: a closed pipe is found here, not at exit
        return code
    except FlatlabError as err:
        if _speaks():
            print(f"flatlab {args.command}: error: {err}", file=sys.stderr)
        else:
            # every rank finds the same bad input; torchrun stops the others at the first exit,
            # so a silent rank leaving first could kill rank 0 before it prints the one line
            time.sleep(_SILENT_RANK_DELAY_S)
        return EXIT_USAGE
    except KeyboardInterrupt:  # Ctrl-C: one line, as SIGTERM ends a run, and 128 + SIGINT
        if _speaks():
            print(f"\nflatlab {args.command}: interrupted (Ctrl-C); what finished is kept and "
                  "the same command resumes the rest from its last checkpoint", file=sys.stderr)
        return EXIT_INTERRUPT
    except RankLostError as err:  # a distributed run lost a process: the run failed, not the input
        print(f"flatlab {args.command}: {err}", file=sys.stderr)
        sys.stdout.flush()
        sys.stderr.flush()
        # leave at once: tearing down a process group whose peers are gone can block for seconds
        os._exit(1)
    except BrokenPipeError:
        # the reader went away: send what is left to /dev/null so that exit does not fail again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + 13
    except OSError as err:
        if _speaks():
            where = f" {err.filename}" if getattr(err, "filename", None) else ""
            print(f"flatlab {args.command}: error:{where} {err.strerror or err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
