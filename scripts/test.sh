#!/usr/bin/env bash
# Runs every check and test of ragpool. Installs redis-server (apt-get) when it is missing.
#
#   ./scripts/test.sh            everything (the image check only as root)
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

step "Helm chart (lint, render, Kubernetes and CRD schemas, RBAC, refused values)"
scripts/chart-check.sh

step "docs (every Markdown link resolves)"
scripts/docs-check.sh

step "alerting rules (promtool check rules, promtool test rules)"
scripts/alerts-check.sh

step "cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings

step "cargo test"
cargo test --workspace --no-fail-fast

step "queue protocol suite with 6 partitions (every key layout test again, partitioned)"
# The same tests over a single server and a 3-master cluster, with every queue split into six
# partitions: claims, positions, events, maintenance and bulk actions must span them.
RAGPOOL_TEST_PARTITIONS=6 cargo test -p ragpool-queue --no-fail-fast

step "chaos suite, short (single Redis: executors, Redis and the API killed under load)"
# Debug binaries: the chaos run starts ragpool-api and ragpool-executor from the directory of
# ragpool-bench. Exits non-zero if an acknowledged task was lost, a result was wrong or a task
# ended twice. Submissions go under two API keys (a batch key with maxInFlight, a weighted
# live key), so fair share between keys runs under the chaos too.
cargo build --workspace --bins
"$CARGO_TARGET_DIR/debug/ragpool-bench" chaos --short --topology single

step "chaos suite, short (Sentinel, durability replicated: failovers under load)"
# A primary and a replica (appendfsync always) under three sentinels: a SIGKILLed primary and
# two SENTINEL FAILOVERs besides the executor and API restarts. Under replicated a failover
# must lose nothing acknowledged, so any loss fails the step.
"$CARGO_TARGET_DIR/debug/ragpool-bench" chaos --short --topology sentinel --durability replicated

step "chaos suite, short (Redis Cluster, 3 masters + 3 replicas, six partitions, durability replicated: failovers under load)"
# Every queue split over the three masters (RAGPOOL_PARTITIONS=6), each master with a replica
# (appendfsync always, cluster-node-timeout 2 s): a SIGKILLed master whose replica is elected
# and two CLUSTER FAILOVERs, each on the next master, besides the executor and API restarts.
# Under replicated a failover must lose nothing acknowledged, so any loss fails the step.
"$CARGO_TARGET_DIR/debug/ragpool-bench" chaos --short --topology cluster --durability replicated

step "fair share bench, smoke (one small round: every task claimed, B's tasks behind A's batch)"
# Debug build, about 6 s; fails only if a drain misses a task. Figures: bench/README.md.
"$CARGO_TARGET_DIR/debug/ragpool-bench" fairness --rounds 1 --tasks 2000 --batch 1000

if [ -x scripts/schemathesis.sh ]; then
  step "API contract (schemathesis against /openapi.json)"
  # `cargo test` has built the binary already (the API's integration tests need it); building
  # it alone would resolve features differently and compile the dependencies a second time.
  api="$CARGO_TARGET_DIR/debug/ragpool-api"
  [ -x "$api" ] || cargo build -p ragpool-api --bin ragpool-api
  scripts/schemathesis.sh "$api"
fi

if [ -x scripts/dashboard-check.sh ]; then
  step "dashboard in a real browser (Chromium + playwright-core, API + executors + Redis)"
  [ -x "$CARGO_TARGET_DIR/debug/ragpool-api" ] || cargo build -p ragpool-api --bin ragpool-api
  [ -x "$CARGO_TARGET_DIR/debug/ragpool-executor" ] || cargo build -p ragpool-executor --bin ragpool-executor
  scripts/dashboard-check.sh "$CARGO_TARGET_DIR/debug"
fi

step "Python client example (examples/client.py against API + builtin executor + Redis)"
[ -x "$CARGO_TARGET_DIR/debug/ragpool-api" ] || cargo build -p ragpool-api --bin ragpool-api
[ -x "$CARGO_TARGET_DIR/debug/ragpool-executor" ] || cargo build -p ragpool-executor --bin ragpool-executor
scripts/client-check.sh "$CARGO_TARGET_DIR/debug"

# Last: the release build takes a while, and the check chroots into the image as uid 65532.
if [ "$(id -u)" -eq 0 ]; then
  step "container image (release build, every binary run inside it, contents, size)"
  scripts/image.sh --check
else
  step "container image: skipped, its check needs root (sudo scripts/image.sh --check)"
fi

step "all checks passed"
