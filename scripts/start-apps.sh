#!/usr/bin/env bash
# Starts the example apps against the local cluster that
# scripts/start-cluster.sh runs, and prints their URLs.
#
# The URL shortener listens on 127.0.0.1:$((APP_BASE_PORT + 1)), the chat
# service on 127.0.0.1:$((APP_BASE_PORT + 2)) and the drive on
# 127.0.0.1:$((APP_BASE_PORT + 3)) (APP_BASE_PORT defaults to 8080). Each app's log goes to .apps/<app>.log and its PID to
# .apps/<app>.pid under the repository. Stop them with scripts/stop-apps.sh.
#
# Environment: RINGKV_ENDPOINTS (the cluster, default the three nodes of
# scripts/start-cluster.sh), APP_BASE_PORT, CARGO_TARGET_DIR,
# RINGKV_PROFILE (release, the default, or debug).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE="$ROOT/.apps"
mkdir -p "$STATE"
APP_BASE_PORT="${APP_BASE_PORT:-8080}"
PROFILE="${RINGKV_PROFILE:-release}"
export RINGKV_ENDPOINTS="${RINGKV_ENDPOINTS:-127.0.0.1:7401,127.0.0.1:7402,127.0.0.1:7403}"

if ! command -v cargo >/dev/null 2>&1; then
    echo "error: cargo is not installed; install Rust from https://rustup.rs and run this script again" >&2
    exit 1
fi
PROFILE_FLAG=()
[[ "$PROFILE" == "release" ]] && PROFILE_FLAG=(--release)
TARGET_DIR="${CARGO_TARGET_DIR:-target}"
[[ "$TARGET_DIR" == /* ]] || TARGET_DIR="$ROOT/$TARGET_DIR"
BIN="$TARGET_DIR/$PROFILE"

APPS=(shortener chat drive)
echo "building the apps ($PROFILE)..."
(cd "$ROOT" && cargo build --quiet "${PROFILE_FLAG[@]}" $(printf -- '-p kv-%s ' "${APPS[@]}") --bins)

# The cluster must answer first: an app needs it to claim its worker id.
first="${RINGKV_ENDPOINTS%%,*}"
if ! "$BIN/kv-cli" --endpoints "$RINGKV_ENDPOINTS" status >/dev/null 2>&1; then
    echo "error: no node of $RINGKV_ENDPOINTS answers; start the cluster with scripts/start-cluster.sh first" >&2
    exit 1
fi

is_our_app() {
    kill -0 "$1" 2>/dev/null && grep -q "kv-$2" "/proc/$1/cmdline" 2>/dev/null
}

URLS=()
for index in "${!APPS[@]}"; do
    app="${APPS[$index]}"
    address="127.0.0.1:$((APP_BASE_PORT + index + 1))"
    pid_file="$STATE/$app.pid"
    URLS+=("$app: http://$address/")
    if [[ -f "$pid_file" ]] && is_our_app "$(cat "$pid_file")" "$app"; then
        echo "$app is already running on $address, PID $(cat "$pid_file")"
        continue
    fi
    nohup "$BIN/kv-$app" --listen "$address" >>"$STATE/$app.log" 2>&1 </dev/null &
    echo $! >"$pid_file"
    echo "started $app on $address (PID $!, log .apps/$app.log)"
done

# Wait until each app answers HTTP, or show why it stopped.
for index in "${!APPS[@]}"; do
    app="${APPS[$index]}"
    address="127.0.0.1:$((APP_BASE_PORT + index + 1))"
    deadline=$((SECONDS + 30))
    until curl -s -o /dev/null "http://$address/"; do
        if ! is_our_app "$(cat "$STATE/$app.pid")" "$app"; then
            echo "error: $app exited; last lines of .apps/$app.log:" >&2
            tail -n 5 "$STATE/$app.log" >&2
            rm -f "$STATE/$app.pid"
            exit 1
        fi
        if (( SECONDS >= deadline )); then
            echo "error: $app did not answer on $address within 30 s; see .apps/$app.log" >&2
            exit 1
        fi
        sleep 0.2
    done
done

echo
echo "apps running against the cluster at $first and the other endpoints:"
printf '  %s\n' "${URLS[@]}"
cat <<MSG
Try:
  curl -s -X POST http://127.0.0.1:$((APP_BASE_PORT + 1))/api/v1/data/shorten -H 'content-type: application/json' -d '{"longUrl":"https://www.debian.org/"}'
Stop them with scripts/stop-apps.sh
MSG
