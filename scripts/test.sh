#!/usr/bin/env bash
# Runs the whole test suite: formatting, lints, then every test of the
# workspace (unit, property, storage crash tests, the integration tests
# that start real kv-node processes on 127.0.0.1, and the kv-jepsen fault
# runs). As root it installs iproute2, nftables and faketime when missing,
# so the network-partition and clock-skew runs can run.
#
# Uses cargo-nextest when it is installed (parallel, per-test timeouts from
# .config/nextest.toml) and `cargo test` otherwise.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

if ! command -v cargo >/dev/null 2>&1; then
    echo "error: cargo is not installed; install Rust from https://rustup.rs and run this script again" >&2
    exit 1
fi

# The kv-jepsen fault tests cut the network with `ip` and `nft` and skew
# clocks with libfaketime. As root on a Debian-like machine, install the
# packages that are missing; otherwise those tests skip with a reason.
if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null 2>&1; then
    missing=()
    command -v ip >/dev/null 2>&1 || missing+=(iproute2)
    command -v nft >/dev/null 2>&1 || missing+=(nftables)
    compgen -G "/usr/lib/*/faketime/libfaketime.so.1" >/dev/null || missing+=(faketime)
    if (( ${#missing[@]} > 0 )); then
        echo "== apt-get install ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
    fi
fi

echo "== cargo fmt --check"
cargo fmt --all --check

echo "== cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings

# The integration tests run the kv-node and kv-cli binaries.
echo "== cargo build --workspace"
cargo build --workspace --bins

echo "== tests"
if cargo nextest --version >/dev/null 2>&1; then
    # nextest does not run doctests; run them first so that nextest's
    # summary is the last thing printed.
    cargo test --workspace --doc
    cargo nextest run --workspace --no-fail-fast "$@"
else
    cargo test --workspace --no-fail-fast "$@"
fi
