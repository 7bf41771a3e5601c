#!/usr/bin/env bash
# Runs a fixed comparison of ringkv, etcd and Redis on 127.0.0.1 and prints
# one table. See usage() below or run scripts/bench.sh --help.
#
# Every process this script starts is stopped by PID on exit, also after an
# error or Ctrl-C, and the data folder (mktemp -d) is removed unless --keep
# is given. Reports are written to the output folder, which is kept.
set -euo pipefail

usage() {
    cat <<'USAGE'
usage: scripts/bench.sh [--quick] [--only ringkv|etcd|redis] [--duration SECONDS]
                        [--records KEYS] [--concurrency REQUESTS] [--out DIR] [--keep]
       scripts/bench.sh --memory [--records KEYS] [--out DIR] [--keep]

Compares, on this machine and on 127.0.0.1 only:
  ringkv  3 kv-node processes, N=3 R=2 W=2, once for each combination of
          --sync always|periodic and --engine fjall|sled (4 fresh clusters,
          ports 7611-7613)
  etcd    3 members of Debian's etcd-server (client ports 12379, 22379, 32379)
  redis   one redis-server (port 6390), measured with redis-benchmark as a
          single-node ceiling

Per ringkv and etcd cluster, kv-bench runs: load (insert KEYS keys, 100-byte
values), YCSB workloads A and C (DURATION each), ping (ringkv: the Ping RPC,
etcd: Maintenance.Status) and a single-client put run (concurrency 1, fresh
keys, DURATION). etcd is compacted and defragmented between load and A.
Redis runs `redis-benchmark -d 100 -c REQUESTS -n KEYS -r KEYS -P 1`, first with
`-t set`, then with `-t get`.

Options:
  --duration SECONDS     run time of A, C, ping and the single-client put run
                         (default 30; env BENCH_DURATION)
  --records KEYS         keys loaded per cluster (default 100000, or 1000000
                         with --memory; env BENCH_RECORDS)
  --concurrency REQUESTS requests in flight for load, A, C and ping
                         (default 64; env BENCH_CONCURRENCY)
  --only SYSTEM          run only ringkv, etcd or redis (default: all three)
  --quick                smoke run: 5 s per workload, 10000 keys
  --memory               load KEYS keys into one default ringkv cluster (fjall,
                         --sync always) and print each node's resident memory
  --out DIR              folder for the JSON reports and the table
                         (default: a new folder under ${TMPDIR:-/tmp}; env BENCH_OUT)
  --keep                 keep the data folder and the server logs
  -h, --help             show this help

Table units: ops/s are successful operations per second; p50/p99 are
latencies in milliseconds as kv-bench or redis-benchmark measured them;
"reads % of ping" is C ops/s as a percentage of ping ops/s; RSS is the sum of
VmRSS of the cluster's server processes right after the load, in MiB;
ringkv/etcd columns divide a ringkv row's ops/s by the etcd row's.

A run takes about 5 x (load + 4 x DURATION): --quick took 3.5 minutes on a
2-core machine, and the defaults are estimated at 15 minutes, plus the first
release build. It needs root to install missing
Debian packages (etcd-server, etcd-client, redis-server, protobuf-compiler).
USAGE
}

# ---------------------------------------------------------------------------
# Flags.

DURATION="${BENCH_DURATION:-30}"
RECORDS="${BENCH_RECORDS:-}"
CONCURRENCY="${BENCH_CONCURRENCY:-64}"
OUT="${BENCH_OUT:-}"
ONLY=all
MEMORY=0
KEEP=0

die() {
    echo "bench.sh: $*" >&2
    exit 1
}

# Reports an invalid command line (exit status 2).
usage_error() {
    echo "bench.sh: $*; see scripts/bench.sh --help" >&2
    exit 2
}

while (($# > 0)); do
    case "$1" in
        --duration) DURATION="${2:-}"; shift 2 || usage_error "missing value of --duration" ;;
        --records) RECORDS="${2:-}"; shift 2 || usage_error "missing value of --records" ;;
        --concurrency) CONCURRENCY="${2:-}"; shift 2 || usage_error "missing value of --concurrency" ;;
        --out) OUT="${2:-}"; shift 2 || usage_error "missing value of --out" ;;
        --only) ONLY="${2:-}"; shift 2 || usage_error "missing value of --only" ;;
        --quick) DURATION=5; RECORDS=10000; shift ;;
        --memory) MEMORY=1; shift ;;
        --keep) KEEP=1; shift ;;
        -h | --help) usage; exit 0 ;;
        *) usage_error "unknown argument '$1'" ;;
    esac
done

if [[ -z "$RECORDS" ]]; then
    if ((MEMORY)); then RECORDS=1000000; else RECORDS=100000; fi
fi
for pair in "duration:$DURATION" "records:$RECORDS" "concurrency:$CONCURRENCY"; do
    name="${pair%%:*}"
    value="${pair#*:}"
    [[ "$value" =~ ^[1-9][0-9]*$ ]] || usage_error "invalid --$name '$value': pass a positive whole number"
done
case "$ONLY" in
    all | ringkv | etcd | redis) ;;
    *) usage_error "invalid --only '$ONLY': pass ringkv, etcd or redis" ;;
esac
if ((MEMORY)) && [[ "$ONLY" != all ]]; then
    usage_error "--memory runs one ringkv cluster; leave out --only"
fi

wants() { [[ "$ONLY" == all || "$ONLY" == "$1" ]] && ((MEMORY == 0)); }

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release"
if [[ -z "$OUT" ]]; then
    OUT="${TMPDIR:-/tmp}/ringkv-bench-$(date +%Y%m%d-%H%M%S)"
fi
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"

# Ports. The ringkv ports stay clear of scripts/start-cluster.sh (7401+).
RINGKV_PORTS=(7611 7612 7613)
ETCD_CLIENT_PORTS=(12379 22379 32379)
ETCD_PEER_PORTS=(12380 22380 32380)
REDIS_PORT=6390

# ---------------------------------------------------------------------------
# Processes and cleanup.

WORK="$(mktemp -d -t ringkv-bench-data.XXXXXX)"
PIDS=()

# Stops the given PIDs with SIGTERM, then SIGKILL after 10 s.
stop_pids() {
    local pid
    for pid in "$@"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    local deadline=$((SECONDS + 10))
    for pid in "$@"; do
        while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            echo "bench.sh: PID $pid did not stop within 10 s; sending SIGKILL" >&2
            kill -KILL "$pid" 2>/dev/null || true
        fi
        wait "$pid" 2>/dev/null || true
    done
}

cleanup() {
    local status=$?
    trap - EXIT INT TERM
    if ((${#PIDS[@]} > 0)); then
        stop_pids "${PIDS[@]}"
    fi
    if ((KEEP)); then
        echo "bench.sh: data and logs kept in $WORK" >&2
    else
        rm -rf "$WORK"
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Starts a server in the background with its output in LOG and records its
# PID in PIDS and in the variable named by the first argument.
start_server() {
    local -n pid_var="$1"
    local log="$2"
    shift 2
    "$@" >"$log" 2>&1 </dev/null &
    pid_var=$!
    PIDS+=("$pid_var")
}

# Stops the servers with the given PIDs and drops them from PIDS.
stop_servers() {
    stop_pids "$@"
    local remaining=() pid stopped s
    for pid in "${PIDS[@]}"; do
        stopped=0
        for s in "$@"; do [[ "$pid" == "$s" ]] && stopped=1; done
        ((stopped)) || remaining+=("$pid")
    done
    PIDS=("${remaining[@]}")
}

# Fails when a TCP port on 127.0.0.1 already has a listener.
require_free_ports() {
    local port
    for port in "$@"; do
        if ss -Hltn "sport = :$port" 2>/dev/null | grep -q .; then
            die "port $port on this machine is in use; stop what listens there (ss -ltnp 'sport = :$port')"
        fi
    done
}

# Prints the resident memory of a process in KiB (VmRSS).
rss_kib() {
    awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"
}

# Shows the last log lines of a server that is no longer running.
check_running() {
    local pid="$1" log="$2"
    if ! kill -0 "$pid" 2>/dev/null; then
        echo "bench.sh: server PID $pid exited; last lines of $log:" >&2
        tail -n 5 "$log" >&2
        exit 1
    fi
}

# ---------------------------------------------------------------------------
# Packages and build.

install_packages() {
    local packages=()
    command -v ss >/dev/null || packages+=(iproute2)
    command -v python3 >/dev/null || packages+=(python3)
    if wants etcd; then
        command -v etcd >/dev/null || packages+=(etcd-server)
        command -v etcdctl >/dev/null || packages+=(etcd-client)
        [[ -x /usr/bin/protoc ]] || packages+=(protobuf-compiler)
    fi
    if wants redis; then
        command -v redis-server >/dev/null || packages+=(redis-server)
        command -v redis-benchmark >/dev/null || packages+=(redis-tools)
        command -v redis-cli >/dev/null || packages+=(redis-tools)
    fi
    ((${#packages[@]} == 0)) && return
    if ((EUID != 0)); then
        die "missing packages: ${packages[*]}; install them (apt-get install ${packages[*]}) or run as root"
    fi
    echo "installing ${packages[*]} with apt-get..."
    apt-get update -qq
    # Where the machine's policy lets packages start services, this starts
    # Debian's etcd on ports 2379 and 2380 and its redis on 6379; the
    # members started here use other ports, so both may keep running.
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${packages[@]}"
}

build() {
    # redis-benchmark alone needs no build.
    [[ "$ONLY" == redis ]] && return
    command -v cargo >/dev/null || die "cargo is not installed; install Rust from https://rustup.rs and run this script again"
    echo "building kv-node, kv-cli and kv-bench (release)..."
    (cd "$ROOT" && cargo build --release -p kv-node -p kv-client --bins)
    if wants etcd; then
        # etcd-client's build script compiles etcd's .proto files with protoc.
        export PROTOC=/usr/bin/protoc
        (cd "$ROOT" && cargo build --release -p kv-bench --features etcd)
    else
        (cd "$ROOT" && cargo build --release -p kv-bench)
    fi
}

# ---------------------------------------------------------------------------
# kv-bench phases.

# Runs kv-bench with the given flags and writes its JSON report to FILE.
bench() {
    local file="$1"
    shift
    echo "  kv-bench $*" >&2
    "$BIN/kv-bench" --json --max-secs 3600 "$@" >"$file"
}

# Runs load, A, C, ping and the single-client put run against ENDPOINTS and
# writes the reports to DIR. After the load, it calls AFTER_LOAD (a function
# name) with DIR.
run_phases() {
    local dir="$1" endpoints="$2" after_load="$3"
    shift 3
    local common=(--endpoints "$endpoints" --records "$RECORDS" "$@")
    mkdir -p "$dir"
    bench "$dir/load.json" "${common[@]}" --workload load --concurrency "$CONCURRENCY"
    "$after_load" "$dir"
    bench "$dir/a.json" "${common[@]}" --workload a --concurrency "$CONCURRENCY" --duration-secs "$DURATION"
    bench "$dir/c.json" "${common[@]}" --workload c --concurrency "$CONCURRENCY" --duration-secs "$DURATION"
    bench "$dir/ping.json" "${common[@]}" --workload ping --concurrency "$CONCURRENCY" --duration-secs "$DURATION"
    # Fresh keys after the loaded ones, one put at a time, until DURATION
    # or RECORDS puts.
    bench "$dir/put1.json" "${common[@]}" --workload load --insert-start "$RECORDS" \
        --concurrency 1 --duration-secs "$DURATION"
}

# ---------------------------------------------------------------------------
# ringkv.

RINGKV_NODE_PIDS=()

# Starts 3 kv-node processes with the given extra flags, data in DIR.
start_ringkv() {
    local dir="$1"
    shift
    require_free_ports "${RINGKV_PORTS[@]}"
    mkdir -p "$dir"
    local endpoints=() port
    for port in "${RINGKV_PORTS[@]}"; do endpoints+=("127.0.0.1:$port"); done
    local first="${endpoints[0]}" joined
    joined="$(IFS=,; echo "${endpoints[*]}")"
    RINGKV_NODE_PIDS=()
    local i pid seeds
    for i in 1 2 3; do
        seeds=()
        ((i > 1)) && seeds=(--seeds "$first")
        start_server pid "$dir/node-$i.log" "$BIN/kv-node" --data-dir "$dir/node-$i" \
            --listen "${endpoints[$((i - 1))]}" "${seeds[@]}" --n 3 --r 2 --w 2 "$@"
        RINGKV_NODE_PIDS+=("$pid")
        if ((i == 1)); then
            # The first node creates the cluster before the others join it.
            "$BIN/kv-cli" --endpoints "$first" wait --nodes 1 --timeout-secs 30 >/dev/null \
                || { check_running "$pid" "$dir/node-1.log"; die "node 1 did not start within 30 s"; }
        fi
    done
    if ! "$BIN/kv-cli" --endpoints "$joined" wait --nodes 3 --timeout-secs 60 >/dev/null; then
        for i in 1 2 3; do check_running "${RINGKV_NODE_PIDS[$((i - 1))]}" "$dir/node-$i.log"; done
        die "the ringkv cluster did not form within 60 s; see $dir/node-*.log (--keep keeps them)"
    fi
    RINGKV_ENDPOINTS="$joined"
}

# Records each node's VmRSS right after the load.
record_ringkv_rss() {
    local dir="$1" pid
    : >"$dir/rss-kib.txt"
    for pid in "${RINGKV_NODE_PIDS[@]}"; do
        rss_kib "$pid" >>"$dir/rss-kib.txt"
    done
}

run_ringkv() {
    local sync engine label
    for sync in always periodic; do
        for engine in fjall sled; do
            label="ringkv-$engine-$sync"
            echo "== $label: 3 nodes, N=3 R=2 W=2, --engine $engine --sync $sync"
            start_ringkv "$WORK/$label" --engine "$engine" --sync "$sync"
            run_phases "$OUT/$label" "$RINGKV_ENDPOINTS" record_ringkv_rss
            stop_servers "${RINGKV_NODE_PIDS[@]}"
            rm -rf "${WORK:?}/$label/node-"{1,2,3}
        done
    done
}

run_memory() {
    local label="ringkv-fjall-always-memory"
    echo "== $label: load $RECORDS keys of 100 bytes into 3 default nodes"
    start_ringkv "$WORK/$label"
    mkdir -p "$OUT/$label"
    bench "$OUT/$label/load.json" --endpoints "$RINGKV_ENDPOINTS" --records "$RECORDS" \
        --workload load --concurrency "$CONCURRENCY"
    record_ringkv_rss "$OUT/$label"
    local i=0 kib
    echo
    echo "Resident memory (VmRSS) after loading $RECORDS keys of 100 bytes:"
    while read -r kib; do
        i=$((i + 1))
        printf '  node %d (127.0.0.1:%s): %d MiB\n' "$i" "${RINGKV_PORTS[$((i - 1))]}" $((kib / 1024))
    done <"$OUT/$label/rss-kib.txt" | tee "$OUT/memory.txt"
    stop_servers "${RINGKV_NODE_PIDS[@]}"
    echo "Reports: $OUT"
}

# ---------------------------------------------------------------------------
# etcd.

ETCD_PIDS=()

etcdctl_all() {
    ETCDCTL_API=3 etcdctl --endpoints "$ETCD_ENDPOINTS" --command-timeout=120s "$@"
}

# Compacts the history to the current revision and defragments every
# member, so A and C run against a compact database as a tuned etcd would.
compact_etcd() {
    local dir="$1" pid revision
    : >"$dir/rss-kib.txt"
    for pid in "${ETCD_PIDS[@]}"; do
        rss_kib "$pid" >>"$dir/rss-kib.txt"
    done
    revision="$(etcdctl_all endpoint status --write-out=json \
        | python3 -c 'import json, sys; print(max(s["Status"]["header"]["revision"] for s in json.load(sys.stdin)))')"
    echo "  etcdctl compact $revision, then defrag of every member" >&2
    etcdctl_all compact "$revision" >/dev/null
    etcdctl_all defrag >/dev/null
}

run_etcd() {
    local dir="$WORK/etcd" cluster="" i endpoints=()
    echo "== etcd: 3 members ($(etcd --version | head -n 1))"
    require_free_ports "${ETCD_CLIENT_PORTS[@]}" "${ETCD_PEER_PORTS[@]}"
    mkdir -p "$dir"

    for i in 0 1 2; do
        cluster+="${cluster:+,}m$((i + 1))=http://127.0.0.1:${ETCD_PEER_PORTS[$i]}"
        endpoints+=("127.0.0.1:${ETCD_CLIENT_PORTS[$i]}")
    done
    ETCD_ENDPOINTS="$(IFS=,; echo "${endpoints[*]}")"

    ETCD_PIDS=()
    local pid name
    for i in 0 1 2; do
        name="m$((i + 1))"
        start_server pid "$dir/$name.log" etcd --name "$name" --data-dir "$dir/$name" \
            --listen-client-urls "http://127.0.0.1:${ETCD_CLIENT_PORTS[$i]}" \
            --advertise-client-urls "http://127.0.0.1:${ETCD_CLIENT_PORTS[$i]}" \
            --listen-peer-urls "http://127.0.0.1:${ETCD_PEER_PORTS[$i]}" \
            --initial-advertise-peer-urls "http://127.0.0.1:${ETCD_PEER_PORTS[$i]}" \
            --initial-cluster "$cluster" --initial-cluster-state new \
            --initial-cluster-token ringkv-bench --logger zap --log-outputs stderr
        ETCD_PIDS+=("$pid")
    done

    local deadline=$((SECONDS + 60))
    until etcdctl_all endpoint health >/dev/null 2>&1; do
        for i in 0 1 2; do check_running "${ETCD_PIDS[$i]}" "$dir/m$((i + 1)).log"; done
        ((SECONDS < deadline)) || die "etcd did not become healthy within 60 s; see $dir/m*.log (--keep keeps them)"
        sleep 0.5
    done

    run_phases "$OUT/etcd" "$ETCD_ENDPOINTS" compact_etcd --against etcd
    stop_servers "${ETCD_PIDS[@]}"
}

# ---------------------------------------------------------------------------
# Redis.

run_redis() {
    local dir="$WORK/redis" pid
    echo "== redis: one server ($(redis-server --version | cut -d ' ' -f 1-3))"
    require_free_ports "$REDIS_PORT"
    mkdir -p "$dir" "$OUT/redis"
    start_server pid "$dir/redis.log" redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --dir "$dir"
    local deadline=$((SECONDS + 30))
    until [[ "$(redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null)" == PONG ]]; do
        check_running "$pid" "$dir/redis.log"
        ((SECONDS < deadline)) || die "redis-server did not reply to PING within 30 s"
        sleep 0.2
    done
    # SET and GET run one after the other, as `-t set,get` would, with the
    # RSS read in between so that it is the size after the load.
    local test
    for test in set get; do
        echo "  redis-benchmark -t $test -d 100 -c $CONCURRENCY -n $RECORDS -r $RECORDS -P 1" >&2
        redis-benchmark -h 127.0.0.1 -p "$REDIS_PORT" -t "$test" -d 100 -c "$CONCURRENCY" \
            -n "$RECORDS" -r "$RECORDS" -P 1 --csv >"$OUT/redis/$test.csv"
        [[ "$test" == set ]] && rss_kib "$pid" >"$OUT/redis/rss-kib.txt"
    done
    stop_servers "$pid"
}

# ---------------------------------------------------------------------------
# Table.

print_table() {
    python3 - "$OUT" <<'PY' | tee "$OUT/table.md"
import csv
import json
import os
import sys

out = sys.argv[1]


def load(system, phase):
    path = os.path.join(out, system, phase + ".json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def op(report, name):
    for entry in (report or {}).get("operations", []):
        if entry["op"] == name:
            return entry
    return None


def ms(micros):
    return micros / 1000.0


def rss_mib(system):
    path = os.path.join(out, system, "rss-kib.txt")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return sum(int(line) for line in f if line.strip()) / 1024.0


def row_from_kv_bench(system):
    load_report = load(system, "load")
    if load_report is None:
        return None
    a, c, ping, put1 = (load(system, p) for p in ("a", "c", "ping", "put1"))
    insert = op(load_report, "insert")
    a_p99 = max((o["p99_us"] for o in (a or {}).get("operations", [])), default=None)
    c_read = op(c, "read")
    put1_insert = op(put1, "insert")
    row = {
        "load": load_report["throughput_ops_per_sec"],
        "load_p99": ms(insert["p99_us"]) if insert else None,
        "a": a["throughput_ops_per_sec"] if a else None,
        "a_p99": ms(a_p99) if a_p99 is not None else None,
        "c": c["throughput_ops_per_sec"] if c else None,
        "c_p99": ms(c_read["p99_us"]) if c_read else None,
        "put1_p50": ms(put1_insert["p50_us"]) if put1_insert else None,
        "ping": ping["throughput_ops_per_sec"] if ping else None,
        "rss": rss_mib(system),
        "errors": sum(r["total_errors"] for r in (load_report, a, c, ping, put1) if r),
    }
    if row["c"] and row["ping"]:
        row["reads_pct"] = 100.0 * row["c"] / row["ping"]
    return row


def row_from_redis():
    tests = {}
    for name in ("set", "get"):
        path = os.path.join(out, "redis", name + ".csv")
        if os.path.exists(path):
            with open(path) as f:
                for record in csv.DictReader(f):
                    tests[record["test"]] = record
    if not tests:
        return None
    set_, get = tests.get("SET"), tests.get("GET")
    return {
        "load": float(set_["rps"]) if set_ else None,
        "load_p99": float(set_["p99_latency_ms"]) if set_ else None,
        "c": float(get["rps"]) if get else None,
        "c_p99": float(get["p99_latency_ms"]) if get else None,
        "rss": rss_mib("redis"),
    }


rows = []
for name in sorted(os.listdir(out)):
    if name.startswith("ringkv-") and not name.endswith("-memory"):
        row = row_from_kv_bench(name)
        if row:
            rows.append((name, row))
etcd = row_from_kv_bench("etcd")
if etcd:
    rows.append(("etcd", etcd))
redis = row_from_redis()
if redis:
    rows.append(("redis (SET as load, GET as C)", redis))

for name, row in rows:
    if name.startswith("ringkv-") and etcd:
        for key in ("load", "a", "c"):
            if row.get(key) and etcd.get(key):
                row[key + "_ratio"] = row[key] / etcd[key]

columns = [
    ("system/config", None, None),
    ("load ops/s", "load", "{:.0f}"),
    ("load p99 ms", "load_p99", "{:.2f}"),
    ("A ops/s", "a", "{:.0f}"),
    ("A p99 ms", "a_p99", "{:.2f}"),
    ("C ops/s", "c", "{:.0f}"),
    ("C p99 ms", "c_p99", "{:.2f}"),
    ("1-client put p50 ms", "put1_p50", "{:.2f}"),
    ("ping ops/s", "ping", "{:.0f}"),
    ("reads % of ping", "reads_pct", "{:.0f}%"),
    ("RSS after load MiB", "rss", "{:.0f}"),
    ("load ringkv/etcd", "load_ratio", "{:.2f}"),
    ("A ringkv/etcd", "a_ratio", "{:.2f}"),
    ("C ringkv/etcd", "c_ratio", "{:.2f}"),
]
print("| " + " | ".join(title for title, _, _ in columns) + " |")
print("| " + " | ".join("---" for _ in columns) + " |")
for name, row in rows:
    cells = [name]
    for _, key, fmt in columns[1:]:
        value = row.get(key)
        cells.append("-" if value is None else fmt.format(value))
    print("| " + " | ".join(cells) + " |")
print()
print("A p99 is the higher of the read and update p99. RSS sums the cluster's server")
print("processes (3 for ringkv and etcd). etcd's ping is Maintenance.Status.")
failed = [(name, row["errors"]) for name, row in rows if row.get("errors")]
for name, count in failed:
    print(f"WARNING: {name}: {count} failed operations; see the JSON reports")
PY
}

# ---------------------------------------------------------------------------
# Main.

install_packages
build
echo "data: $WORK, reports: $OUT"
echo "settings: duration $DURATION s, $RECORDS keys, concurrency $CONCURRENCY" \
    | tee "$OUT/settings.txt"

if ((MEMORY)); then
    run_memory
    exit 0
fi
wants ringkv && run_ringkv
wants etcd && run_etcd
wants redis && run_redis

echo
print_table
echo
echo "Reports and table: $OUT"
