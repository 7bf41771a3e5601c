#!/usr/bin/env bash
# Runs the whole test suite: formatting, lints, then every test of the
# workspace (unit, property, storage crash tests and the integration tests
# that start real kv-node processes on 127.0.0.1).
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

echo "== cargo fmt --check"
cargo fmt --all --check

echo "== cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings

# The integration tests run the kv-node and kv-cli binaries.
echo "== cargo build --workspace"
cargo build --workspace --bins

echo "== tests"
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --no-fail-fast "$@"
    # nextest does not run doctests.
    cargo test --workspace --doc
else
    cargo test --workspace --no-fail-fast "$@"
fi
