#!/usr/bin/env bash
# Installs what tests/pages.rs needs to drive the pages in a real browser, once, into a
# cache, and prints the two paths it sets up, as shell assignments:
#   MALLQUEST_BROWSER_PYTHON=<venv python with Playwright>
#   MALLQUEST_AXE_JS=<axe-core's axe.min.js>
# so that `eval "$(scripts/install-browser.sh)"` exports nothing by itself but
# `export MALLQUEST_BROWSER_PYTHON MALLQUEST_AXE_JS` after it does.
#
# - Chromium: Debian's `chromium` package (apt) when /usr/bin/chromium is missing. Playwright
#   drives it through `executable_path`; `playwright install` (a browser download) is never run.
# - Playwright for Python: a venv under the cache, from PyPI.
# - axe-core: `npm pack` of axe-core 4 from npm, unpacked under the cache.
# Each step is skipped when its result is already in the cache; a self-check at the end
# launches Chromium headless through Playwright and loads axe into a blank page, so a
# broken install fails here, loudly, not in a test.
set -euo pipefail

CACHE="${MALLQUEST_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/mallquest}"
VENV="$CACHE/browser-venv"
AXE_DIR="$CACHE/axe-core"
AXE_JS="$AXE_DIR/package/axe.min.js"
CHROMIUM="${MALLQUEST_CHROMIUM:-/usr/bin/chromium}"
say() { echo "install-browser: $*" >&2; }

if [ ! -x "$CHROMIUM" ]; then
  say "installing chromium (apt)..."
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends chromium >&2
fi

if [ ! -f "$VENV/.verified" ]; then
  say "creating $VENV with Playwright (PyPI)..."
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check 'playwright>=1.40,<2' >&2
fi

if [ ! -f "$AXE_JS" ]; then
  say "fetching axe-core 4 (npm pack) into $AXE_DIR ..."
  rm -rf "$AXE_DIR.tmp"
  mkdir -p "$AXE_DIR.tmp"
  tarball="$(cd "$AXE_DIR.tmp" && npm pack --silent 'axe-core@4' | tail -1)"
  tar -xzf "$AXE_DIR.tmp/$tarball" -C "$AXE_DIR.tmp"
  [ -f "$AXE_DIR.tmp/package/axe.min.js" ] || { say "FAILED: no package/axe.min.js in $tarball"; exit 1; }
  rm -rf "$AXE_DIR"
  mv "$AXE_DIR.tmp" "$AXE_DIR"
fi

if [ ! -f "$VENV/.verified" ]; then
  say "self-check: headless Chromium through Playwright, with axe-core..."
  "$VENV/bin/python" - "$CHROMIUM" "$AXE_JS" <<'PY' >&2
import sys
from playwright.sync_api import sync_playwright
chromium, axe = sys.argv[1], sys.argv[2]
with sync_playwright() as p:
    browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
    page = browser.new_page()
    page.set_content('<html lang="en"><body><main><h1>ok</h1></main></body></html>')
    page.add_script_tag(path=axe)
    version = page.evaluate("axe.version")
    print(f"install-browser: self-check passed: {browser.version}, axe-core {version}")
    browser.close()
PY
  touch "$VENV/.verified"
fi

printf "MALLQUEST_BROWSER_PYTHON=%q\n" "$VENV/bin/python"
printf "MALLQUEST_AXE_JS=%q\n" "$AXE_JS"
