#!/usr/bin/env bash
# The whole Contrail test suite, from a fresh Debian machine: installs what the tests need
# (real redis-server, nats-server, mosquitto, postgresql, promtool, headless chromium), then format, lint,
# tests, deployment validation.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
# A C compiler: rustc links with it, and ring and aws-lc-sys (crypto) compile C with it.
command -v cc >/dev/null || need+=(gcc libc6-dev)
command -v redis-server >/dev/null || need+=(redis-server)
command -v nats-server >/dev/null || need+=(nats-server)
# A real PostgreSQL for the command downlink tests (testsupport runs initdb as `postgres`).
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
# loadgen/tests/mqtt.rs drives a real Mosquitto (Debian installs it in /usr/sbin).
command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
command -v promtool >/dev/null || need+=(prometheus)
command -v python3 >/dev/null || need+=(python3)
# scripts/demo-commands.sh (run by agent/tests/e2e/demo.rs) talks to the relays' API with curl.
command -v curl >/dev/null || need+=(curl)
# deploy/validate.sh makes a venv for PyYAML/python-hcl2: Debian ships venv support separately.
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || need+=(python3-venv)
command -v openssl >/dev/null || need+=(openssl)
# The fleet page's browser tests (relay/tests/it/sre_page.rs) drive Debian's headless Chromium.
command -v chromium >/dev/null || need+=(chromium)
command -v chromedriver >/dev/null || need+=(chromium-driver)
if [ "${#need[@]}" -gt 0 ]; then
  echo "== installing: ${need[*]}"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}"
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy (deny warnings)"
cargo clippy --workspace --all-targets -- -D warnings
echo "== cargo test"
# RUST_TEST_THREADS rather than `-- --test-threads`: criterion bench targets (run once in test
# mode by --all-targets) do not accept libtest flags.
RUST_TEST_THREADS="${CONTRAIL_TEST_THREADS:-2}" cargo test --workspace --all-targets
cargo test --workspace --doc
echo "== patched quinn-proto: its own unit tests (third_party/, ~1 min of CPU)"
cargo test --quiet --manifest-path third_party/quinn-proto/Cargo.toml --target-dir target/third_party --lib
echo "== agent library against the stock registry quinn (no [patch])"
bash scripts/check-stock-quinn.sh
if [ -f deploy/validate.sh ]; then
  echo "== deploy validation (promtool, compose/k8s/terraform agreement with the relay config)"
  bash deploy/validate.sh
fi
echo "== all green"
