#!/usr/bin/env bash
# Stop the daemons started by start_local_cluster.sh (the controller and every node daemon), by their pid
# files (munged is left running: it is harmless and other users of the machine may rely on it). Idempotent.
set -uo pipefail

STATE="${MASKDCPT_SLURM_STATE:-/tmp/maskdcpt-slurm}"

stop_by_pidfile() {
    local name="$1" pidfile="$2" pid
    [ -s "$pidfile" ] || { echo "[stop_local_cluster] $name: no pid file"; return 0; }
    pid="$(cat "$pidfile")"
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid"
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
        kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
        echo "[stop_local_cluster] stopped $name (pid $pid)"
    fi
    rm -f "$pidfile"
}

# one node daemon per node name (slurmd-n1.pid, …); slurmd.pid: a one-node cluster of an earlier version
for pidfile in "$STATE"/run/slurmd-*.pid "$STATE/run/slurmd.pid"; do
    [ -e "$pidfile" ] || continue
    name="$(basename "$pidfile" .pid)"
    stop_by_pidfile "${name/-/ -N }" "$pidfile"
done
stop_by_pidfile slurmctld "$STATE/run/slurmctld.pid"
