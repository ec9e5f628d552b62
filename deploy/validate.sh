#!/usr/bin/env bash
# Validates the deployment assets under deploy/ without Docker, a cluster or a cloud account:
#   1. promtool check config / check rules / test rules on deploy/observability/prometheus
#   2. deploy/validate.py: compose, Kubernetes and Terraform parsed and checked against the
#      relay's real configuration (ENV_VARS and config structs in relay/src/config.rs, ports,
#      probe endpoints, metric names in CONTRACTS.md); Terraform parsed with python-hcl2 and
#      `terraform fmt -check` when a terraform binary is present.
# Idempotent; installs what is missing (Debian package prometheus for promtool, PyPI packages
# PyYAML and python-hcl2 into deploy/.venv). Exits non-zero on any failure.
#
#   bash deploy/validate.sh            # from anywhere
#   bash deploy/validate.sh --strict   # warnings (pending relay features) fail too
set -euo pipefail

DEPLOY="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$DEPLOY")"
PROM="$DEPLOY/observability/prometheus"
VENV="$DEPLOY/.venv"
status=0

log() { printf '\n### %s\n' "$*"; }

# ---------------------------------------------------------------- promtool
if ! command -v promtool >/dev/null 2>&1; then
  log "promtool missing: installing Debian package prometheus"
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null || true
    apt-get install -y -qq --no-install-recommends prometheus >/dev/null || true
  fi
fi
if command -v promtool >/dev/null 2>&1; then
  log "promtool $(promtool --version 2>&1 | head -n1 | awk '{print $3}')"
  promtool check config "$PROM/prometheus.yml" || status=1
  promtool check rules "$PROM/alerts.yml" || status=1
  (cd "$PROM" && promtool test rules alerts_test.yml) || status=1
else
  echo "FAILED: promtool not available and could not be installed (apt-get install prometheus)" >&2
  status=1
fi

# ---------------------------------------------------------------- python deps
PY=python3
if ! "$PY" -c 'import yaml, hcl2, tomllib' >/dev/null 2>&1; then
  if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c 'import yaml, hcl2, tomllib' >/dev/null 2>&1; then
    PY="$VENV/bin/python"
  else
    log "installing PyYAML and python-hcl2 into deploy/.venv"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check 'PyYAML>=6' 'python-hcl2>=4' || status=1
    PY="$VENV/bin/python"
  fi
fi

# ---------------------------------------------------------------- config agreement
log "config agreement (deploy/validate.py)"
"$PY" "$DEPLOY/validate.py" "$@" || status=1

if [ "$status" -ne 0 ]; then
  echo "deploy/validate.sh: FAILED" >&2
else
  echo "deploy/validate.sh: OK"
fi
exit "$status"
