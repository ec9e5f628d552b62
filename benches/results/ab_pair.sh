#!/usr/bin/env bash
# Paired A/B: relay A and relay B run AT THE SAME TIME, each with its own loadgen (the same
# loadgen binary for both), so whatever else loads the machine loads both alike. Prints relay
# CPU per frame of each side and B/A per run. Keep the load below saturation (delivered/s must
# equal agents x rate; e2e p99 well under a second), or batching changes and the ratio with it.
#
#   A_DIR=<relay A dir> B_DIR=<relay B dir> LOADGEN_BIN_DIR=<loadgen dir> \
#     benches/results/ab_pair.sh OUTDIR RUNS --agents 300
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="$1"; runs="$2"; shift 2
mkdir -p "$out"
for i in $(seq 1 "$runs"); do
  BIN_DIR="$A_DIR" bash "$here/ab_run1.sh" "${SCENARIO:-fleet}" "$out/a-$i.json" "$@" >/dev/null 2>&1 &
  a=$!
  BIN_DIR="$B_DIR" bash "$here/ab_run1.sh" "${SCENARIO:-fleet}" "$out/b-$i.json" "$@" >/dev/null 2>&1 &
  b=$!
  wait "$a" "$b"
  python3 - "$out/a-$i.json" "$out/b-$i.json" "$i" <<'PY'
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:3])
def line(j):
    return (f"{j['relay']['cpu_ns_per_frame'] / 1000:.2f} us/frame "
            f"({j['throughput']['delivered_per_s']:.0f}/s, e2e p99 {j['e2e_latency']['p99_us'] / 1000:.0f} ms, "
            f"lost {j['totals']['lost']}, dups {j['totals']['duplicates']})")
r = b['relay']['cpu_ns_per_frame'] / a['relay']['cpu_ns_per_frame']
print(f"run {sys.argv[3]}: A {line(a)}  B {line(b)}  B/A {r:.3f}", flush=True)
PY
done
