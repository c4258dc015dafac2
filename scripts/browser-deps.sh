#!/usr/bin/env bash
# Installs what the browser tests (tests/test_console.py) need, when it is missing:
#   - a Chromium binary: Debian's `chromium` package (apt-get, as root), or $CHROMIUM if set;
#   - the Python `playwright` package in .venv/ (pinned in requirements-dev.txt).
# Playwright's own browser download (`playwright install`) is never used: the tests drive the
# system Chromium through executable_path. Exits non-zero, saying why, when it cannot install:
# 2 when there is no Chromium and no way to install one here (not root, or no apt-get: the
# browser is truly absent), 1 when an install was tried and failed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python

chromium=${CHROMIUM:-}
if [ -z "$chromium" ]; then
  chromium=$(command -v chromium || command -v chromium-browser || true)
fi
if [ -z "$chromium" ] || [ ! -x "$chromium" ]; then
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "browser-deps: no chromium found and cannot install it (needs root and apt-get);" \
         "install Chromium or set CHROMIUM=/path/to/chromium" >&2
    exit 2
  fi
  echo "chromium missing: installing Debian's chromium package"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null || true
  chromium=$(command -v chromium || true)
  if [ -z "$chromium" ]; then
    echo "browser-deps: installing Debian's chromium package failed" >&2
    exit 1
  fi
fi

if [ ! -x "$PY" ]; then
  echo "browser-deps: $PY missing; run scripts/install.sh first" >&2
  exit 1
fi
want=$(sed -n 's/^playwright==\([^ ]*\).*/\1/p' requirements-dev.txt)
have=$("$PY" -c "from importlib.metadata import version; print(version('playwright'))" 2>/dev/null || true)
if [ -z "$have" ] || { [ -n "$want" ] && [ "$have" != "$want" ]; }; then
  echo "installing playwright${want:+==$want} into .venv/"
  "$PY" -m pip install --quiet --disable-pip-version-check "playwright${want:+==$want}" || {
    echo "browser-deps: pip could not install playwright" >&2; exit 1; }
fi
"$PY" -c "import playwright.sync_api" || { echo "browser-deps: playwright does not import" >&2; exit 1; }
echo "browser tests ready: $chromium ($("$chromium" --version 2>/dev/null | tail -1)), playwright $("$PY" -c "from importlib.metadata import version; print(version('playwright'))")"
