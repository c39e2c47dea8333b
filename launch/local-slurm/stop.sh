#!/usr/bin/env bash
# Stop the daemons that launch/local-slurm/start.sh started (by their pid files), and nothing else.
set -uo pipefail
DIR="${MMED_SLURM_DIR:-/tmp/mmed-slurm}"
for name in slurmd slurmctld munged; do
  pidfile="$DIR/$name.pid"
  if [[ -f "$pidfile" ]]; then
    pid=$(cat "$pidfile")
    if kill -0 "$pid" 2>/dev/null; then
      kill "$pid"
      for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
    fi
    rm -f "$pidfile"
  fi
done
echo "local-slurm: stopped"
