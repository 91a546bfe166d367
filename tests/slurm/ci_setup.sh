#!/usr/bin/env bash
# CI entry point (called by .ci/run before pytest): install SLURM if needed and start the two-node
# cluster. Fails loudly when it cannot, so that the `slurm` tests never skip silently in CI.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null || { echo "[ci_setup] needs root or sudo to start SLURM" >&2; exit 1; }
    exec sudo -E bash "$here/start_local_cluster.sh"
fi
exec bash "$here/start_local_cluster.sh"
