#!/usr/bin/env bash
# Measures a join under load: how long a 4th node takes to join a 3-node
# cluster that holds --records keys, and the foreground latency meanwhile.
#
# The script builds release binaries and starts 3 nodes (default flags plus
# RINGKV_NODE_ARGS) on 127.0.0.1:$((BASE_PORT+1)) .. $((BASE_PORT+3)) with
# their data in a new temporary directory, and loads --records keys of 100
# bytes. It runs YCSB workload A at --rate operations per second for
# --bench-secs without a membership change (the baseline), then starts node 4
# with --seeds and runs the same workload again at once. It prints the time
# from the start of node 4 until every node holds a ring of 4 nodes without a
# plan, the keys node 4 received, and both latency reports side by side.
#
# Every node is stopped by PID when the script exits (SIGTERM, then SIGKILL
# after 10 s), and the temporary directory is removed.
#
# Options:
#   --records N      keys loaded before the join (default 1000000)
#   --rate OPS       target rate of the foreground workload (default 2000)
#   --bench-secs S   length of each foreground run, in seconds (default 60)
#   --max-secs S     longest wait for the join to complete (default 1800)
# Environment:
#   RINGKV_NODE_ARGS  extra kv-node flags for all four nodes, e.g.
#                     "--transfer-max-keys-per-second 5000"
#   BASE_PORT         nodes listen on BASE_PORT+1 .. BASE_PORT+4 (default 7630)
#   CARGO_TARGET_DIR  cargo's target directory (default target/ in the repo)
set -euo pipefail

usage() {
    echo "usage: scripts/join-bench.sh [--records N] [--rate OPS] [--bench-secs S] [--max-secs S]" >&2
    echo "       (RINGKV_NODE_ARGS adds kv-node flags, and BASE_PORT sets the ports)" >&2
    exit 2
}

RECORDS=1000000
RATE=2000
BENCH_SECS=60
MAX_SECS=1800
while (( $# > 0 )); do
    case "$1" in
        --records) RECORDS="${2:-}"; shift 2 || usage ;;
        --rate) RATE="${2:-}"; shift 2 || usage ;;
        --bench-secs) BENCH_SECS="${2:-}"; shift 2 || usage ;;
        --max-secs) MAX_SECS="${2:-}"; shift 2 || usage ;;
        -h|--help) usage ;;
        *) echo "error: unknown argument $1" >&2; usage ;;
    esac
done
for pair in "records:$RECORDS" "rate:$RATE" "bench-secs:$BENCH_SECS" "max-secs:$MAX_SECS"; do
    [[ "${pair#*:}" =~ ^[1-9][0-9]*$ ]] || { echo "error: invalid --${pair%%:*} '${pair#*:}': pass a positive whole number" >&2; exit 2; }
done

BASE_PORT="${BASE_PORT:-7630}"
NODE_ARGS="${RINGKV_NODE_ARGS:-}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release"

for tool in cargo jq ss; do
    command -v "$tool" >/dev/null 2>&1 || { echo "error: $tool is not installed; install it and run this script again" >&2; exit 1; }
done

ADDRESSES=()
for i in 1 2 3 4; do
    port=$((BASE_PORT + i))
    if [[ -n "$(ss -Hltn "sport = :$port")" ]]; then
        echo "error: port $port is in use; set BASE_PORT to a base with 4 free ports after it" >&2
        exit 1
    fi
    ADDRESSES+=("127.0.0.1:$port")
done
FIRST3="$(IFS=,; echo "${ADDRESSES[*]:0:3}")"
NODE1="${ADDRESSES[0]}"
NODE4="${ADDRESSES[3]}"

echo "building kv-node, kv-cli and kv-bench (release)..."
(cd "$ROOT" && cargo build --quiet --release -p kv-node -p kv-client -p kv-bench --bins)

WORK_PREFIX=ringkv-join
# shellcheck source=scripts/lib/nodes.sh
source "$ROOT/scripts/lib/nodes.sh"



# Runs workload A against the first three nodes; $1 names the JSON report.
run_a() {
    "$BIN/kv-bench" --endpoints "$FIRST3" --workload a --records "$RECORDS" --value-bytes 100 \
        --target-rate "$RATE" --duration-secs "$BENCH_SECS" --json >"$WORK/$1.json" 2>"$WORK/$1.log" \
        || { tail -n 20 "$WORK/$1.log" >&2; fail "workload A ($1) failed; kv-bench's last lines are above"; }
}

# Prints one line of a workload A report: throughput and per-type p50/p99.
print_a() {
    jq -r --arg name "$1" '"\($name): \(.throughput_ops_per_sec | floor) ops/s, "
        + ([.operations[] | "\(.op) p50 \(.p50_us / 1000) ms p99 \(.p99_us / 1000) ms max \(.max_us / 1000) ms"] | join("; "))
        + ", errors \(.total_errors)"' "$WORK/$2.json" 2>/dev/null || cat "$WORK/$2.json"
}

# True when every running node holds a ring of 4 nodes without a plan.
join_complete() {
    local address ring
    for address in "${ADDRESSES[@]}"; do
        ring="$("$BIN/kv-cli" --endpoints "$address" --json ring 2>/dev/null)" || return 1
        jq -e '(.plan == null) and ((.nodes | length) == 4)' <<<"$ring" >/dev/null || return 1
    done
}

echo "data directory: $WORK"
echo "node flags: defaults${NODE_ARGS:+ plus $NODE_ARGS}"
start_node 1
"$BIN/kv-cli" --endpoints "$NODE1" wait --nodes 1 --timeout-secs 30 >/dev/null || fail "node 1 ($NODE1) did not start"
start_node 2
start_node 3
"$BIN/kv-cli" --endpoints "$FIRST3" wait --nodes 3 --timeout-secs 60 >/dev/null || fail "the 3-node cluster did not form within 60 s"
echo "cluster of 3 nodes is up: $FIRST3"

echo "loading $RECORDS keys of 100 bytes..."
"$BIN/kv-bench" --endpoints "$FIRST3" --workload load --records "$RECORDS" --value-bytes 100 \
    --max-secs 1200 --json >"$WORK/load.json" 2>"$WORK/load.log" \
    || { tail -n 20 "$WORK/load.log" >&2; fail "the load failed; kv-bench's last lines are above"; }
jq -r '"load: \(.total_ok) puts ok, \(.total_errors) failed, \(.throughput_ops_per_sec | floor) ops/s"' "$WORK/load.json"

echo "baseline: workload A at $RATE ops/s for $BENCH_SECS s without a change..."
run_a baseline

echo "starting node 4 ($NODE4) and workload A at once..."
join_ns=$(date +%s%N)
start_node 4
run_a during &
bench_pid=$!
join_ms=""
while (( ($(date +%s%N) - join_ns) / 1000000000 < MAX_SECS )); do
    if join_complete; then
        join_ms=$(( ($(date +%s%N) - join_ns) / 1000000 ))
        break
    fi
    sleep 1
done
wait "$bench_pid" || fail "workload A during the join failed"

echo
echo "=== join of a 4th node under load ==="
echo "records: $RECORDS of 100 bytes; foreground: workload A at $RATE ops/s; node flags: defaults${NODE_ARGS:+ plus $NODE_ARGS}"
if [[ -n "$join_ms" ]]; then
    echo "join time: $join_ms ms from the start of node 4 until every node holds the 4-node ring without a plan (exact to 1 s)"
else
    echo "join incomplete after $MAX_SECS s"
fi
"$BIN/kv-cli" --endpoints "$NODE4" --json status | jq -r '"node 4 received \(.transfers.keys_received // 0) keys, \(((.transfers.bytes_received // 0) / 1048576) | floor) MiB"'
print_a "baseline" baseline
print_a "during the join" during
[[ -n "$join_ms" ]]
