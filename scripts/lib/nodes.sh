# Node processes of the measurement scripts (catchup.sh, join-bench.sh).
# Sourced, not run. The caller sets BIN (directory of the binaries),
# ADDRESSES (node i listens on ${ADDRESSES[i-1]}), NODE1 (the seed),
# NODE_ARGS (extra kv-node flags) and WORK_PREFIX (name of the temporary
# directory). This file creates WORK and NODE_PIDS and stops every node it
# started, by PID, when the script exits.

WORK="$(mktemp -d -t "$WORK_PREFIX.XXXXXX")"
declare -A NODE_PIDS=()

# Stops a node by PID if it is still our kv-node: SIGTERM, SIGKILL after 10 s.
stop_node() {
    local pid="$1"
    is_our_node "$pid" || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do
        is_our_node "$pid" || return 0
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
}

is_our_node() {
    kill -0 "$1" 2>/dev/null && grep -q kv-node "/proc/$1/cmdline" 2>/dev/null
}

cleanup() {
    for i in "${!NODE_PIDS[@]}"; do
        stop_node "${NODE_PIDS[$i]}"
    done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Starts node $1 with the data directory, address and flags it always has.
start_node() {
    local i="$1" seeds=()
    (( i > 1 )) && seeds=(--seeds "$NODE1")
    # shellcheck disable=SC2086
    "$BIN/kv-node" --data-dir "$WORK/node-$i" --listen "${ADDRESSES[$((i - 1))]}" \
        "${seeds[@]}" $NODE_ARGS >>"$WORK/node-$i.log" 2>&1 </dev/null &
    NODE_PIDS[$i]=$!
}

# Prints the error $1 and the last lines of every node's log, and exits 1.
fail() {
    echo "error: $1" >&2
    for i in $(seq 1 "${#ADDRESSES[@]}"); do
        echo "--- last lines of node-$i.log ---" >&2
        tail -n 5 "$WORK/node-$i.log" >&2 2>/dev/null || true
    done
    exit 1
}
