#!/usr/bin/env bash
# The loadgen's MQTT client code, hand-written MQTT 3.1.1 (`--mqtt-client raw`, the default) vs
# rumqttc (`--mqtt-client rumqttc`), against a Mosquitto started here on a free loopback port
# (never the machine's own 1883). Alternating runs of the `max` workload (64 publishers, one
# subscriber, 256-byte payloads, 1,024-message window), RUNS each (default 3), QoS 0 and 1.
# Prints per run: delivered/s, loadgen CPU (cores) and loadgen CPU µs per message (one publish
# plus one delivery, both in the loadgen), Mosquitto CPU; then medians. Cited by the module doc of
# loadgen/src/brokers.rs.
#
#   benches/scripts/mqtt-clients.sh
#   RUNS=1 QOS="0" EXTRA_ARGS="--duration 5s" NO_BUILD=1 benches/scripts/mqtt-clients.sh
set -euo pipefail
source "$(dirname "$0")/lib.sh"

QOS="${QOS:-0 1}"
CLIENTS="${CLIENTS:-raw rumqttc}"
[ -n "${NO_BUILD:-}" ] || (cd "$ROOT" && cargo build --release -p contrail-loadgen)
command -v mosquitto >/dev/null || PATH="$PATH:/usr/sbin"
echo "# $(machine_line)"

for q in $QOS; do
  for i in $(seq 1 "$RUNS"); do
    for c in $CLIENTS; do
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
      pid=$!
      PIDS+=("$pid")
      wait_for bash -c "echo > /dev/tcp/127.0.0.1/$port"
      json="$WORK/qos$q-$c-$i.json"
      "$LOADGEN_BIN" --scenario max --target mqtt --qos "$q" --mqtt-client "$c" \
        --relay "127.0.0.1:$port" --relay-pid "$pid" --json "$json" --quiet ${EXTRA_ARGS:-} \
        >"$WORK/qos$q-$c-$i.txt" 2>&1 || echo "(run exited non-zero: qos $q $c $i)" >&2
      stop_pid "$pid"
      python3 - "$json" "$q" "$c" "$i" <<'PY' | tee -a "$WORK/rows"
import json, sys
r = json.load(open(sys.argv[1]))
t = r["throughput"]
d = t.get("delivered_per_s") or 0.0
lg = r["loadgen_cpu_cores"]
us = lg * 1e6 / d if d else float("nan")
br = (r.get("relay") or {}).get("cpu_cores", float("nan"))
lost = r["totals"].get("lost")
print(f"qos{sys.argv[2]} {sys.argv[3]:8s} run {sys.argv[4]}: delivered {d:10.0f}/s  sent {t['sent_per_s']:10.0f}/s  "
      f"loadgen {lg:.2f} cores = {us:5.2f} us/msg  mosquitto {br:.2f} cores  lost {lost}")
PY
    done
  done
done

echo "# medians"
python3 - "$WORK/rows" <<'PY'
import re, sys, statistics
rows = {}
for line in open(sys.argv[1]):
    m = re.match(r"(qos\d) (\S+)\s+run \d+: delivered\s+(\d+)/s.*= *([\d.na]+) us/msg\s+mosquitto ([\d.na]+) cores", line)
    if m:
        rows.setdefault((m[1], m[2]), []).append((float(m[3]), float(m[4]), float(m[5])))
for (q, c), v in sorted(rows.items()):
    med = lambda k: statistics.median(x[k] for x in v)
    print(f"{q} {c:8s}: delivered {med(0):10.0f}/s  loadgen {med(1):5.2f} us/msg  mosquitto {med(2):.2f} cores  ({len(v)} runs)")
PY
