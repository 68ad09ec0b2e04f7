#!/usr/bin/env bash
# What the test suite needs beyond Python packages: redis-server (Debian's package; the tests
# start their own on free ports, for the shared state backend), headless Chromium (Debian's package) and
# the official openai JS SDK (npm, pinned in tests/browser/package-lock.json), for the browser
# tests of tests/reliability/test_sites.py; Claude Code and Codex CLI (npm, pinned in
# tests/agents/package-lock.json, each with its native binary as an optional dependency), for
# tests/agents. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=""
command -v chromium >/dev/null 2>&1 || missing="$missing chromium"
command -v redis-server >/dev/null 2>&1 || missing="$missing redis-server"
if [ -n "$missing" ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  # shellcheck disable=SC2086
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
fi
npm ci --prefix tests/browser --no-audit --no-fund --loglevel=error
# --include=optional: the CLIs' native binaries are optional dependencies; claude's postinstall
# links its binary in place of the package's stub (the tests run the platform package's own).
npm ci --prefix tests/agents --include=optional --no-audit --no-fund --loglevel=error
