#!/usr/bin/env bash
# Stops the apps that scripts/start-apps.sh started, by the PIDs it recorded
# in .apps/<app>.pid: SIGTERM first, SIGKILL after 10 s.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE="$ROOT/.apps"
shopt -s nullglob
pid_files=("$STATE"/*.pid)
if (( ${#pid_files[@]} == 0 )); then
    echo "no apps recorded in .apps/; nothing to stop"
    exit 0
fi

for pid_file in "${pid_files[@]}"; do
    pid="$(cat "$pid_file")"
    app="$(basename "$pid_file" .pid)"
    if ! { kill -0 "$pid" 2>/dev/null && grep -q "kv-$app" "/proc/$pid/cmdline" 2>/dev/null; }; then
        echo "$app (PID $pid) is not running"
        rm -f "$pid_file"
        continue
    fi
    kill -TERM "$pid"
    for _ in $(seq 1 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        echo "$app (PID $pid) did not stop within 10 s; sending SIGKILL"
        kill -KILL "$pid" || true
    else
        echo "stopped $app (PID $pid)"
    fi
    rm -f "$pid_file"
done
