#!/usr/bin/env bash
# Starts a local ringkv cluster of NODES nodes (default 3) on 127.0.0.1.
#
# Node i listens on 127.0.0.1:$((BASE_PORT + i)) (BASE_PORT defaults to 7400,
# so the first node is 127.0.0.1:7401), keeps its data in
# .cluster/node-i/ and its log in .cluster/node-i.log under the repository.
# The first node creates the cluster; the others join through it. Starting
# again reuses the data. Stop the cluster with scripts/stop-cluster.sh.
#
# Starting a running cluster with a larger NODES adds nodes: the new ones
# join and receive their share of the partitions (the wait below allows 60 s
# for that). To take nodes out, use `kv-cli decommission`; this script only
# starts nodes.
#
# Environment: BASE_PORT, CARGO_TARGET_DIR, RINGKV_NODE_ARGS (extra kv-node
# flags, e.g. "--engine sled"), RINGKV_PROFILE (release, the default, or
# debug), RUST_LOG (the nodes' log filter).
set -euo pipefail

usage() {
    echo "usage: scripts/start-cluster.sh [NODES]   (NODES: 1 to 20, default 3)" >&2
    exit 2
}

NODES="${1:-3}"
[[ "$NODES" =~ ^[0-9]+$ ]] && (( NODES >= 1 && NODES <= 20 )) || usage
BASE_PORT="${BASE_PORT:-7400}"
PROFILE="${RINGKV_PROFILE:-release}"

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE="$ROOT/.cluster"
mkdir -p "$STATE"

# Build the binaries unless they are newer than every source file.
if ! command -v cargo >/dev/null 2>&1; then
    echo "error: cargo is not installed; install Rust from https://rustup.rs and run this script again" >&2
    exit 1
fi
PROFILE_FLAG=()
[[ "$PROFILE" == "release" ]] && PROFILE_FLAG=(--release)
# cargo builds into CARGO_TARGET_DIR when it is set (relative to the
# repository, where cargo runs below).
TARGET_DIR="${CARGO_TARGET_DIR:-target}"
[[ "$TARGET_DIR" == /* ]] || TARGET_DIR="$ROOT/$TARGET_DIR"
BIN="$TARGET_DIR/$PROFILE"
if [[ ! -x "$BIN/kv-node" || ! -x "$BIN/kv-cli" ]] \
    || [[ -n "$(find "$ROOT/proto" "$ROOT/cluster" "$ROOT/storage" "$ROOT/node" "$ROOT/client" "$ROOT/Cargo.toml" "$ROOT/Cargo.lock" \
        -newer "$BIN/kv-node" \( -name '*.rs' -o -name '*.proto' -o -name '*.toml' -o -name Cargo.lock \) -print -quit 2>/dev/null)" ]]; then
    echo "building kv-node and kv-cli ($PROFILE)..."
    (cd "$ROOT" && cargo build "${PROFILE_FLAG[@]}" -p kv-node -p kv-client --bins)
fi

ENDPOINTS=()
for i in $(seq 1 "$NODES"); do
    ENDPOINTS+=("127.0.0.1:$((BASE_PORT + i))")
done
FIRST="${ENDPOINTS[0]}"

for i in $(seq 1 "$NODES"); do
    address="${ENDPOINTS[$((i - 1))]}"
    pid_file="$STATE/node-$i.pid"
    if [[ -f "$pid_file" ]] && kill -0 "$(cat "$pid_file")" 2>/dev/null \
        && grep -q kv-node "/proc/$(cat "$pid_file")/cmdline" 2>/dev/null; then
        echo "node $i ($address) is already running, PID $(cat "$pid_file")"
        continue
    fi
    seeds=()
    # Every node but the first joins through the first. The first node
    # creates the cluster only while its data directory is empty; later it
    # rejoins with its stored ring, using the others as seeds.
    if (( i > 1 )); then
        seeds=(--seeds "$FIRST")
    elif (( NODES > 1 )) && [[ -d "$STATE/node-1" ]]; then
        seeds=(--seeds "$(IFS=,; echo "${ENDPOINTS[*]:1}")")
    fi
    # shellcheck disable=SC2086
    nohup "$BIN/kv-node" \
        --data-dir "$STATE/node-$i" --listen "$address" "${seeds[@]}" ${RINGKV_NODE_ARGS:-} \
        >>"$STATE/node-$i.log" 2>&1 </dev/null &
    echo $! >"$pid_file"
    echo "started node $i on $address (PID $!, log .cluster/node-$i.log)"
    if (( i == 1 )); then
        # Let the first node create the cluster before the others ask it.
        if ! "$BIN/kv-cli" --endpoints "$FIRST" wait --nodes 1 --timeout-secs 30 >/dev/null; then
            echo "error: node 1 ($FIRST) did not start; last lines of .cluster/node-1.log:" >&2
            tail -n 3 "$STATE/node-1.log" >&2
            exit 1
        fi
    fi
done

echo "waiting until every node sees every other one up..."
deadline=$((SECONDS + 60))
until "$BIN/kv-cli" --endpoints "$(IFS=,; echo "${ENDPOINTS[*]}")" wait --nodes "$NODES" --timeout-secs 2 >/dev/null 2>&1; do
    # A node that exited (for example because its join was rejected) will
    # never come up: show why instead of waiting out the deadline.
    for i in $(seq 1 "$NODES"); do
        pid="$(cat "$STATE/node-$i.pid" 2>/dev/null || true)"
        if [[ -z "$pid" ]] || ! kill -0 "$pid" 2>/dev/null; then
            echo "error: node $i (${ENDPOINTS[$((i - 1))]}) exited; last lines of .cluster/node-$i.log:" >&2
            tail -n 3 "$STATE/node-$i.log" >&2
            rm -f "$STATE/node-$i.pid"
            exit 1
        fi
    done
    if (( SECONDS >= deadline )); then
        echo "error: the cluster did not form within 60 s; see the logs in .cluster/" >&2
        "$BIN/kv-cli" --endpoints "$FIRST" wait --nodes "$NODES" --timeout-secs 1 >&2 || true
        exit 1
    fi
done

"$BIN/kv-cli" --endpoints "$FIRST" members
cat <<MSG

ringkv is running with $NODES node(s): $(IFS=' '; echo "${ENDPOINTS[*]}")
Try:
  export RINGKV_ENDPOINTS=$(IFS=,; echo "${ENDPOINTS[*]}")
  $BIN/kv-cli put greeting "hello, ringkv"
  $BIN/kv-cli get greeting
Stop it with scripts/stop-cluster.sh
MSG
