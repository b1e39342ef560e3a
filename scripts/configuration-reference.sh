#!/usr/bin/env bash
# Writes docs/configuration.md from the binaries' --help and the CRD's schema (the test suite
# checks that it is current).
set -euo pipefail
cd "$(dirname "$0")/.."
RAGPOOL_BLESS=1 cargo test -p ragpool-cli --test configuration -- the_configuration_reference_is_current
echo "wrote docs/configuration.md"
