#!/usr/bin/env bash
# Browser test of the dashboard: a real headless Chromium (Debian's `chromium`, driven by
# npm's playwright-core) against a real ragpool-api, ragpool-executor processes and a private
# redis-server, all on free loopback ports. See api/tests/browser/dashboard.test.cjs.
#
#   scripts/dashboard-check.sh [BIN_DIR]   BIN_DIR holds ragpool-api and ragpool-executor
#                                          (default: build them with cargo)
#
# Installs chromium and npm with apt-get when missing, and playwright-core (pinned) into
# ~/.cache/ragpool/node. Saves the main page as target/dashboard.png (or $SCREENSHOT).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(dirname "$here")
# shellcheck source=lib.sh
. "$here/lib.sh"

PLAYWRIGHT_VERSION=1.65.1

ensure_apt_packages redis-server redis-server chromium chromium npm npm node nodejs \
  python3 python3 curl curl

component_binaries "$@"

node_dir=${XDG_CACHE_HOME:-$HOME/.cache}/ragpool/node
installed=$(node -p "require('$node_dir/node_modules/playwright-core/package.json').version" 2>/dev/null || true)
if [ "$installed" != "$PLAYWRIGHT_VERSION" ]; then
  echo "installing playwright-core $PLAYWRIGHT_VERSION into $node_dir" >&2
  mkdir -p "$node_dir"
  npm install --prefix "$node_dir" --no-audit --no-fund --silent "playwright-core@$PLAYWRIGHT_VERSION"
fi

scratch_workdir dashboard

start_scratch_redis "$work"

start_scratch_api RAGPOOL_MAX_ATTEMPTS=1

# A second API with keys, on its own key prefix in the same Redis: the dashboard's table of
# keys (an admin sees each key's tasks by name, never the key).
keyed_port=$(free_port)
keyed_pid=""
trap '[ -n "$keyed_pid" ] && kill "$keyed_pid" 2>/dev/null && wait "$keyed_pid" 2>/dev/null; stop_scratch' EXIT
RAGPOOL_REDIS_URL="redis://127.0.0.1:$redis_port" \
RAGPOOL_LISTEN="127.0.0.1:$keyed_port" \
RAGPOOL_KEY_PREFIX=keyed \
RAGPOOL_API_KEYS="alice:alice-key-0123456789:maxInFlight=2,root:root-key-0123456789a:admin" \
RUST_LOG=info \
  "$bin/ragpool-api" >"$work/api-keyed.log" 2>&1 &
keyed_pid=$!
wait_for "ragpool-api with keys on port $keyed_port" curl -fsS "http://127.0.0.1:$keyed_port/readyz" \
  || { cat "$work/api-keyed.log" >&2; exit 1; }

# A port nothing listens on: the failing executor's backend.
closed_port=$(free_port)
status=0
API="http://127.0.0.1:$api_port" \
KEYED_API="http://127.0.0.1:$keyed_port" \
REDIS_URL="redis://127.0.0.1:$redis_port" \
EXECUTOR="$bin/ragpool-executor" \
CLOSED_URL="http://127.0.0.1:$closed_port" \
WORK="$work" \
PLAYWRIGHT="$node_dir" \
SCREENSHOT="${SCREENSHOT:-$root/target/dashboard.png}" \
  node "$root/api/tests/browser/dashboard.test.cjs" || status=$?

if [ "$status" -ne 0 ]; then
  for log in "$work"/*.log; do
    echo "--- $(basename "$log") (last 30 lines) ---" >&2
    tail -n 30 "$log" >&2
  done
fi
exit "$status"
