#!/usr/bin/env bash
# Checks the Helm chart (charts/ragpool) with the real Helm engine: lint, render the default
# values and every charts/ragpool/ci/*-values.yaml, validate each object against the
# Kubernetes schemas (strict) and pools against the CRD, compare the RBAC with
# operator/rbac.yaml, and make sure bad values are refused. See scripts/chart_check.py.
#
# Installs helm-python-sdk (Helm's Go SDK as a Python library), kubernetes-validate,
# jsonschema and PyYAML from PyPI into a virtualenv under ~/.cache/ragpool.
# Environment: KUBERNETES_VERSIONS (default 1.33.0,1.37.0) picks the schemas.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib.sh
. "$here/lib.sh"

venv=$(ensure_python_venv chart \
  helm-python-sdk==0.2.2 kubernetes-validate==1.37.0 jsonschema==4.26.0 PyYAML==6.0.4)
exec "$venv/bin/python" "$here/chart_check.py" "$@"
