#!/usr/bin/env bash
# Runs the whole test suite (what .ci/run runs). Installs into .venv/ first if it is missing or
# stale, and makes sure a redis-server binary exists (the tests start their own on a free port).
# Real-face tests run when FACE_DATA points at the shared data folder (e.g. ../shared/data).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh
if ! command -v redis-server >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "redis-server missing: installing Debian's redis-server package"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
  else
    echo "redis-server is needed by the tests: install it (Debian/Ubuntu: apt-get install redis-server)" >&2
    exit 1
  fi
fi
# Test-only Python packages (requirements-dev.txt: schemathesis, playwright's Python side); a no-op
# when the pinned versions are there already.
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
# Under CI=true a browser setup that fails is a failed run (tests/resources.py likewise fails
# skipped browser and face-data tests in CI); only a truly absent browser (exit 2: no Chromium and
# no way to install it) lets the console tests be skipped.
if [ -f scripts/browser-deps.sh ]; then
  status=0
  scripts/browser-deps.sh || status=$?
  if [ "$status" != 0 ]; then
    case "${CI:-}" in
      1|true|TRUE|True|yes)
        if [ "$status" != 2 ]; then
          echo "CI: the browser setup failed (exit $status); the console tests cannot be skipped in CI" >&2
          exit "$status"
        fi ;;
    esac
    echo "browser tests will be skipped: scripts/browser-deps.sh exited $status" >&2
  fi
fi
exec .venv/bin/python -m pytest "$@"
