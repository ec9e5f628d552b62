#!/usr/bin/env bash
# Regenerates docs/img/fleet-page.png (the README's picture of the fleet page) with headless
# Chromium: an in-process relay, a required sink and 12 streaming agents. Run it after changing
# control/assets/ or the page's JSON.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium chromium-driver
fi
mkdir -p docs/img
cargo run -q -p contrail-relay --example fleet_page_screenshot -- docs/img/fleet-page.png
