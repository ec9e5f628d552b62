#!/usr/bin/env bash
# The agent library against the STOCK quinn / quinn-proto / ractor releases from the Rust registry.
#
# `[patch.crates-io]` in the workspace does not reach the drones that embed `contrail-protocol`
# (feature `client`): they build it with the registry releases. This script builds the protocol
# crate in a throw-away workspace WITHOUT the patch section, runs its tests there, and then runs the
# stock-built example agent against the (patched) relay built by the main workspace: the frames it
# sends must all be acked. Called by scripts/test-all.sh; it prints what it checks.
set -euo pipefail
cd "$(dirname "$0")/.."
root="$(pwd)"
target="${CARGO_TARGET_DIR:-$root/target}/stock-quinn"
ws="$(mktemp -d)"
relay_pid=""
cleanup() {
  if [ -n "$relay_pid" ]; then kill "$relay_pid" 2>/dev/null || true; wait "$relay_pid" 2>/dev/null || true; fi
  rm -rf "$ws"
}
trap cleanup EXIT

# The workspace manifest minus its [patch.crates-io] section, with protocol as the only member.
python3 - "$root/Cargo.toml" "$ws/Cargo.toml" <<'EOF'
import re, sys
src = open(sys.argv[1]).read()
src = re.sub(r'(?ms)^\[patch\.crates-io\].*?(?=^\[|\Z)', '', src)
src = re.sub(r'(?m)^members = \[.*\]$', 'members = ["protocol"]', src)
src = re.sub(r'(?m)^exclude = \[.*\]$', '', src)
open(sys.argv[2], 'w').write(src)
EOF
grep -q 'patch.crates-io' "$ws/Cargo.toml" && { echo "stock-quinn: failed to strip [patch]"; exit 1; }
ln -s "$root/protocol" "$ws/protocol"
cp "$root/Cargo.lock" "$ws/Cargo.lock"

echo "== agent library with stock quinn: tests"
cargo test --quiet --manifest-path "$ws/Cargo.toml" --target-dir "$target" -p contrail-protocol
# Which quinn-proto was used: the registry's, not third_party/.
src="$(cargo metadata --format-version 1 --manifest-path "$ws/Cargo.toml" \
  | python3 -c 'import json,sys; m=json.load(sys.stdin); print([p["source"] for p in m["packages"] if p["name"]=="quinn-proto"][0])')"
case "$src" in registry*) echo "quinn-proto from: $src";; *) echo "stock-quinn: quinn-proto is not the registry's ($src)"; exit 1;; esac

echo "== stock-quinn example agent against the patched relay"
cargo build --quiet --manifest-path "$ws/Cargo.toml" --target-dir "$target" -p contrail-protocol --example agent
cargo build --quiet -p contrail-relay --bin contrail-relay
dev="$ws/dev"
port="$(python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
http="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
CONTRAIL_LISTEN="127.0.0.1:$port" CONTRAIL_HTTP_LISTEN="127.0.0.1:$http" CONTRAIL_DEV_CERT_DIR="$dev" \
  CONTRAIL_LOG=warn "${CARGO_TARGET_DIR:-$root/target}/debug/contrail-relay" >"$ws/relay.out" 2>"$ws/relay.err" &
relay_pid=$!
for _ in $(seq 1 200); do
  [ -s "$dev/cert.pem" ] && curl -fsS "http://127.0.0.1:$http/readyz" >/dev/null 2>&1 && break
  kill -0 "$relay_pid" 2>/dev/null || { cat "$ws/relay.err"; echo "stock-quinn: relay exited"; exit 1; }
  sleep 0.05
done
timeout 60 "$target/debug/examples/agent" "127.0.0.1:$port" "$dev/cert.pem" stock-drone 5000 2>"$ws/agent.err" \
  || { cat "$ws/agent.err"; echo "stock-quinn: the stock-built agent failed"; exit 1; }
grep -q "sent and acked 5000 frames" "$ws/agent.err" || { cat "$ws/agent.err"; exit 1; }
lines="$(grep -c '"agent_id":"stock-drone"' "$ws/relay.out" || true)"
[ "$lines" = 5000 ] || { echo "stock-quinn: relay wrote $lines of 5000 frames"; exit 1; }
echo "stock-quinn: 5000 frames from the stock-built agent acked and written once each"
