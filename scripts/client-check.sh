#!/usr/bin/env bash
# Runs examples/client.py against a real ragpool-api and a builtin ragpool-executor (indexing
# docs/ as its corpus) over a private redis-server, all on free loopback ports, and checks it
# printed a finished result for each task kind.
#
#   scripts/client-check.sh [BIN_DIR]   BIN_DIR holds ragpool-api and ragpool-executor
#                                       (default: build them with cargo)
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(dirname "$here")
# shellcheck source=lib.sh
. "$here/lib.sh"

ensure_apt_packages redis-server redis-server python3 python3 curl curl

component_binaries "$@"

scratch_workdir client
executor_pid=""
stop_all() {
  [ -n "$executor_pid" ] && kill "$executor_pid" 2>/dev/null && wait "$executor_pid" 2>/dev/null
  stop_scratch
}
trap stop_all EXIT

start_scratch_redis "$work"

start_scratch_api

metrics_port=$(free_port)
RAGPOOL_REDIS_URL="redis://127.0.0.1:$redis_port" \
RAGPOOL_BACKEND=builtin \
RAGPOOL_DOCS="$root/docs" \
RAGPOOL_METRICS_LISTEN="127.0.0.1:$metrics_port" \
  "$bin/ragpool-executor" >"$work/executor.log" 2>&1 &
executor_pid=$!
wait_for "ragpool-executor ready on port $metrics_port" \
  curl -fsS "http://127.0.0.1:$metrics_port/readyz" \
  || { cat "$work/executor.log" >&2; exit 1; }
grep -m1 "document index built" "$work/executor.log"

status=0
python3 "$root/examples/client.py" --api "http://127.0.0.1:$api_port" | tee "$work/client.out" \
  || status=$?
for kind in analyze_image complete_answer full_query; do
  grep -q "^finished $kind " "$work/client.out" \
    || { echo "no finished $kind result in the client's output" >&2; status=1; }
done
if [ "$status" -ne 0 ]; then
  for log in "$work"/*.log; do
    echo "--- $(basename "$log") (last 30 lines) ---" >&2
    tail -n 30 "$log" >&2
  done
fi
exit "$status"
