#!/usr/bin/env bash
# Runs visgen on this machine: one process, or N local processes that form
# one JAX job (jax.distributed over 127.0.0.1), e.g. to try multi-host code.
#
#   launch/local.sh configs/quickstart.py /tmp/qs [extra flags...]
#   NUM_PROCESSES=2 launch/local.sh configs/quickstart.py:runlocal /tmp/x
#
# No hyperparameters here: everything is in the config and its flags.
set -euo pipefail
CONFIG="$1"; WORKDIR="$2"; shift 2
PYTHON="${PYTHON:-python}"
NUM_PROCESSES="${NUM_PROCESSES:-1}"
mkdir -p "$WORKDIR"

if [[ "$NUM_PROCESSES" == 1 ]]; then
  "$PYTHON" -m visgen.main --config="$CONFIG" --workdir="$WORKDIR" "$@" \
    2>&1 | tee -a "$WORKDIR/log.txt"
  exit "${PIPESTATUS[0]}"
fi

PORT="${PORT:-$("$PYTHON" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}"
pids=()
for ((i = 0; i < NUM_PROCESSES; i++)); do
  VISGEN_COORDINATOR="127.0.0.1:$PORT" VISGEN_NUM_PROCESSES="$NUM_PROCESSES" \
  VISGEN_PROCESS_ID="$i" \
    "$PYTHON" -m visgen.main --config="$CONFIG" --workdir="$WORKDIR" "$@" \
    > "$WORKDIR/log_process_$i.txt" 2>&1 &
  pids+=($!)
done
# Forward SIGTERM (preemption) to every process; each saves and exits 0.
trap 'kill -TERM "${pids[@]}" 2>/dev/null' TERM INT
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
exit "$status"
