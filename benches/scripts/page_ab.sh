#!/usr/bin/env bash
# Fleet page open vs not (issue 22): relay CPU per frame on a cpu10k-like run, alternating
# runs, and /metrics scrape time and size at that session count.
#   AGENTS=10000 RUNS=3 benches/scripts/page_ab.sh
# "Page open" = one client on the page's event stream (/v1/page/events, one state per second,
# 50 drones per page) plus one /v1/page/state and /v1/latency read a second: the server-side
# work an open page causes (the browser's own CPU is not the relay's).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
AGENTS="${AGENTS:-10000}"
DURATION="${DURATION:-15s}"
[ -x "$RELAY_BIN" ] && [ -x "$LOADGEN_BIN" ] || build_release
start_relay file
HTTP="$(sed -n 's/^listen = "\(127.0.0.1:[0-9]*\)"/\1/p' "$(dirname "$RELAY_CA")/../relay.toml" | tail -1)"
echo "$(machine_line) · agents $AGENTS x 2 Hz · $DURATION"
printf '%-5s %-4s %12s %12s %10s\n' run page frames/s cpu_ns/frame ack_p99_ms
for i in $(seq 1 "${RUNS:-3}"); do
  for page in off on; do
    PAGE_PIDS=()
    if [ "$page" = on ]; then
      curl -sN "http://$HTTP/v1/page/events?limit=50" >/dev/null &
      PAGE_PIDS+=($!)
      ( while true; do curl -sf "http://$HTTP/v1/page/state?limit=50" >/dev/null;
          curl -sf "http://$HTTP/v1/latency" >/dev/null; sleep 1; done ) &
      PAGE_PIDS+=($!)
    fi
    out="$WORK/run-$i-$page.json"
    "$LOADGEN_BIN" --scenario cpu10k --agents "$AGENTS" --duration "$DURATION" \
      --relay "127.0.0.1:$RELAY_PORT" --ca "$RELAY_CA" --relay-pid "$RELAY_PID" \
      --no-e2e --json "$out" --quiet >/dev/null
    for p in "${PAGE_PIDS[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
    python3 - "$out" "$i" "$page" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
fps = r["throughput"].get("acked_per_s") or r["throughput"]["sent_per_s"]
cpu = (r.get("relay") or {}).get("cpu_ns_per_frame") or 0
ack = ((r.get("ack_latency") or {}).get("p99_us") or 0) / 1000
print(f"{sys.argv[2]:<5} {sys.argv[3]:<4} {fps:12.0f} {cpu:12.0f} {ack:10.2f}")
PY
  done
done
# /metrics at this session count (agents still connected? no: measure with a short idle run).
"$LOADGEN_BIN" --scenario cpu10k --agents "$AGENTS" --rate idle --duration 20s \
  --relay "127.0.0.1:$RELAY_PORT" --ca "$RELAY_CA" --no-e2e --quiet >/dev/null &
LG=$!
wait_for curl -sf "http://$HTTP/metrics"
for _ in $(seq 1 200); do
  s="$(curl -sf "http://$HTTP/metrics" | sed -n 's/^contrail_sessions_active \([0-9]*\).*/\1/p')"
  [ "${s:-0}" -ge "$AGENTS" ] && break
  sleep 0.1
done
for _ in 1 2 3; do
  curl -s -o "$WORK/metrics.txt" -w "metrics scrape at ${s:-?} sessions: %{time_total}s, %{size_download} bytes\n" "http://$HTTP/metrics"
done
echo "series: $(grep -vc '^#' "$WORK/metrics.txt")"
kill "$LG" 2>/dev/null || true; wait "$LG" 2>/dev/null || true
