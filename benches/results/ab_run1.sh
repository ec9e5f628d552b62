#!/usr/bin/env bash
# BIN_DIR=... benches/results/ab_run1.sh SCENARIO OUT.json [loadgen args]
set -euo pipefail
source "$(dirname "$0")/../scripts/lib.sh"
BIN_DIR="${BIN_DIR:-$ROOT/target/release}"
RELAY_BIN="$BIN_DIR/contrail-relay"
LOADGEN_BIN="${LOADGEN_BIN_DIR:-$BIN_DIR}/contrail-loadgen"
s="$1"; out="$2"; shift 2
start_relay live
"$LOADGEN_BIN" --scenario "$s" --relay "127.0.0.1:$RELAY_PORT" --ca "$RELAY_CA" --relay-pid "$RELAY_PID" --json "$out" --quiet "$@" > "${out%.json}.txt" 2>&1 &
LG=$!
if [ -n "${PROF:-}" ]; then
  sleep "${PROF_DELAY:-10}"
  perf record -e cpu-clock -F 499 ${PROF_G:---call-graph dwarf,16384} -p "$RELAY_PID" -o "${out%.json}.relay.perf" -- sleep "${PROF_SECS:-4}" >/dev/null 2>&1 &
  perf record -e cpu-clock -F 499 ${PROF_G:---call-graph dwarf,16384} -p "$LG" -o "${out%.json}.lg.perf" -- sleep "${PROF_SECS:-4}" >/dev/null 2>&1 &
  wait %2 %3 2>/dev/null || true
fi
wait $LG || echo "loadgen exit $?"
stop_pid "$RELAY_PID"
python3 - "$out" <<'PY'
import json,sys
j=json.load(open(sys.argv[1]))
def g(*k):
    x=j
    for a in k:
        if isinstance(x,dict) and a in x: x=x[a]
        else: return None
    return x
print(sys.argv[1], {k:j[k] for k in j if not isinstance(j[k],(dict,list))})
PY
