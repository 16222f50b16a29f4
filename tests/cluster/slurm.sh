#!/usr/bin/env bash
# A single-node SLURM cluster on this machine, for the tests that submit real jobs
# (tests/cluster/test_slurm.py). Needs root and Debian's packages:
#   apt-get install -y --no-install-recommends slurmctld slurmd slurm-client munge
# Usage:  tests/cluster/slurm.sh start [DIR]   (prints: export SLURM_CONF=DIR/slurm.conf)
#         tests/cluster/slurm.sh stop  [DIR]
# The daemons run by hand (no systemd, no cgroups): munged, slurmctld and slurmd, with
# proctrack/linuxproc, cons_tres over CPUs, no accounting, batch_sched_delay=0 and a short
# KillWait (submitit's wrapper dies on SIGKILL only). They are stopped by their pids.
set -euo pipefail
cmd=${1:-start}
dir=${2:-/tmp/flatlab-slurm}
conf=$dir/slurm.conf

start() {
    for bin in munged slurmctld slurmd sbatch; do
        command -v "$bin" >/dev/null || { echo "slurm.sh: $bin not found; install: apt-get install -y --no-install-recommends slurmctld slurmd slurm-client munge" >&2; exit 2; }
    done
    mkdir -p "$dir/state" "$dir/spool" "$dir/log" /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge 2>/dev/null || true
    host=$(hostname -s)
    cpus=$(nproc)
    mem=$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)
    cat > "$conf" <<CONF
ClusterName=flatlab
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerParameters=batch_sched_delay=0
MpiDefault=none
ReturnToService=2
KillWait=2
InactiveLimit=0
MinJobAge=300
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
    if ! pgrep -x munged >/dev/null; then
        runuser -u munge -- munged --force || munged --force
    fi
    slurmctld -f "$conf"
    slurmd -f "$conf"
    export SLURM_CONF=$conf
    for _ in $(seq 50); do  # up in about a second
        if sinfo -h -o %t 2>/dev/null | grep -qE '^(idle|mix|alloc)'; then
            echo "export SLURM_CONF=$conf"
            return 0
        fi
        sleep 0.2
    done
    echo "slurm.sh: the node did not come up; see $dir/log" >&2
    exit 1
}

stop() {
    for pid in "$dir/slurmd.pid" "$dir/slurmctld.pid"; do
        [ -f "$pid" ] && kill "$(cat "$pid")" 2>/dev/null || true
    done
    rm -rf "$dir/state" "$dir/spool"
}

case $cmd in
    start) start ;;
    stop) stop ;;
    *) echo "usage: $0 start|stop [DIR]" >&2; exit 2 ;;
esac
