#!/usr/bin/env bash
# Stops the nodes that scripts/start-cluster.sh started, by the PIDs it
# recorded in .cluster/node-*.pid: SIGTERM first, SIGKILL after 20 s. Data and
# logs stay in .cluster/ for the next start.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE="$ROOT/.cluster"
shopt -s nullglob
pid_files=("$STATE"/node-*.pid)
if (( ${#pid_files[@]} == 0 )); then
    echo "no nodes recorded in .cluster/; nothing to stop"
    exit 0
fi

is_our_node() {
    kill -0 "$1" 2>/dev/null && grep -q kv-node "/proc/$1/cmdline" 2>/dev/null
}

for pid_file in "${pid_files[@]}"; do
    pid="$(cat "$pid_file")"
    name="$(basename "$pid_file" .pid)"
    if ! is_our_node "$pid"; then
        echo "$name (PID $pid) is not running"
        rm -f "$pid_file"
        continue
    fi
    kill -TERM "$pid"
    for _ in $(seq 1 200); do
        is_our_node "$pid" || break
        sleep 0.1
    done
    if is_our_node "$pid"; then
        echo "$name (PID $pid) did not stop within 20 s; sending SIGKILL"
        kill -KILL "$pid" || true
    else
        echo "stopped $name (PID $pid)"
    fi
    rm -f "$pid_file"
done
