#!/usr/bin/env bash
# Contract check of the API: starts a private redis-server and the given ragpool-api binary
# on free loopback ports, then lets schemathesis (from PyPI, cached in a venv) generate
# requests from /openapi.json and check that no answer is a 5xx and every answer matches
# the document (status, content type, headers, body schema).
#
#   scripts/schemathesis.sh target/debug/ragpool-api [extra schemathesis args...]
#
# Environment: SCHEMATHESIS_MAX_EXAMPLES (default 30) bounds the cases per operation.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib.sh
. "$here/lib.sh"

if [ $# -lt 1 ] || [ ! -x "$1" ]; then
  echo "usage: $0 PATH/TO/ragpool-api [schemathesis args...]" >&2
  exit 2
fi
api_bin=$(cd "$(dirname "$1")" && pwd)/$(basename "$1")
shift

SCHEMATHESIS_VERSION=4.32.5
max_examples=${SCHEMATHESIS_MAX_EXAMPLES:-30}

ensure_apt_packages redis-server redis-server redis-cli redis-tools curl curl python3 python3
venv=$(ensure_python_venv schemathesis "schemathesis==$SCHEMATHESIS_VERSION")

scratch_workdir schemathesis

start_scratch_redis "$work"

api_port=$(free_port)
# No executor runs here, so tasks never end: short wait and stream limits keep requests
# on real tasks quick (`?wait=` above the limit is a documented 422).
RAGPOOL_REDIS_URL="redis://127.0.0.1:$redis_port" \
RAGPOOL_LISTEN="127.0.0.1:$api_port" \
RAGPOOL_MAX_WAIT_SECONDS=2 \
RAGPOOL_MAX_STREAM_SECONDS=2 \
RUST_LOG=warn \
  "$api_bin" >"$work/api.log" 2>&1 &
api_pid=$!
wait_for "ragpool-api on port $api_port" curl -fsS "http://127.0.0.1:$api_port/readyz" \
  || { cat "$work/api.log" >&2; exit 1; }

echo "schemathesis $SCHEMATHESIS_VERSION against ragpool-api on 127.0.0.1:$api_port" >&2
status=0
# From the temporary directory: schemathesis and hypothesis leave caches in the working
# directory.
# X-Ragpool-Client: as the CLI and the dashboard, it says the requests are no cross-site form,
# so a bodiless retry, cancel or purge reaches its handler (docs/api.md, "Browsers").
(cd "$work" && "$venv/bin/schemathesis" run "http://127.0.0.1:$api_port/openapi.json" \
  --header 'X-Ragpool-Client: schemathesis' \
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance \
  --max-examples "$max_examples" \
  --phases examples,coverage,fuzzing,stateful \
  --request-timeout 10 \
  --seed 1 \
  --workers 1 \
  --generation-database none \
  --no-color \
  "$@") || status=$?

if [ "$status" -ne 0 ]; then
  echo "--- ragpool-api log (last 50 lines) ---" >&2
  tail -n 50 "$work/api.log" >&2
fi
exit "$status"
