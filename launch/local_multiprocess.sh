#!/usr/bin/env bash
# Run one fergate job as N JAX processes on this machine (CPU, gloo collectives): the
# multi-host code path without a cluster. Each process emulates D CPU devices.
#   launch/local_multiprocess.sh N D fergate-args...
#   launch/local_multiprocess.sh 2 2 train --config configs/modul.py:smoke=True --workdir /tmp/mp
# Python: $PYTHON, else the active virtual environment, else this repository's .venv (launch/python.sh).
set -euo pipefail
N=${1:?number of processes}; D=${2:?devices per process}; shift 2
source "$(dirname "$0")/python.sh"
PORT=${FERGATE_PORT:-$((20000 + RANDOM % 20000))}
echo "launch: $N processes x $D CPU devices, $FERGATE_PY, coordinator 127.0.0.1:$PORT"
pids=()
for ((i = 0; i < N; i++)); do
  "$FERGATE_PY" -m fergate "$@" --coordinator "127.0.0.1:$PORT" --num_processes "$N" --process_id "$i" \
    --cpu_devices "$D" > >(sed "s/^/[p$i] /") 2>&1 &
  pids+=($!)
done
# Ctrl-C / SIGTERM reach every process: each saves at the same step and stops (exit 130 / 143)
trap 'kill -TERM "${pids[@]}" 2>/dev/null' INT TERM
rc=0
for p in "${pids[@]}"; do wait "$p" || rc=$?; done
exit $rc
