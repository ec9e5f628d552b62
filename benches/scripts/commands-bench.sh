#!/usr/bin/env bash
# Issue 21's downlink benchmark: 10,000 connected agents take commands, 100 commands/s are
# submitted through the relay's HTTP API to random drones, while a telemetry fleet streams
# beside them (a second loadgen process, `fleet` scenario) through the same relay. Alternating
# A/B runs on a fresh relay each: A = the same agents and telemetry with no commands
# (`--commands-rate 0`), B = with commands. Reports, per run: telemetry ack and e2e latency
# (p50/p99), relay CPU; for B the command latencies (submit → agent accepted, submit → result
# stored, from the queue's own timestamps) and the relay CPU per command (B's relay CPU minus
# A's, over the same window length, divided by the commands).
#
#   benches/scripts/commands-bench.sh                       # memory store, 2 runs of A and B
#   STORE=postgres benches/scripts/commands-bench.sh        # PostgreSQL (initdb in a temp dir)
#   AGENTS=10000 RATE=100 TEL_AGENTS=1000 TEL_RATE=20 RUNS=2 NO_BUILD=1 ...
set -euo pipefail
source "$(dirname "$0")/lib.sh"

AGENTS="${AGENTS:-10000}"
RATE="${RATE:-100}"
TEL_AGENTS="${TEL_AGENTS:-1000}"   # `fleet` is 2,000 × 20 Hz; 1,000 keeps this 2-core box unsaturated
TEL_RATE="${TEL_RATE:-20}"
TEL_DURATION="${TEL_DURATION:-20s}"
STORE="${STORE:-memory}"
OUT="${OUT:-/tmp/commands-bench-$(date -u +%Y%m%d-%H%M%S)-$STORE}"
TOKEN="bench-operator-token"
mkdir -p "$OUT"
[ -n "${NO_BUILD:-}" ] || build_release
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

DB_URL=""
if [ "$STORE" = postgres ]; then
  bin="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)"
  [ -n "$bin" ] || bin="$(dirname "$(command -v initdb)")"
  pg="$WORK/pg"
  mkdir -p "$pg"
  as_pg=()
  # initdb and postgres refuse root: run them as the postgres user (who must reach $WORK).
  if [ "$(id -u)" = 0 ]; then chmod 755 "$WORK"; chown postgres "$pg"; as_pg=(runuser -u postgres --); fi
  "${as_pg[@]}" "$bin/initdb" -D "$pg/data" -A trust -U postgres --no-sync -E UTF8 >"$OUT/initdb.log"
  PGPORT="$(free_port tcp)"
  "${as_pg[@]}" "$bin/postgres" -D "$pg/data" -p "$PGPORT" -k "$pg" \
    -c listen_addresses=127.0.0.1 -c max_connections=200 >"$OUT/postgres.log" 2>&1 &
  PIDS+=("$!")
  wait_for "$bin/pg_isready" -h 127.0.0.1 -p "$PGPORT"
  DB_URL="postgres://postgres@127.0.0.1:$PGPORT/postgres"
fi

# start_cmd_relay -> RELAY_PID RELAY_PORT HTTP_PORT RELAY_CA
start_cmd_relay() {
  local dir="$WORK/relay-$RANDOM"
  mkdir -p "$dir"
  RELAY_PORT="$(free_port udp)"
  HTTP_PORT="$(free_port tcp)"
  {
    echo "listen = \"127.0.0.1:$RELAY_PORT\""
    echo "[tls]"
    echo "dev_cert_dir = \"$dir/cert\""
    echo "[http]"
    echo "listen = \"127.0.0.1:$HTTP_PORT\""
    echo "[limits]"
    echo "max_sessions = $(( AGENTS + TEL_AGENTS + 1000 ))"
    echo "resume_max_agents = 200000"
    echo "[commands]"
    [ -z "$DB_URL" ] || echo "database_url = \"$DB_URL\""
    echo "[[commands.tokens]]"
    echo 'name = "bench"'
    echo 'role = "operator"'
    echo "token = \"$TOKEN\""
    echo "[[sinks]]"
    echo 'name = "live"'
    echo 'type = "live"'
    echo 'required = true'
  } >"$dir/relay.toml"
  CONTRAIL_LOG=warn "$RELAY_BIN" --config "$dir/relay.toml" >"$dir/relay.log" 2>&1 &
  RELAY_PID=$!
  PIDS+=("$RELAY_PID")
  RELAY_CA="$dir/cert/cert.pem"
  wait_for test -s "$RELAY_CA"
  wait_for curl -sf "http://127.0.0.1:$HTTP_PORT/healthz"
}

one_run() {
  local mode="$1" i="$2" rate=0
  [ "$mode" = B ] && rate="$RATE"
  start_cmd_relay
  "$LOADGEN_BIN" --scenario commands --agents "$AGENTS" --commands-rate "$rate" \
    --duration 32s --relay "127.0.0.1:$RELAY_PORT" --ca "$RELAY_CA" \
    --commands-api "http://127.0.0.1:$HTTP_PORT" --commands-token "$TOKEN" \
    --relay-pid "$RELAY_PID" --json "$OUT/cmd-$mode-$i.json" \
    >"$OUT/cmd-$mode-$i.txt" 2>"$OUT/cmd-$mode-$i.err" &
  local cmd_pid=$!
  PIDS+=("$cmd_pid")
  for _ in $(seq 1 1200); do
    grep -q "agents connected" "$OUT/cmd-$mode-$i.err" 2>/dev/null && break
    kill -0 "$cmd_pid" 2>/dev/null || break
    sleep 0.25
  done
  echo "== $mode run $i: $(grep "agents connected" "$OUT/cmd-$mode-$i.err" || echo 'agents did not connect'); uptime: $(uptime)" >&2
  "$LOADGEN_BIN" --scenario fleet --agents "$TEL_AGENTS" --rate "$TEL_RATE" --warmup 3s \
    --duration "$TEL_DURATION" --relay "127.0.0.1:$RELAY_PORT" --ca "$RELAY_CA" \
    --relay-pid "$RELAY_PID" --quiet --json "$OUT/tel-$mode-$i.json" >"$OUT/tel-$mode-$i.txt" \
    || echo "(telemetry run $mode-$i exited non-zero)" >&2
  wait "$cmd_pid" || echo "(commands run $mode-$i exited non-zero)" >&2
  stop_pid "$RELAY_PID"
}

echo "$(machine_line)" | tee "$OUT/summary.txt"
echo "store $STORE; $AGENTS command agents, $RATE commands/s; telemetry $TEL_AGENTS agents x $TEL_RATE Hz" | tee -a "$OUT/summary.txt"
for i in $(seq 1 "$RUNS"); do
  one_run A "$i"
  one_run B "$i"
done

python3 - "$OUT" "$RATE" <<'PY' | tee -a "$OUT/summary.txt"
import json, pathlib, sys
out, rate = pathlib.Path(sys.argv[1]), float(sys.argv[2])
def load(p):
    try:
        return json.loads(p.read_text())
    except Exception:
        return None
rows, a_cores = [], []
print("| run | telemetry ack p50 / p99 ms | e2e p50 / p99 ms | lost | relay cores (tel window) | cmd accepted p50 / p99 ms | result p50 / p99 ms | submitted / errors | relay cores (cmd window) |")
print("|---|---|---|---|---|---|---|---|---|")
for tel in sorted(out.glob("tel-*.json")):
    tag = tel.stem[4:]
    t, c = load(tel), load(out / f"cmd-{tag}.json")
    if t is None:
        print(f"| {tag} | (no telemetry report) |"); continue
    ack, e2e = t.get("ack_latency") or {}, t.get("e2e_latency") or {}
    f = lambda p, k: f"{p.get(k, float('nan')) / 1000:.2f}"
    cores = (c or {}).get("relay_cpu_cores")
    if tag.startswith("A") and cores is not None:
        a_cores.append(cores)
    acc, res = (c or {}).get("submit_to_accepted", {}), (c or {}).get("submit_to_result", {})
    print(f"| {tag} | {f(ack,'p50_us')} / {f(ack,'p99_us')} | {f(e2e,'p50_us')} / {f(e2e,'p99_us')} | "
          f"{t['totals'].get('lost')} | {t['relay']['cpu_cores']:.2f} | "
          f"{acc.get('p50_ms','-')} / {acc.get('p99_ms','-')} | {res.get('p50_ms','-')} / {res.get('p99_ms','-')} | "
          f"{(c or {}).get('submitted','-')} / {(c or {}).get('submit_errors','-')} | "
          f"{'-' if cores is None else f'{cores:.3f}'} |")
if a_cores:
    base = sorted(a_cores)[len(a_cores) // 2]
    for cmd in sorted(out.glob("cmd-B-*.json")):
        c = load(cmd)
        if c and c.get("relay_cpu_cores") is not None and c.get("submitted"):
            per = (c["relay_cpu_cores"] - base) * c["duration_s"] / c["submitted"] * 1e6
            print(f"{cmd.stem}: relay CPU per command (B minus median A) {per:.0f} µs")
PY
echo "wrote $OUT" >&2
