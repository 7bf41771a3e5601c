#!/usr/bin/env bash
# Measures how long a node that was down while keys were written takes to
# store all of them after it returns.
#
# The script builds release binaries and starts a 3-node cluster (default
# flags plus RINGKV_NODE_ARGS) on 127.0.0.1:$((BASE_PORT+1)) .. $((BASE_PORT+3))
# with its data in a new temporary directory. It kills node 3 with SIGKILL,
# loads --records keys of 100 bytes at W=2 through nodes 1 and 2, and restarts
# node 3 with the same data directory and flags. Then it runs
# `kv-bench --workload verify --until-complete` against node 3 alone. Verify reads node 3's local copies with Admin
# ReplicaRead, which does no read repair, and the script sends no client
# reads, so only hinted handoff and anti-entropy can fill node 3. The script
# prints the time from the restart until node 3 stores every key, and the
# counters that show which mechanism did the work.
#
# Every node is stopped by PID when the script exits (SIGTERM, then SIGKILL
# after 10 s), and the temporary directory is removed.
#
# Options:
#   --records N     keys to load while node 3 is down (default 100000)
#   --max-secs S    longest wait for node 3 to catch up (default 900)
#   --poll-interval-ms MS
#                   pause between two verify passes (default 1000). Each pass
#                   reads every key still missing from node 3, so a shorter
#                   pause measures closer but loads node 3 more.
# Environment:
#   RINGKV_NODE_ARGS  extra kv-node flags for all three nodes, e.g.
#                     "--hint-interval-ms 600000" to leave the work to
#                     anti-entropy
#   BASE_PORT         nodes listen on BASE_PORT+1 .. BASE_PORT+3 (default 7620)
#   CARGO_TARGET_DIR  cargo's target directory (default target/ in the repo)
set -euo pipefail

usage() {
    echo "usage: scripts/catchup.sh [--records N] [--max-secs S] [--poll-interval-ms MS]" >&2
    echo "       (RINGKV_NODE_ARGS adds kv-node flags, and BASE_PORT sets the ports)" >&2
    exit 2
}

RECORDS=100000
MAX_SECS=900
POLL_MS=1000
while (( $# > 0 )); do
    case "$1" in
        --records) RECORDS="${2:-}"; shift 2 || usage ;;
        --max-secs) MAX_SECS="${2:-}"; shift 2 || usage ;;
        --poll-interval-ms) POLL_MS="${2:-}"; shift 2 || usage ;;
        -h|--help) usage ;;
        *) echo "error: unknown argument $1" >&2; usage ;;
    esac
done
[[ "$RECORDS" =~ ^[1-9][0-9]*$ ]] || { echo "error: invalid --records '$RECORDS': pass a positive whole number" >&2; exit 2; }
[[ "$POLL_MS" =~ ^[1-9][0-9]*$ ]] || { echo "error: invalid --poll-interval-ms '$POLL_MS': pass a positive whole number of milliseconds" >&2; exit 2; }
[[ "$MAX_SECS" =~ ^[1-9][0-9]*$ ]] || { echo "error: invalid --max-secs '$MAX_SECS': pass a positive whole number of seconds" >&2; exit 2; }

BASE_PORT="${BASE_PORT:-7620}"
NODE_ARGS="${RINGKV_NODE_ARGS:-}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release"

for tool in cargo jq ss; do
    command -v "$tool" >/dev/null 2>&1 || { echo "error: $tool is not installed; install it and run this script again" >&2; exit 1; }
done

ADDRESSES=()
for i in 1 2 3; do
    port=$((BASE_PORT + i))
    if [[ -n "$(ss -Hltn "sport = :$port")" ]]; then
        echo "error: port $port is in use; set BASE_PORT to a base with 3 free ports after it" >&2
        exit 1
    fi
    ADDRESSES+=("127.0.0.1:$port")
done
ALL="$(IFS=,; echo "${ADDRESSES[*]}")"
NODE1="${ADDRESSES[0]}"
NODE3="${ADDRESSES[2]}"

echo "building kv-node, kv-cli and kv-bench (release)..."
(cd "$ROOT" && cargo build --quiet --release -p kv-node -p kv-client -p kv-bench --bins)

WORK_PREFIX=ringkv-catchup
# shellcheck source=scripts/lib/nodes.sh
source "$ROOT/scripts/lib/nodes.sh"

cli() {
    "$BIN/kv-cli" --endpoints "$ALL" "$@"
}

# Prints the catch-up counters of the node at address $1, labeled $2, as one
# line.
print_counters() {
    cli --json status --node "$1" | jq -r --arg name "$2" '
        "\($name) (\(.address)): hints_delivered=\(.hints_delivered)"
        + " hints_held=\([.pending_hints[].hints] | add // 0)"
        + " aae_exchanges=\(.aae_exchanges) aae_keys_repaired=\(.aae_keys_repaired)"
        + " read_repairs=\(.read_repairs)"'
}

echo "data directory: $WORK"
echo "node flags: defaults${NODE_ARGS:+ plus $NODE_ARGS}"
start_node 1
"$BIN/kv-cli" --endpoints "$NODE1" wait --nodes 1 --timeout-secs 30 >/dev/null || fail "node 1 ($NODE1) did not start"
start_node 2
start_node 3
cli wait --nodes 3 --timeout-secs 60 >/dev/null || fail "the 3-node cluster did not form within 60 s"
echo "cluster of 3 nodes is up: $ALL"

kill -KILL "${NODE_PIDS[3]}"
wait "${NODE_PIDS[3]}" 2>/dev/null || true
unset 'NODE_PIDS[3]'
echo "node 3 ($NODE3) killed with SIGKILL; waiting until node 1 reports it down..."
deadline=$((SECONDS + 60))
until [[ "$(cli --json members --node "$NODE1" | jq -r --arg a "$NODE3" '.members[] | select(.address == $a) | .up')" == "false" ]]; do
    (( SECONDS < deadline )) || fail "node 1 did not report node 3 down within 60 s"
    sleep 0.5
done

echo "loading $RECORDS keys of 100 bytes at W=2 through nodes 1 and 2..."
"$BIN/kv-bench" --endpoints "${ADDRESSES[0]},${ADDRESSES[1]}" --workload load \
    --records "$RECORDS" --value-bytes 100 --w 2 --max-secs 600 --json >"$WORK/load.json" \
    2>"$WORK/load.log" || { tail -n 20 "$WORK/load.log" >&2; fail "the load failed; kv-bench's last lines are above"; }
jq -r '"load: \(.total_ok) puts ok, \(.total_errors) failed, \(.throughput_ops_per_sec | floor) ops/s, \(.elapsed_secs) s"' \
    "$WORK/load.json" 2>/dev/null || cat "$WORK/load.json"

echo "counters before node 3 returns:"
print_counters "${ADDRESSES[0]}" "node 1"
print_counters "${ADDRESSES[1]}" "node 2"

restart_ns=$(date +%s%N)
start_node 3
until cli status --node "$NODE3" >/dev/null 2>&1; do
    is_our_node "${NODE_PIDS[3]}" || fail "node 3 exited after its restart"
    (( ($(date +%s%N) - restart_ns) / 1000000000 < 60 )) || fail "node 3 did not answer within 60 s of its restart"
    sleep 0.1
done
serving_ms=$(( ($(date +%s%N) - restart_ns) / 1000000 ))
echo "node 3 restarted and answers after $serving_ms ms; checking its copies until all $RECORDS keys are present..."

verify_status=0
"$BIN/kv-bench" --endpoints "$ALL" --workload verify --replica "$NODE3" --records "$RECORDS" \
    --until-complete --poll-interval-ms "$POLL_MS" --max-secs "$MAX_SECS" --json >"$WORK/verify.json" \
    || verify_status=$?
catchup_ms=$(( ($(date +%s%N) - restart_ns) / 1000000 ))

echo
echo "=== catch-up of node 3 ==="
echo "records: $RECORDS; verify poll interval: $POLL_MS ms; node flags: defaults${NODE_ARGS:+ plus $NODE_ARGS}"
jq -r '"verify: \(.present) of \(.records) keys present, complete=\(.complete), \(.passes) passes, stopped by \(.stopped_by), errors \(.errors)"' "$WORK/verify.json"
if (( verify_status == 0 )); then
    echo "catch-up time: $catchup_ms ms from the restart of node 3 (exact to one verify pass plus $POLL_MS ms)"
else
    echo "catch-up incomplete after $catchup_ms ms (kv-bench exit status $verify_status)"
fi
echo "counters after catch-up (hints are delivered and counted by nodes 1 and 2):"
print_counters "${ADDRESSES[0]}" "node 1"
print_counters "${ADDRESSES[1]}" "node 2"
print_counters "$NODE3" "node 3"
exit "$verify_status"
