#!/usr/bin/env bash
# What the test suite needs beyond Python packages: headless Chromium (Debian's package) and
# the official openai JS SDK (npm, pinned in tests/browser/package-lock.json), for the browser
# tests of tests/reliability/test_sites.py; Claude Code and Codex CLI (npm, pinned in
# tests/agents/package-lock.json, each with its native binary as an optional dependency), for
# tests/agents. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v chromium >/dev/null 2>&1; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
npm ci --prefix tests/browser --no-audit --no-fund --loglevel=error
# --include=optional: the CLIs' native binaries are optional dependencies; claude's postinstall
# links its binary in place of the package's stub (the tests run the platform package's own).
npm ci --prefix tests/agents --include=optional --no-audit --no-fund --loglevel=error
