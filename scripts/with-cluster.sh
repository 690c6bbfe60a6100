#!/usr/bin/env bash
# Usage: scripts/with-cluster.sh WORKERS SLOTS COMMAND...
# Starts a scheduler on 127.0.0.1 (free port) and WORKERS workers of SLOTS slots, runs
# COMMAND with STOCKADE_SCHEDULER_FILE set, then stops every process it started by pid.
set -euo pipefail
workers=$1 slots=$2
shift 2
root=$(cd "$(dirname "$0")/.." && pwd)
bin=${STOCKADE_BIN:-$root/target/debug/stockade}
dir=$(mktemp -d "${TMPDIR:-/tmp}/stockade-cluster.XXXXXX")
export STOCKADE_RUNTIME_DIR=$dir
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$dir"
}
trap cleanup EXIT

# wait_ready FILE: wait (bounded) for a process's JSON ready line.
wait_ready() {
  for _ in $(seq 1 300); do
    [ -s "$1" ] && return 0
    sleep 0.05
  done
  echo "error: a cluster process did not start; its log:" >&2
  cat "${1%.out}.log" >&2
  exit 1
}

"$bin" scheduler --port 0 --scheduler-file "$dir/scheduler.json" >"$dir/scheduler.out" 2>"$dir/scheduler.log" &
pids+=($!)
wait_ready "$dir/scheduler.out"
for i in $(seq 1 "$workers"); do
  "$bin" worker --scheduler-file "$dir/scheduler.json" --slots "$slots" --name "worker$i" \
    >"$dir/worker$i.out" 2>"$dir/worker$i.log" &
  pids+=($!)
  wait_ready "$dir/worker$i.out"
done
export STOCKADE_SCHEDULER_FILE=$dir/scheduler.json
"$@"
