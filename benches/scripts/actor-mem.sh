#!/usr/bin/env bash
# Heap per idle session for the session actor's shapes (benches/actor-mem/src/main.rs), built
# twice: against the STOCK ractor 0.16.5 from the registry, and against third_party/ractor (the
# patched copy the relay uses), through cargo's `--config patch...`. Cited by
# third_party/README.md ("Does the session actor still need ractor?").
#
#   benches/scripts/actor-mem.sh [N]      (N sessions, default 10000)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
N="${1:-10000}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}/actor-mem"
manifest="$ROOT/benches/actor-mem/Cargo.toml"

echo "== stock ractor 0.16.5 (registry)"
cargo run --quiet --release --manifest-path "$manifest" -- "$N"
echo "== patched ractor (third_party/ractor)"
# In a copy, so the patched build does not rewrite the committed Cargo.lock.
copy="$(mktemp -d)"
trap 'rm -rf "$copy"' EXIT
cp -r "$ROOT/benches/actor-mem/Cargo.toml" "$ROOT/benches/actor-mem/Cargo.lock" "$ROOT/benches/actor-mem/src" "$copy/"
cargo run --quiet --release --manifest-path "$copy/Cargo.toml" \
  --config "patch.crates-io.ractor.path=\"$ROOT/third_party/ractor\"" -- "$N"
