"""Many runs on a SLURM cluster: each run an element of a job array, submitted through submitit.

flatlab hands its runs to the cluster's scheduler rather than growing its own: the runs a sweep
plans (:func:`flatlab.experiment.many.run_many`: every config validated, finished runs skipped)
go to ``sbatch --array`` through `submitit <https://github.com/facebookincubator/submitit>`_,
with a limit on how many run at once and the resources a user asks for (partition, minutes,
CPUs, memory, GPUs, account). Each element runs :func:`flatlab.experiment.run` on its run
folder and writes its output to ``slurm.log`` in that folder.

**Truth from the run folders.** A run's state is its ``status.json``; while a job is queued or
running (no status yet, or a status another host writes) the scheduler says so: the jobs a
sweep submitted are recorded in ``<sweep>/.slurm/jobs.json`` and read back with ``squeue`` (no
accounting, no ``sacct``). A rerun of the sweep skips finished runs, does not submit a run whose
job is still queued or running, and resubmits the missing and the failed. Interrupting a
waiting sweep (Ctrl-C) cancels its jobs (``scancel``) and leaves resumable folders; so does
``flatlab sweep SPEC --cancel``; ``--status`` counts queued, running, done and failed runs.

**One distributed run as one job** (:func:`submit_run`, ``flatlab run CONFIG --engine slurm
--nodes N --tasks-per-node T``): the run's ``N·T`` processes are the tasks of one SLURM job;
each takes its rank and the rendezvous (the job's first host, a port drawn from the job id)
from SLURM's environment and trains its rows with ``backend: distributed``, as under
``torchrun``. Its output goes to ``slurm.rank<R>.log`` in the run folder.

submitit pickles the job (the validated config and the run folder) into ``<sweep>/.slurm``
and reads back the result it writes there: files flatlab itself wrote, never a user's.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flatlab.errors import ConfigError, FlatlabError
from flatlab.experiment import rundir
from flatlab.experiment.config import RunConfig, load_config, to_dict
from flatlab.experiment.io import write_text
from flatlab.experiment.runner import preflight, run

__all__ = ["SlurmResources", "check_slurm", "check_run", "submit_and_wait", "submit_run",
           "queued", "status_counts", "cancel", "JOBS_FILE", "resources_from"]

#: Where a sweep keeps submitit's files and the record of its jobs.
JOBS_FILE = Path(".slurm") / "jobs.json"


@dataclass(frozen=True)
class SlurmResources:
    """What each run asks the scheduler for.

    Attributes:
        partition: The partition (``None``: the cluster's default).
        minutes: Time limit of each run, in minutes.
        cpus: CPUs of each run (its torch threads stay the config's ``threads``).
        mem_gb: Memory of each run in GB (``None``: the partition's default).
        gpus: GPUs of each run.
        account: The account to charge (``None``: the user's default).
        parallel: Runs of the array at once (``None``: as many as the cluster allows).
        nodes: Machines of one distributed run (:func:`submit_run`).
        tasks_per_node: Processes of one distributed run on each machine; ``gpus`` and
            ``cpus`` are then per machine and per process.
    """

    partition: str | None = None
    minutes: int = 60
    cpus: int = 1
    mem_gb: float | None = None
    gpus: int = 0
    account: str | None = None
    parallel: int | None = None
    nodes: int = 1
    tasks_per_node: int = 1

    def __post_init__(self) -> None:
        flags = {"minutes": "time", "tasks_per_node": "tasks-per-node"}
        for name, low in (("minutes", 1), ("cpus", 1), ("gpus", 0), ("nodes", 1),
                          ("tasks_per_node", 1)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ConfigError(f"--{flags.get(name, name)} must be an integer >= {low} "
                                  f"(got {v!r})")
        if self.mem_gb is not None and not self.mem_gb > 0:
            raise ConfigError(f"--mem must be a number of GB > 0 (got {self.mem_gb!r})")
        if self.parallel is not None and self.parallel < 1:
            raise ConfigError(f"--max-running must be an integer >= 1 (got {self.parallel!r})")

    def parameters(self) -> dict[str, Any]:
        """Submitit's ``update_parameters`` for these resources."""
        out: dict[str, Any] = {"timeout_min": self.minutes, "cpus_per_task": self.cpus,
                               "slurm_signal_delay_s": 30}
        if self.partition:
            out["slurm_partition"] = self.partition
        if self.mem_gb is not None:
            out["mem_gb"] = self.mem_gb
        if self.gpus:
            out["gpus_per_node"] = self.gpus
        if self.account:
            out["slurm_account"] = self.account
        if self.parallel is not None:
            out["slurm_array_parallelism"] = self.parallel
        if self.nodes > 1 or self.tasks_per_node > 1:
            out.update(nodes=self.nodes, tasks_per_node=self.tasks_per_node)
        return out

    def sbatch_flags(self) -> list[str]:
        """The same resources as ``sbatch`` flags (for ``sbatch --test-only``)."""
        flags = [f"--time={self.minutes}", f"--cpus-per-task={self.cpus}",
                 f"--nodes={self.nodes}", f"--ntasks-per-node={self.tasks_per_node}"]
        if self.partition:
            flags.append(f"--partition={self.partition}")
        if self.mem_gb is not None:
            flags.append(f"--mem={max(1, round(self.mem_gb * 1024))}M")
        if self.gpus:
            flags.append(f"--gpus-per-node={self.gpus}")
        if self.account:
            flags.append(f"--account={self.account}")
        return flags

    def describe(self) -> str:
        """What is asked, in words."""
        several = self.nodes > 1 or self.tasks_per_node > 1
        parts = [f"{self.cpus} CPU{'s' if self.cpus != 1 else ''} per "
                 f"{'process' if several else 'run'}"]
        if several:
            parts.append(f"{self.nodes} node{'s' if self.nodes != 1 else ''} x "
                         f"{self.tasks_per_node} process{'es' if self.tasks_per_node != 1 else ''}")
        if self.mem_gb is not None:
            parts.append(f"{self.mem_gb:g} GB")
        if self.gpus:
            parts.append(f"{self.gpus} GPU{'s' if self.gpus != 1 else ''} per node")
        if self.partition:
            parts.append(f"partition {self.partition}")
        return ", ".join(parts)


def _submitted(submit: Callable[[], Any]) -> Any:
    """``submit()``, with sbatch's refusal as one line."""
    import submitit

    try:
        return submit()
    except submitit.core.utils.FailedJobError as e:
        said = (str(e).strip().splitlines() or ["refused"])[-1]
        raise FlatlabError(f"--engine slurm: sbatch refused the job: {said}") from None


def resources_from(args: argparse.Namespace) -> SlurmResources | None:
    """What the SLURM options ask for (None with ``--engine local``).

    The options are :func:`flatlab.slurm_options.add_arguments`'.

    Raises:
        ConfigError: A SLURM option given with ``--engine local`` (it would be ignored).
    """
    if args.engine != "slurm":
        given = [flag for dest, (flag, default) in args.slurm_options.items()
                 if getattr(args, dest) != default]
        if given:
            raise ConfigError(f"{given[0]} is an option of --engine slurm; accepted: add "
                              "--engine slurm, or leave it out to run on this machine")
        return None
    tasks = getattr(args, "tasks_per_node", None)
    gpus_flag = args.slurm_options["gpus"][0]
    try:
        return _resources(args, tasks)
    except ConfigError as e:  # the message names the field's flag of flatlab sweep
        raise ConfigError(str(e).replace("--gpus ", f"{gpus_flag} ")) from None


def _resources(args: argparse.Namespace, tasks: int | None) -> SlurmResources:
    return SlurmResources(partition=args.partition, minutes=args.time, cpus=args.cpus,
                          mem_gb=args.mem, gpus=args.gpus, account=args.account,
                          parallel=getattr(args, "max_running", None),
                          nodes=getattr(args, "nodes", 1),
                          tasks_per_node=tasks if tasks is not None else max(1, args.gpus))


def check_slurm(resources: SlurmResources) -> None:
    """Refuse, before anything is submitted, what this cluster cannot run.

    Raises:
        FlatlabError: No ``sbatch`` on the PATH, no submitit, no answer from the controller, an
            unknown partition, or resources ``sbatch --test-only`` refuses (more CPUs, memory,
            GPUs or nodes than the cluster has); one line each.
    """
    for cmd in ("sbatch", "squeue", "sinfo", "scancel"):
        if shutil.which(cmd) is None:
            raise FlatlabError(f"--engine slurm needs SLURM's {cmd} on the PATH; accepted: "
                               "--engine local (runs on this machine), or a SLURM login node")
    try:
        import submitit  # noqa: F401 - an optional dependency: pip install "flatlab[cluster]"
    except ImportError:
        raise FlatlabError("--engine slurm needs the submitit package; install it with "
                           "pip install \"flatlab[cluster]\"") from None
    try:
        r = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True,
                           timeout=30)
    except subprocess.TimeoutExpired:
        raise FlatlabError(f"--engine slurm: sinfo gave no answer in 30 s; {NO_ANSWER}") from None
    if r.returncode:
        first = (r.stderr.strip().splitlines() or ["no answer"])[0]
        raise FlatlabError(f"--engine slurm: sinfo failed ({first}); {NO_ANSWER}")
    parts = [p.rstrip("*") for p in r.stdout.split()]
    if resources.partition and resources.partition not in parts:
        raise FlatlabError(f"--partition {resources.partition} is unknown on this cluster; "
                           f"accepted: {', '.join(parts) or 'none listed'}")
    # what the scheduler would refuse (CPUs, memory, GPUs, nodes it does not have): asked of
    # sbatch itself, which checks a job without submitting it
    r = subprocess.run(["sbatch", "--test-only", *resources.sbatch_flags(), "--wrap", "true"],
                       capture_output=True, text=True, timeout=30)
    if r.returncode:
        said = (r.stderr.strip().splitlines() or ["refused"])[-1]
        raise FlatlabError(f"--engine slurm: the cluster cannot give what was asked "
                           f"({resources.describe()}): {said}; accepted: at most what "
                           f"{_has(resources.partition)}")


def _has(partition: str | None) -> str:
    """What the partition's nodes have, as ``sinfo`` says (for a refusal's accepted part)."""
    cmd = ["sinfo", "-h", "-o", "%P|%D|%c|%m|%G"] + (["-p", partition] if partition else [])
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return "the partition has (sinfo)"
    rows = [line.split("|") for line in r.stdout.splitlines() if line.count("|") == 4]
    if partition is None:
        rows = [row for row in rows if row[0].endswith("*")] or rows[:1]
    if not rows:
        return "the partition has (sinfo)"
    name, nodes, cpus, mem, gres = rows[0]
    gpus = "no GPUs" if gres in ("(null)", "") else f"GRES {gres}"
    return (f"partition {name.rstrip('*')} has: {nodes} node(s) of {cpus} CPUs and {mem} MB, "
            f"{gpus}")


def _read_jobs(root: Path) -> dict[str, str]:
    p = root / JOBS_FILE
    if not p.is_file():
        return {}
    try:
        d = json.loads(p.read_text())
    except (OSError, ValueError):
        return {}
    return {str(k): str(v) for k, v in d.items()} if isinstance(d, dict) else {}


#: Job states in which the scheduler still holds a job (``squeue``'s long names).
HELD = {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED", "RESIZING"}
#: Those of them shown as ``queued`` (the others as ``running``).
WAITING = {"PENDING", "CONFIGURING", "REQUEUED"}


#: What to say when the scheduler does not answer.
NO_ANSWER = ("is the SLURM controller up, and does SLURM_CONF (or /etc/slurm/slurm.conf) name "
             "its config?")


def _squeue(ids: Sequence[str]) -> dict[str, str] | None:
    """``squeue``'s state of each job (``123_4`` for array elements) still held, by id.

    None when the scheduler did not answer (a job it no longer knows is simply not held).
    """
    if not ids:
        return {}
    if shutil.which("squeue") is None:
        return None
    try:
        r = subprocess.run(["squeue", "-h", "-r", "-o", "%i %T", "-j",
                            ",".join(sorted({j.split("_")[0] for j in ids}))],
                           capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return None
    if r.returncode:
        return {} if "Invalid job id" in r.stderr else None
    states = dict(line.split(None, 1) for line in r.stdout.splitlines() if " " in line)
    return {j: s.strip() for j, s in states.items() if s.strip() in HELD}


def _held(ids: Sequence[str]) -> dict[str, str]:
    """:func:`_squeue`, refusing to guess when the scheduler does not answer.

    Raises:
        FlatlabError: ``squeue`` is missing or got no answer.
    """
    held = _squeue(ids)
    if held is None:
        raise FlatlabError(f"squeue got no answer about jobs {', '.join(sorted(ids)[:3])}: "
                           f"{NO_ANSWER}")
    return held


#: Seconds a waiting command tolerates a scheduler that does not answer before it gives up.
PATIENCE_S = 300.0


def _wait_for(ids: Sequence[str]) -> dict[str, str]:
    """Poll until some job of ``ids`` is no longer held; the ones still held (may be empty).

    A scheduler that does not answer is asked again (a busy controller times out now and then)
    for up to :data:`PATIENCE_S` seconds; no answer is never read as "ended".

    Raises:
        FlatlabError: No answer for :data:`PATIENCE_S` seconds.
    """
    silent_since = None
    while True:
        held = _squeue(ids)
        if held is None:
            silent_since = silent_since or time.monotonic()
            if time.monotonic() - silent_since > PATIENCE_S:
                raise FlatlabError(f"squeue gave no answer for {PATIENCE_S:.0f} s while waiting "
                                   f"for SLURM jobs {', '.join(sorted(ids)[:3])} (they may "
                                   f"still run; the same command waits again): {NO_ANSWER}")
        else:
            silent_since = None
            held = {j: state for j, state in held.items() if j in ids}
            if len(held) < len(set(ids)):
                return held
        time.sleep(1.0)


def queued(root: Path) -> dict[str, str]:
    """Runs of the sweep at ``root`` whose job the scheduler still holds: name -> state."""
    jobs = _read_jobs(root)
    held = _held(list(jobs.values()))
    return {name: "queued" if held[j] in WAITING else "running"
            for name, j in jobs.items() if j in held}


def _run_logged(run_one: Callable[[Any], dict[str, Any]], job: Any) -> dict[str, Any]:
    """One array element: ``run_one(job)``, its output into ``slurm.log`` in the run folder."""
    job.path.mkdir(parents=True, exist_ok=True)
    with open(job.path / "slurm.log", "a") as log, contextlib.redirect_stdout(log), \
            contextlib.redirect_stderr(log):
        array = os.environ.get("SLURM_ARRAY_JOB_ID")
        job_id = (f"{array}_{os.environ.get('SLURM_ARRAY_TASK_ID')}" if array
                  else os.environ.get("SLURM_JOB_ID", "?"))  # one run: a plain job
        print(f"--- {time.strftime('%Y-%m-%dT%H:%M:%S')} job {job_id} on "
              f"{os.uname().nodename}", flush=True)
        return run_one(job)


def submit_and_wait(todo: Sequence[tuple[int, Any]], root: Path, resources: SlurmResources,
                    run_one: Callable[[Any], dict[str, Any]], *, wait: bool = True,
                    verbose: bool = True) -> list[tuple[int, dict[str, Any]]]:
    """Submit the planned runs as one job array; wait for them (unless ``wait`` is false).

    Args:
        todo: ``(row index, job)`` of :func:`flatlab.experiment.many.run_many`'s plan.
        root: The sweep folder (``.slurm/`` goes there).
        resources: What each run asks for.
        run_one: What an element runs on its job (a module-level function, pickled by name).
        wait: Wait for every run and print one line as each ends (Ctrl-C cancels them).
        verbose: Print those lines.

    Returns:
        ``(row index, row)`` of every run: its final row when waited for, else ``queued``.
    """
    import submitit

    logging.getLogger("submitit").setLevel(logging.ERROR)  # its sacct probes: we ask squeue
    if not todo:
        return []
    folder = root / ".slurm"
    folder.mkdir(parents=True, exist_ok=True)
    ex = submitit.AutoExecutor(folder=folder / "%j", cluster="slurm")
    ex.update_parameters(name=root.name, **resources.parameters())
    jobs = _submitted(lambda: ex.map_array(functools.partial(_run_logged, run_one),
                                           [job for _, job in todo]))
    record = _read_jobs(root)
    record.update({job.name: sj.job_id for (_, job), sj in zip(todo, jobs, strict=True)})
    write_text(root / JOBS_FILE, json.dumps(record, indent=1) + "\n")
    if verbose:
        print(f"submitted {len(jobs)} runs as SLURM job {jobs[0].job_id.split('_')[0]}"
              + (f" ({resources.partition})" if resources.partition else ""), flush=True)
    if not wait:
        return [(i, {"run": job.name, "status": "queued", "step": 0,
                     "message": f"SLURM job {sj.job_id}", "skipped": False})
                for (i, job), sj in zip(todo, jobs, strict=True)]
    out: list[tuple[int, dict[str, Any]]] = []
    pending = dict(zip(range(len(jobs)), zip(todo, jobs, strict=True), strict=True))
    t0 = time.perf_counter()
    try:
        while pending:
            held = _wait_for([sj.job_id for _, sj in pending.values()])
            for k in [k for k, (_, sj) in pending.items() if sj.job_id not in held]:
                (i, job), sj = pending.pop(k)
                row = _row(job, sj.job_id)
                out.append((i, row))
                if verbose:
                    print(f"[{len(out)}/{len(jobs)}] {job.name}: {row['status']} "
                          f"({time.perf_counter() - t0:.0f} s so far)", flush=True)
    except KeyboardInterrupt:
        subprocess.run(["scancel", *(sj.job_id for _, sj in pending.values())], check=False,
                       timeout=60)
        print(f"cancelled {len(pending)} SLURM runs; their folders resume with the next "
              "flatlab sweep", file=sys.stderr, flush=True)
        raise
    return out


def _one_rank(cfg: dict[str, Any], out: Path, resume: bool) -> dict[str, Any]:
    """A task of a distributed run's job: its rank and rendezvous from SLURM's environment."""
    from submitit.helpers import TorchDistributedEnvironment

    env = TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / f"slurm.rank{env.rank}.log", "a") as log, contextlib.redirect_stdout(log), \
            contextlib.redirect_stderr(log):
        print(f"--- {time.strftime('%Y-%m-%dT%H:%M:%S')} job {os.environ.get('SLURM_JOB_ID')} "
              f"rank {env.rank} of {env.world_size} on {os.uname().nodename}, rendezvous "
              f"{env.master_addr}:{env.master_port}", flush=True)
        res = run(load_config(cfg), out, progress=False, resume=resume)
        return {"status": res.status, "step": res.step, "message": res.message}


#: What a distributed run's job records beside its id: the config it runs.
RUN_JOB_FILE = Path(".slurm") / "run.json"


def _held_run(out: Path, spec: dict[str, Any]) -> str | None:
    """The job the scheduler still holds on the run folder ``out`` (None: none).

    Raises:
        ConfigError: That job runs another config.
    """
    p = out / RUN_JOB_FILE
    if not p.is_file():
        return None
    try:
        rec = json.loads(p.read_text())
        job_id, held_cfg = str(rec["job"]), rec["config"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    held = _held([job_id])
    if job_id not in held:
        return None
    diff = rundir.differences(rundir.identity(held_cfg), rundir.identity(spec))
    if diff:
        raise ConfigError(f"SLURM job {job_id} is {held[job_id].lower()} on {out} with another "
                          f"config (it differs in {', '.join(diff[:4])}); accepted: the same "
                          f"config, or wait for it, or scancel {job_id}, or another --out")
    return job_id


def check_run(cfg: RunConfig, resources: SlurmResources) -> None:
    """Refuse a distributed run the job's processes cannot hold (before asking the cluster).

    Raises:
        ConfigError: The processes do not divide the network's nodes, or a GPU device without
            GPUs.
    """
    world = resources.nodes * resources.tasks_per_node
    if cfg.topology.nodes % world:
        raise ConfigError(f"--nodes {resources.nodes} x --tasks-per-node "
                          f"{resources.tasks_per_node} = {world} processes cannot split "
                          f"topology.nodes = {cfg.topology.nodes}; accepted: a number of "
                          f"processes that divides {cfg.topology.nodes}")
    if cfg.device.startswith("cuda") and not resources.gpus:
        raise ConfigError(f"device={cfg.device} asks for a GPU, but the job asks for none; "
                          "accepted: --gpus-per-node G (one process per GPU), or device=auto")


def submit_run(cfg: RunConfig, out: Path, resources: SlurmResources, *, resume: bool = True,
               wait: bool = True, verbose: bool = True) -> dict[str, Any]:
    """Run ``cfg`` as one SLURM job of ``nodes x tasks_per_node`` processes (torch.distributed).

    Every process trains its rows with ``backend: distributed``, as under ``torchrun``, so the
    result equals the local multi-process run's. The run folder is checked first, as a local
    run checks it (a finished run of the same config submits nothing; a folder of other files
    or of another config's run is refused); while the run's job is queued or running, the same
    command submits nothing and waits for it (another config is refused).

    Args:
        cfg: The run's config (its ``backend`` becomes ``distributed``).
        out: The run folder.
        resources: What the job asks for (``nodes``, ``tasks_per_node``, ``gpus`` per node).
        resume: Continue from the folder's checkpoint (False: start over).
        wait: Wait for the job (Ctrl-C cancels it); else return ``queued``.
        verbose: Print the job's id.

    Returns:
        The run's status row: ``status``, ``step``, ``message`` and ``ran`` (False: nothing
        was submitted, the run had finished before).

    Raises:
        ConfigError: The processes do not divide the network's nodes, a GPU device without
            GPUs, or the folder cannot hold this run; one line each, before anything is
            submitted.
        FlatlabError: What :func:`check_slurm` refuses.
    """
    import submitit

    check_run(cfg, resources)  # what the config says first, then what the cluster says
    check_slurm(resources)
    world = resources.nodes * resources.tasks_per_node
    spec = to_dict(cfg) | {"backend": "distributed"}
    preflight(load_config(spec))
    logging.getLogger("submitit").setLevel(logging.ERROR)
    job_id = _held_run(out, spec)
    if job_id is not None:
        if verbose:
            print(f"SLURM job {job_id} already runs this run: "
                  + ("waiting for it" if wait else "nothing submitted"), flush=True)
    else:
        kind, payload = rundir.decide(out, spec, resume)
        if kind == "error":
            raise ConfigError(str(payload))
        if kind == "finished":
            return {"status": payload["status"], "step": payload["step"],
                    "message": payload.get("message", ""), "ran": False}
        ex = submitit.AutoExecutor(folder=out / ".slurm" / "%j", cluster="slurm")
        ex.update_parameters(name=out.name, **resources.parameters())
        job_id = _submitted(lambda: ex.submit(_one_rank, spec, out, resume)).job_id
        write_text(out / RUN_JOB_FILE, json.dumps({"job": job_id, "config": spec}, indent=1)
                   + "\n")
        if verbose:
            print(f"submitted the run as SLURM job {job_id}: {world} processes on "
                  f"{resources.nodes} node(s)", flush=True)
    if not wait:
        return {"status": "queued", "step": 0, "message": f"SLURM job {job_id}", "ran": True}
    try:
        _wait_for([job_id])
    except KeyboardInterrupt:
        subprocess.run(["scancel", job_id], check=False, timeout=60)
        print(f"cancelled SLURM job {job_id}; the run resumes with the same command",
              file=sys.stderr, flush=True)
        raise
    row = _row(argparse.Namespace(name=out.name, path=out), job_id,
               log=f".slurm/{job_id}/*_log.err")
    return {k: row[k] for k in ("status", "step", "message")} | {"ran": True}


def _row(job: Any, job_id: str, log: str = "slurm.log") -> dict[str, Any]:
    """A row of a run whose job the scheduler no longer holds: what its folder says.

    Not submitit's result (it asks ``sacct``, which clusters often turn off): a run that ended
    has written its status; one whose status is missing or still says running was killed,
    cancelled or out of time, and is recorded as failed (its next sweep resubmits it).
    """
    try:
        st = rundir.read_status(job.path) or {}
    except FlatlabError as e:
        st = {"status": "failed", "message": str(e)}
    if st.get("status") in ("done", "diverged", "failed"):
        return {"run": job.name, "status": st["status"], "step": st.get("step", 0),
                "message": st.get("message", ""), "skipped": False}
    return {"run": job.name, "status": "failed", "step": st.get("step", 0),
            "message": f"SLURM job {job_id} ended without finishing the run (killed, cancelled "
                       f"or out of time; its output: {job.path / log})",
            "skipped": False}


def status_counts(root: Path, names: Sequence[str]) -> dict[str, int]:
    """Queued, running, done, diverged, failed and not started runs of a sweep."""
    held = queued(root)
    counts: dict[str, int] = {}
    for name in names:
        state = held.get(name)
        if state is None:
            try:
                st = rundir.read_status(root / name)
            except FlatlabError:
                st = {"status": "failed"}
            state = "not started" if st is None else st["status"]
        counts[state] = counts.get(state, 0) + 1
    return counts


def cancel(root: Path) -> int:
    """Cancel every job of the sweep at ``root`` the scheduler still holds; how many."""
    held = queued(root)
    jobs = _read_jobs(root)
    ids = sorted({jobs[name] for name in held})
    if ids and shutil.which("scancel"):
        subprocess.run(["scancel", *ids], check=False, timeout=60)
    return len(ids)
