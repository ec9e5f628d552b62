# Shared helpers for run_scenarios.sh and compare.sh (sourced, not run).
# shellcheck shell=bash

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
RESULTS="${RESULTS:-$ROOT/benches/results}"
RUNS="${RUNS:-3}"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
RELAY_BIN="$TARGET_DIR/release/contrail-relay"
LOADGEN_BIN="$TARGET_DIR/release/contrail-loadgen"
WORK="$(mktemp -d /tmp/contrail-bench.XXXXXX)"
PIDS=()

cleanup() {
  local p
  for p in "${PIDS[@]}"; do
    kill "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
  rm -rf "$WORK"
}
trap cleanup EXIT

build_release() {
  (cd "$ROOT" && cargo build --release -p contrail-relay -p contrail-loadgen)
}

# A free port: ask the kernel for an ephemeral one (bound and released by python, never
# reused by us for anything else before the server binds it).
free_port() {
  python3 -c 'import socket,sys
kind = socket.SOCK_DGRAM if sys.argv[1] == "udp" else socket.SOCK_STREAM
s = socket.socket(socket.AF_INET, kind); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()' "${1:-tcp}"
}

# wait_for CMD... : poll (up to 15 s) until CMD succeeds.
wait_for() {
  local i
  for i in $(seq 1 300); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.05
  done
  echo "timed out waiting for: $*" >&2
  return 1
}

stop_pid() {
  local p="$1" keep=() q
  kill "$p" 2>/dev/null || true
  wait "$p" 2>/dev/null || true
  for q in "${PIDS[@]}"; do [ "$q" = "$p" ] || keep+=("$q"); done
  PIDS=("${keep[@]}")
}

machine_line() {
  local cpu
  cpu="$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
  echo "$(date -u +%Y-%m-%dT%H:%MZ) · nproc $(nproc) · ${cpu:-unknown CPU} · $(uname -r) · commit $(cd "$ROOT" && git rev-parse --short HEAD)"
}

# start_relay SINK_KIND -> sets RELAY_PID, RELAY_PORT, RELAY_CA
start_relay() {
  local sink="${1:-auto}" dir="$WORK/relay-$RANDOM"
  mkdir -p "$dir"
  RELAY_PORT="$(free_port udp)"
  local http_port
  http_port="$(free_port tcp)"
  {
    echo "listen = \"127.0.0.1:$RELAY_PORT\""
    echo "[tls]"
    echo "dev_cert_dir = \"$dir/cert\""
    echo "[http]"
    echo "listen = \"127.0.0.1:$http_port\""
    echo "[limits]"
    echo "max_sessions = 25000"
    echo "resume_max_agents = 200000"
    # Extra [limits] lines for A/B runs, e.g. RELAY_LIMITS=$'ack_delay_ms = 0'.
    [ -z "${RELAY_LIMITS:-}" ] || echo "$RELAY_LIMITS"
    echo "[[sinks]]"
    if [ "$sink" = live ]; then
      echo 'name = "live"'
      echo 'type = "live"'
      echo 'required = true'
    else
      echo 'name = "devnull"'
      echo 'type = "file"'
      echo 'required = true'
      echo 'path = "/dev/null"'
      echo 'format = "protobuf"'
    fi
  } >"$dir/relay.toml"
  CONTRAIL_LOG=warn ${RELAY_ENV:-} "$RELAY_BIN" --config "$dir/relay.toml" >"$dir/relay.log" 2>&1 &
  RELAY_PID=$!
  PIDS+=("$RELAY_PID")
  RELAY_CA="$dir/cert/cert.pem"
  if ! wait_for test -s "$RELAY_CA" || ! wait_for curl -sf "http://127.0.0.1:$http_port/healthz"; then
    echo "relay did not start ($sink sink):" >&2
    tail -5 "$dir/relay.log" >&2
    stop_pid "$RELAY_PID"
    return 1
  fi
}

# The sink the relay supports for e2e: live when the binary accepts it.
pick_sink() {
  if start_relay live 2>/dev/null; then
    stop_pid "$RELAY_PID"
    echo live
  else
    echo file
  fi
}
