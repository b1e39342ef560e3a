#!/usr/bin/env bash
# Checks the chart's alerting rules with the real promtool: `promtool check rules` on
# charts/ragpool/files/alerts.yaml and its unit tests (`promtool test rules
# scripts/alerts-test.yaml`). Installs Debian's prometheus package (which ships promtool) when
# promtool is missing. The metric names the rules and the Grafana dashboard use are checked
# against the components' real metrics by `cargo test -p ragpool-cli --test observability`.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

ensure_apt_packages promtool prometheus
promtool check rules charts/ragpool/files/alerts.yaml
promtool test rules scripts/alerts-test.yaml
echo "alerts: rules valid, every unit test passed"
