#!/usr/bin/env bash
# Side-by-side: the same `max` and `fleet` workloads (same publishers, payload, rate, duration,
# credit window, harness) against Contrail, Mosquitto (MQTT QoS 1 and QoS 0) and NATS (plain and
# TLS), each started here on free loopback ports (never the machine's own 1883/4222), RUNS times
# each (default 3); writes benches/results/compare-<date>.md with medians and ratios vs NATS with TLS.
#
#   benches/scripts/compare.sh
#   WORKLOADS=fleet TARGETS="contrail nats" RUNS=1 benches/scripts/compare.sh
#   NO_BUILD=1 EXTRA_ARGS="--duration 5s" benches/scripts/compare.sh
#   MQTT_CLIENT=rumqttc TARGETS="mqtt-qos0 mqtt-qos1" benches/scripts/compare.sh   # via rumqttc
#   WORKLOADS="fleet fleet@1000" TARGETS="contrail nats-tls" benches/scripts/compare.sh
#
# A workload is a scenario name, or SCENARIO@AGENTS for the scenario with that many agents
# (`fleet@1000`: 1,000 agents x 20 Hz, half the fleet rate). The loadgen's subscriber runs on a
# thread of its own and latency counts from each message's intended send time (issue 23; the
# report splits it, see docs/performance.md "Round 11").
#
# Pinning (issue 23): every server under test runs on SERVER_CPUS (all its threads, `taskset -a`)
# and the load generator on LOADGEN_CPUS, so each server gets the same core and the simulated
# clients can't steal it. Defaults: server on CPU 0, loadgen on the others (needs >= 2 CPUs and
# taskset); PIN=0 turns it off. Each run also records the kernel's UDP `RcvbufErrors`
# (/proc/net/snmp) delta: every overflow is a lost datagram (a QUIC loss for Contrail).
set -euo pipefail
source "$(dirname "$0")/lib.sh"

WORKLOADS="${WORKLOADS:-max fleet}"
TARGETS="${TARGETS:-contrail mqtt-qos1 mqtt-qos0 nats nats-tls}"
[ -n "${NO_BUILD:-}" ] || build_release
command -v mosquitto >/dev/null || PATH="$PATH:/usr/sbin"
STAMP="$(date -u +%Y%m%d-%H%M)"
RAW="$RESULTS/raw/compare-$STAMP"
mkdir -p "$RAW"
SINK="$(pick_sink)"

NCPU="$(nproc)"
SERVER_CPUS="${SERVER_CPUS:-0}"
LOADGEN_CPUS="${LOADGEN_CPUS:-1-$((NCPU - 1))}"
if [ "${PIN:-1}" = 1 ] && [ "$NCPU" -ge 2 ] && command -v taskset >/dev/null; then
  PINNED=1
  echo "pinning: servers on CPU $SERVER_CPUS, loadgen on CPU $LOADGEN_CPUS" >&2
else
  PINNED=0
  echo "pinning: off (PIN=${PIN:-1}, nproc $NCPU)" >&2
fi

# The kernel's UDP RcvbufErrors counter (all sockets; the runs are the only heavy UDP users).
rcvbuf_errors() {
  awk '/^Udp:/ { if (!h) { for (i = 1; i <= NF; i++) if ($i == "RcvbufErrors") c = i; h = 1 } else print $c }' /proc/net/snmp
}

# A TLS certificate for nats-server (localhost), made once.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -subj /CN=localhost -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
  -addext "basicConstraints=critical,CA:FALSE" \
  -keyout "$WORK/nats.key" -out "$WORK/nats.crt" >/dev/null 2>&1

start_target() { # sets PID, ARGS
  local t="$1" port
  case "$t" in
    contrail)
      start_relay "$SINK"
      PID="$RELAY_PID"
      ARGS=(--target contrail --relay "127.0.0.1:$RELAY_PORT" --ca "$RELAY_CA")
      [ "$SINK" = live ] || ARGS+=(--no-e2e)
      ;;
    mqtt-qos0 | mqtt-qos1)
      port="$(free_port tcp)"
      cat >"$WORK/mosquitto.conf" <<CONF
listener $port 127.0.0.1
allow_anonymous true
persistence false
max_inflight_messages 1024
max_queued_messages 1000000
max_connections -1
CONF
      mosquitto -c "$WORK/mosquitto.conf" >"$WORK/mosquitto.log" 2>&1 &
      PID=$!
      PIDS+=("$PID")
      wait_for bash -c "echo > /dev/tcp/127.0.0.1/$port"
      ARGS=(--target mqtt --qos "${t#mqtt-qos}" --relay "127.0.0.1:$port" --mqtt-client "${MQTT_CLIENT:-raw}")
      ;;
    nats | nats-tls)
      port="$(free_port tcp)"
      if [ "$t" = nats-tls ]; then
        nats-server -a 127.0.0.1 -p "$port" --tls --tlscert "$WORK/nats.crt" --tlskey "$WORK/nats.key" \
          >"$WORK/nats.log" 2>&1 &
      else
        nats-server -a 127.0.0.1 -p "$port" >"$WORK/nats.log" 2>&1 &
      fi
      PID=$!
      PIDS+=("$PID")
      wait_for bash -c "echo > /dev/tcp/127.0.0.1/$port"
      ARGS=(--target nats --relay "127.0.0.1:$port")
      if [ "$t" = nats-tls ]; then ARGS+=(--tls --ca "$WORK/nats.crt"); fi
      ;;
  esac
}

for w in $WORKLOADS; do
  scenario="${w%@*}"
  wargs=()
  [ "$scenario" = "$w" ] || wargs=(--agents "${w#*@}")
  for t in $TARGETS; do
    for i in $(seq 1 "$RUNS"); do
      start_target "$t"
      pin=()
      if [ "$PINNED" = 1 ]; then
        taskset -a -p -c "$SERVER_CPUS" "$PID" >/dev/null
        pin=(taskset -c "$LOADGEN_CPUS")
      fi
      cut -d' ' -f1 /proc/loadavg >"$RAW/$w-$t-$i.load" # others' load: a busy box is no comparison
      before="$(rcvbuf_errors)"
      cmd=("${pin[@]}" "$LOADGEN_BIN" --scenario "$scenario" "${wargs[@]}" "${ARGS[@]}" --relay-pid "$PID" --json "$RAW/$w-$t-$i.json" --quiet ${EXTRA_ARGS:-})
      echo "== $w $t run $i: ${cmd[*]}" >&2
      "${cmd[@]}" | tee "$RAW/$w-$t-$i.txt" || echo "(run exited non-zero)" >&2
      after="$(rcvbuf_errors)"
      echo "$((after - before))" >"$RAW/$w-$t-$i.rcvbuf"
      echo "   UDP RcvbufErrors this run: $((after - before))" >&2
      stop_pid "$PID"
    done
  done
done

OUT="$RESULTS/compare-$STAMP.md"
python3 "$(dirname "$0")/summarize.py" compare "$RAW" "$(machine_line)" "$SINK" >"$OUT"
{
  echo
  echo "Pinned: $([ "$PINNED" = 1 ] && echo "servers on CPU $SERVER_CPUS, loadgen on CPU $LOADGEN_CPUS" || echo no)."
  echo
  echo "| run | UDP RcvbufErrors (whole run) | load average at its start |"
  echo "|---|---|---|"
  for f in "$RAW"/*.rcvbuf; do
    [ -e "$f" ] || continue
    load="${f%.rcvbuf}.load"
    echo "| $(basename "$f" .rcvbuf) | $(cat "$f") | $(cat "$load" 2>/dev/null || echo n/a) |"
  done
} >>"$OUT"
echo "wrote $OUT" >&2
cat "$OUT"
