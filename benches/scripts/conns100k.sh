#!/usr/bin/env bash
# 100,000 sessions on one relay (issue 23 §2): a release relay with a real redis-server (routing
# hints drone:{id} and the relay:{id} record) on free ports, `contrail-loadgen --scenario
# conns100k` (100k agents, each its own QUIC connection and full TLS handshake, multiplexed on 16
# shared UDP sockets of one process; idle with heartbeats, then 1% stream at 1 Hz). While every
# session is idle the script measures, from /proc and Redis itself:
#   * relay CPU (CPU-seconds per second of the process) over a quiet window that spans at least
#     two routing refreshes (every ttl/2 = 22.5 s), and RSS per session;
#   * the Redis refresh cost: commands/s (INFO stats) and redis-server CPU over the same window;
#   * response time and size of /v1/drones, /v1/fleet/drones, /v1/page/state, /v1/relays and
#     /metrics at 100k (curl, paged: first and last page, a search);
#   * optionally (PERF=1) a `perf record -g` of the idle relay.
# Prints a summary and writes it, with the loadgen's JSON, under $OUT (default /tmp).
#
#   benches/scripts/conns100k.sh                          # 100k agents, heartbeat 5 s (default)
#   AGENTS=10000 PERF=1 benches/scripts/conns100k.sh      # the 10k point of the profile
#   HEARTBEAT_MS=20000 benches/scripts/conns100k.sh       # agents ping every 20 s
#   CONNECT_CONCURRENCY=128 ...                           # connects in flight (default 256)
#   RELAY_PRELOAD=/usr/lib/x86_64-linux-gnu/libjemalloc.so.2 ...   # the relay on jemalloc
#   NO_BUILD=1 ...                                        # reuse target/release binaries
set -euo pipefail
source "$(dirname "$0")/lib.sh"

AGENTS="${AGENTS:-100000}"
HEARTBEAT_MS="${HEARTBEAT_MS:-5000}"
IDLE_TIMEOUT_MS="${IDLE_TIMEOUT_MS:-$(( HEARTBEAT_MS * 3 > 30000 ? HEARTBEAT_MS * 3 : 30000 ))}"
QUIET_S="${QUIET_S:-50}"      # CPU/Redis window with nothing but the idle sessions
PERF="${PERF:-0}"
CONNECT_CONCURRENCY="${CONNECT_CONCURRENCY:-256}"   # more only adds handshake timeouts on a busy box
OUT="${OUT:-/tmp/conns100k-$(date -u +%Y%m%d-%H%M%S)-$AGENTS}"
mkdir -p "$OUT"
[ -n "${NO_BUILD:-}" ] || build_release

# One process holds every agent's socket share and state; the relay one UDP socket. Raise the
# descriptor limit anyway (the loadgen's command ledger scenario uses one file per agent).
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }   # utime + stime, clock ticks
HZ="$(getconf CLK_TCK)"

# Redis on a free port, no persistence.
RPORT="$(free_port tcp)"
redis-server --port "$RPORT" --bind 127.0.0.1 --save "" --appendonly no \
  >"$OUT/redis.log" 2>&1 &
REDIS_PID=$!
PIDS+=("$REDIS_PID")
wait_for redis-cli -p "$RPORT" ping

# Relay: limits raised for the run, required file sink to /dev/null, Redis routing on.
dir="$WORK/relay"
mkdir -p "$dir"
RELAY_PORT="$(free_port udp)"
HTTP_PORT="$(free_port tcp)"
cat >"$dir/relay.toml" <<EOF
relay_id = "scale-1"
listen = "127.0.0.1:$RELAY_PORT"
[tls]
dev_cert_dir = "$dir/cert"
[http]
listen = "127.0.0.1:$HTTP_PORT"
[redis]
addr = "127.0.0.1:$RPORT"
[limits]
max_sessions = $(( AGENTS + 10000 ))
resume_max_agents = $(( AGENTS * 2 ))
heartbeat_interval_ms = $HEARTBEAT_MS
idle_timeout_ms = $IDLE_TIMEOUT_MS
[[sinks]]
name = "devnull"
type = "file"
required = true
path = "/dev/null"
format = "protobuf"
EOF
# RELAY_PRELOAD=/usr/lib/x86_64-linux-gnu/libjemalloc.so.2: the same relay on another allocator.
LD_PRELOAD="${RELAY_PRELOAD:-}" CONTRAIL_LOG=warn "$RELAY_BIN" --config "$dir/relay.toml" >"$OUT/relay.log" 2>&1 &
RELAY_PID=$!
PIDS+=("$RELAY_PID")
wait_for test -s "$dir/cert/cert.pem"
wait_for curl -sf "http://127.0.0.1:$HTTP_PORT/healthz"
API="http://127.0.0.1:$HTTP_PORT"

# The loadgen, idle phase long enough for the quiet window plus the HTTP timings.
IDLE_S=$(( QUIET_S + 45 ))
"$LOADGEN_BIN" --scenario conns100k --agents "$AGENTS" --idle-phase "${IDLE_S}s" \
  --connect-concurrency "$CONNECT_CONCURRENCY" --idle-timeout-ms "$IDLE_TIMEOUT_MS" \
  --relay "127.0.0.1:$RELAY_PORT" --ca "$dir/cert/cert.pem" --relay-pid "$RELAY_PID" \
  --no-e2e --quiet --json "$OUT/loadgen.json" >"$OUT/loadgen.txt" 2>"$OUT/loadgen.err" &
LG_PID=$!
PIDS+=("$LG_PID")
echo "$(machine_line)" | tee "$OUT/summary.txt"
echo "agents $AGENTS, heartbeat ${HEARTBEAT_MS} ms, idle timeout ${IDLE_TIMEOUT_MS} ms; uptime: $(uptime)" | tee -a "$OUT/summary.txt"

# Wait for the idle phase (every agent connected).
for _ in $(seq 1 1800); do
  grep -q "idle phase" "$OUT/loadgen.err" 2>/dev/null && break
  kill -0 "$LG_PID" 2>/dev/null || { echo "loadgen ended early:" >&2; tail "$OUT/loadgen.err" >&2; exit 1; }
  sleep 0.5
done
sleep 3   # the connect burst's last acks and routing writes settle

# Quiet window: relay and Redis CPU, Redis commands.
r0="$(cpu_ticks "$RELAY_PID")"; s0="$(cpu_ticks "$REDIS_PID")"
c0="$(redis-cli -p "$RPORT" info stats | awk -F: '/^total_commands_processed/{print $2+0}')"
t0="$(date +%s.%N)"
sleep "$QUIET_S"
r1="$(cpu_ticks "$RELAY_PID")"; s1="$(cpu_ticks "$REDIS_PID")"
c1="$(redis-cli -p "$RPORT" info stats | awk -F: '/^total_commands_processed/{print $2+0}')"
t1="$(date +%s.%N)"
rss="$(awk '/VmRSS/{print $2}' "/proc/$RELAY_PID/status")"
sessions="$(curl -s "$API/metrics" | awk '/^contrail_sessions_active /{print $2}')"
opened="$(curl -s "$API/metrics" | awk '/^contrail_sessions_opened_total /{print $2}')"
keys="$(redis-cli -p "$RPORT" dbsize)"
python3 - "$r0" "$r1" "$s0" "$s1" "$c0" "$c1" "$t0" "$t1" "$HZ" "$rss" "$sessions" "$keys" "$opened" <<'PY' | tee -a "$OUT/summary.txt"
import sys
r0, r1, s0, s1, c0, c1 = map(int, sys.argv[1:7])
t0, t1 = float(sys.argv[7]), float(sys.argv[8])
hz, rss, sessions, keys = int(sys.argv[9]), int(sys.argv[10]), sys.argv[11], sys.argv[12]
opened = sys.argv[13]
dt = t1 - t0
print(f"quiet window {dt:.1f} s, {sessions} sessions active at its end ({opened} opened since start), {keys} Redis keys")
print(f"  relay CPU   {(r1 - r0) / hz / dt * 100:.1f}% of one core (CPU-s per s, /proc)")
print(f"  relay RSS   {rss / 1024:.0f} MiB")
print(f"  redis CPU   {(s1 - s0) / hz / dt * 100:.1f}% of one core; {(c1 - c0) / dt:.0f} commands/s")
PY

# HTTP at full size (each twice: the second call of the fleet listing hits the drone cache).
timed() {
  local name="$1" url="$2"
  curl -s -o /dev/null -w "  $name %{http_code} %{size_download} B  %{time_total} s\n" "$url" \
    | tee -a "$OUT/summary.txt"
}
echo "HTTP (curl: code, bytes, total time)" | tee -a "$OUT/summary.txt"
last=$(( AGENTS - 100 ))
for round in 1 2; do
  timed "drones p1   " "$API/v1/drones?limit=100"
  timed "drones last " "$API/v1/drones?offset=$last&limit=100"
  timed "fleet p1    " "$API/v1/fleet/drones?limit=100"
  timed "fleet last  " "$API/v1/fleet/drones?offset=$last&limit=100"
  timed "fleet q     " "$API/v1/fleet/drones?q=99999&limit=100"
  timed "page state  " "$API/v1/page/state?limit=50"
  timed "relays      " "$API/v1/relays"
  timed "metrics     " "$API/metrics"
done

if [ "$PERF" = 1 ]; then
  perf record -g -F 499 -p "$RELAY_PID" -o "$OUT/perf.data" -- sleep 15 >/dev/null 2>&1 || true
  perf report -i "$OUT/perf.data" --no-children --sort symbol --stdio -g none 2>/dev/null \
    | grep -v '^#' | grep '%' | head -40 >"$OUT/perf-top.txt" || true
  echo "perf: $OUT/perf-top.txt" | tee -a "$OUT/summary.txt"
fi

wait "$LG_PID" || echo "(loadgen exited non-zero)" | tee -a "$OUT/summary.txt"
cat "$OUT/loadgen.txt" | tee -a "$OUT/summary.txt"
echo "wrote $OUT" >&2
