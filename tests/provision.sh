#!/usr/bin/env bash
# What the test suite needs beyond Python packages: headless Chromium (Debian's package) and
# the official openai JS SDK (npm, pinned in tests/browser/package-lock.json), for the browser
# tests of tests/reliability/test_sites.py. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v chromium >/dev/null 2>&1; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
npm ci --prefix tests/browser --no-audit --no-fund --loglevel=error
