#!/usr/bin/env bash
# Runs ragpool locally: the API and an executor with the built-in RAG backend in one process,
# and a private redis-server (data under ./.ragpool/) unless RAGPOOL_REDIS_URL is set.
# Installs redis-server (apt-get) when it is missing, and puts the `ragpool` CLI on PATH (a
# link in cargo's bin folder to the binary built here). Extra arguments go to `ragpool dev`.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

ensure_cargo
if [ -z "${RAGPOOL_REDIS_URL:-}" ]; then
  ensure_apt_packages redis-server redis-server
fi
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/ragpool/target}"
cargo build -q -p ragpool-cli --bin ragpool
link_on_path "$CARGO_TARGET_DIR/debug/ragpool"
exec "$CARGO_TARGET_DIR/debug/ragpool" dev "$@"
