#!/usr/bin/env bash
# The command downlink on one machine (issue 21's "done when"): a temporary PostgreSQL, two
# relays (A and B) sharing it, a simulated vehicle and contrail-agent connected to relay B; an
# operator submits `echo hello` through relay A's API and reads `hello` back through relay A.
#
#   bash scripts/demo-commands.sh            # builds what it needs (debug), prints "hello"
#   CONTRAIL_BIN_DIR=target/release bash scripts/demo-commands.sh   # use built binaries
#   CONTRAIL_SIM_VEHICLE=path/to/sim_vehicle ...   # the simulated vehicle built elsewhere (the
#                                                  # test suite's: `cargo test` names it sim_vehicle-<hash>)
#
# Needs: PostgreSQL's initdb/postgres (Debian: apt-get install postgresql; as root they run as
# the `postgres` user), curl, python3. Everything lives in a temporary directory and is stopped
# and removed on exit. Set CONTRAIL_DEMO_KEEP=1 to keep it running until Ctrl-C. Details:
# docs/downlink.md ("Try it").
set -euo pipefail
cd "$(dirname "$0")/.."

bin="${CONTRAIL_BIN_DIR:-}"
if [ -z "$bin" ]; then
  cargo build -q -p contrail-relay -p contrail-agent --bins --example sim_vehicle
  bin=target/debug
fi
sim_vehicle="${CONTRAIL_SIM_VEHICLE:-$bin/examples/sim_vehicle}"
for f in "$bin/contrail-relay" "$bin/contrail-agent" "$sim_vehicle"; do
  [ -x "$f" ] || { echo "demo: $f is missing (cargo build -p contrail-relay -p contrail-agent --bins --example sim_vehicle)" >&2; exit 2; }
done
pgbin="$(dirname "$(ls /usr/lib/postgresql/*/bin/initdb 2>/dev/null | sort -V | tail -1)")"
[ -x "$pgbin/initdb" ] || pgbin="$(dirname "$(command -v initdb)")"

work="$(mktemp -d /tmp/contrail-demo.XXXXXX)"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log() { echo "demo: $*" >&2; }
# Free loopback ports (TCP, UDP) for the servers.
port() { python3 -c "import socket; s=socket.socket(socket.AF_INET, socket.$1); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])"; }
# Polls a command until it succeeds (at most $1 seconds).
wait_for() {
  local secs=$1; shift
  for _ in $(seq 1 $((secs * 10))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
  log "timed out waiting for: $*"; return 1
}

# 1. PostgreSQL, in $work/pg (initdb refuses root: run it as `postgres`).
as_pg=()
if [ "$(id -u)" = 0 ]; then
  as_pg=(setpriv --reuid=postgres --regid=postgres --init-groups)
  chown postgres: "$work"
fi
"${as_pg[@]}" "$pgbin/initdb" -D "$work/pg" -A trust -U postgres --no-sync -E UTF8 >/dev/null
pg_port="$(port SOCK_STREAM)"
"${as_pg[@]}" "$pgbin/postgres" -D "$work/pg" -p "$pg_port" -k "$work" \
  -c listen_addresses=127.0.0.1 -c fsync=off >"$work/postgres.log" 2>&1 &
pids+=($!)
wait_for 30 "$pgbin/pg_isready" -h 127.0.0.1 -p "$pg_port"
log "PostgreSQL on 127.0.0.1:$pg_port"

# 2. Two relays sharing the queue; operator and viewer tokens for the API.
cat >"$work/relay.toml" <<EOF
[[sinks]]
name = "file"
type = "file"
required = true
format = "ndjson"
path = "$work/telemetry.ndjson"

[commands]
database_url = "postgres://postgres@127.0.0.1:$pg_port/postgres"
[[commands.tokens]]
name = "alice"
role = "operator"
token = "op-secret-123"
[[commands.tokens]]
name = "dashboard"
role = "viewer"
token = "view-secret-123"
EOF
start_relay() { # id quic_port http_port
  "$bin/contrail-relay" --config "$work/relay.toml" --relay-id "$1" --listen "127.0.0.1:$2" \
    --http-listen "127.0.0.1:$3" --dev-cert-dir "$work/$1-certs" >"$work/$1.log" 2>&1 &
  pids+=($!)
  wait_for 30 curl -sf "http://127.0.0.1:$3/healthz"
  log "relay $1: QUIC 127.0.0.1:$2, API http://127.0.0.1:$3"
}
a_quic="$(port SOCK_DGRAM)"; a_http="$(port SOCK_STREAM)"
b_quic="$(port SOCK_DGRAM)"; b_http="$(port SOCK_STREAM)"
start_relay relay-a "$a_quic" "$a_http"
start_relay relay-b "$b_quic" "$b_http"

# 3. contrail-agent on relay B, taking commands (only `echo` may run), and a simulated vehicle.
mav_port="$(port SOCK_DGRAM)"
"$bin/contrail-agent" --agent-id drone-1 --relay "127.0.0.1:$b_quic" \
  --ca-file "$work/relay-b-certs/cert.pem" --spool-dir "$work/agent" \
  --source "udpin:127.0.0.1:$mav_port" --http-listen "" \
  --commands --allow-exec echo >"$work/agent.log" 2>&1 &
pids+=($!)
"$sim_vehicle" "127.0.0.1:$mav_port" 600 >"$work/vehicle.log" 2>&1 &
pids+=($!)
wait_for 30 curl -sf "http://127.0.0.1:$b_http/v1/drones/drone-1"
log "drone-1 (contrail-agent + simulated vehicle) connected to relay-b"

# 4. The operator: submit through relay A, read the result back through relay A.
submitted="$(curl -sf -XPOST "http://127.0.0.1:$a_http/v1/drones/drone-1/commands" \
  -H 'Authorization: Bearer op-secret-123' -H 'Idempotency-Key: demo-1' \
  -H 'Content-Type: application/json' \
  -d '{"type":"run_command","payload":{"argv":["echo","hello"]}}')"
id="$(python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])' <<<"$submitted")"
log "submitted command $id through relay-a"
done_json() {
  curl -sf "http://127.0.0.1:$a_http/v1/commands/$id" -H 'Authorization: Bearer view-secret-123' \
    | python3 -c 'import json,sys; v=json.load(sys.stdin); sys.exit(0 if v["status"]=="succeeded" and v.get("output",{}).get("stdout") else 1)'
}
wait_for 30 done_json
result="$(curl -sf "http://127.0.0.1:$a_http/v1/commands/$id" -H 'Authorization: Bearer view-secret-123')"
python3 -c 'import json,sys; v=json.load(sys.stdin); print("demo: status %s, exit %s, delivered by %s" % (v["status"], v["exit"]["code"], v["delivered_by_relay"]), file=sys.stderr)' <<<"$result"
python3 -c 'import json,sys; sys.stdout.write(json.load(sys.stdin)["output"]["stdout"])' <<<"$result"

if [ -n "${CONTRAIL_DEMO_KEEP:-}" ]; then
  log "running; try: curl -s -XPOST http://127.0.0.1:$a_http/v1/drones/drone-1/commands -H 'Authorization: Bearer op-secret-123' -d '{\"type\":\"mavlink_command_long\",\"payload\":{\"target_system\":1,\"command\":400,\"params\":[1]}}'"
  log "Ctrl-C stops everything"
  wait
fi
