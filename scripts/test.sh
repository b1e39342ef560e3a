#!/usr/bin/env bash
# Runs every check and test of ragpool. Installs redis-server (apt-get) when it is missing.
#
#   ./scripts/test.sh            everything
#   ./scripts/test.sh -p NAME    only cargo tests of one package (extra args go to cargo test)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

ensure_cargo
ensure_apt_packages redis-server redis-server redis-cli redis-tools
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/ragpool/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

if [ $# -gt 0 ]; then
  exec cargo test "$@"
fi

step() { printf '\n==> %s\n' "$*"; }

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings

step "cargo test"
cargo test --workspace --no-fail-fast

if [ -x scripts/schemathesis.sh ]; then
  step "API contract (schemathesis against /openapi.json)"
  # `cargo test` has built the binary already (the API's integration tests need it); building
  # it alone would resolve features differently and compile the dependencies a second time.
  api="$CARGO_TARGET_DIR/debug/ragpool-api"
  [ -x "$api" ] || cargo build -p ragpool-api --bin ragpool-api
  scripts/schemathesis.sh "$api"
fi

step "all checks passed"
