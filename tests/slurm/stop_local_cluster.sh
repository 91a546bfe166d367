#!/usr/bin/env bash
# Stop the daemons started by start_local_cluster.sh, by their pid files (munged is left running:
# it is harmless and other users of the machine may rely on it). Idempotent.
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

stop_by_pidfile slurmd "$STATE/run/slurmd.pid"
stop_by_pidfile slurmctld "$STATE/run/slurmctld.pid"
