#!/usr/bin/env bash
# Builds release binaries, starts a fresh relay (live sink when the relay has one, else a
# required file sink to /dev/null) for every run, runs each scenario RUNS times (default 3) and
# writes a Markdown table of medians to benches/results/scenarios-<date>.md (raw JSON beside it).
#
#   benches/scripts/run_scenarios.sh                 # max fleet conns cpu100 cpu10k
#   SCENARIOS="max fleet" RUNS=1 benches/scripts/run_scenarios.sh
#   SCENARIOS=soak SOAK_DURATION=30m benches/scripts/run_scenarios.sh
#   NO_BUILD=1 ...                                   # reuse target/release binaries
#   EXTRA_ARGS="--duration 5s" ...                   # extra loadgen flags for every run
set -euo pipefail
source "$(dirname "$0")/lib.sh"

SCENARIOS="${SCENARIOS:-max fleet conns cpu100 cpu10k}"
[ -n "${NO_BUILD:-}" ] || build_release
STAMP="$(date -u +%Y%m%d-%H%M)"
RAW="$RESULTS/raw/$STAMP"
mkdir -p "$RAW"
SINK="$(pick_sink)"
echo "relay sink for the runs: $SINK" >&2

for s in $SCENARIOS; do
  for i in $(seq 1 "$RUNS"); do
    start_relay "$SINK"
    extra=()
    [ "$SINK" = live ] || extra+=(--no-e2e)
    [ "$s" = soak ] && extra+=(--duration "${SOAK_DURATION:-10m}")
    cmd=("$LOADGEN_BIN" --scenario "$s" --relay "127.0.0.1:$RELAY_PORT" --ca "$RELAY_CA"
      --relay-pid "$RELAY_PID" --json "$RAW/$s-$i.json" --quiet "${extra[@]}" ${EXTRA_ARGS:-})
    echo "== $s run $i: ${cmd[*]}" >&2
    "${cmd[@]}" | tee "$RAW/$s-$i.txt" || echo "(run $s-$i exited non-zero)" >&2
    stop_pid "$RELAY_PID"
  done
done

OUT="$RESULTS/scenarios-$STAMP.md"
python3 "$(dirname "$0")/summarize.py" scenarios "$RAW" "$(machine_line)" "$SINK" >"$OUT"
echo "wrote $OUT" >&2
cat "$OUT"
