#!/usr/bin/env bash
# Installs the test broker (Tansu, from crates.io) once into a cache and prints its path.
# Reuses, in order: $TANSU_BIN, the cached install, a `tansu` of the pinned version on PATH
# or in ~/.cargo/bin. A fresh build takes about 8 minutes on 2 cores.
set -euo pipefail

TANSU_VERSION="0.6.0"
CACHE_ROOT="${MALLQUEST_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/mallquest}/tansu-${TANSU_VERSION}"

is_pinned() { [ -x "$1" ] && "$1" --version 2>/dev/null | grep -qx "tansu ${TANSU_VERSION}"; }

for candidate in "${TANSU_BIN:-}" "$CACHE_ROOT/bin/tansu" "$(command -v tansu 2>/dev/null || true)" "$HOME/.cargo/bin/tansu"; do
  if [ -n "$candidate" ] && is_pinned "$candidate"; then
    echo "$candidate"
    exit 0
  fi
done

echo "installing tansu ${TANSU_VERSION} into $CACHE_ROOT (about 8 minutes)..." >&2
cargo install tansu --version "$TANSU_VERSION" --locked --features libsql --root "$CACHE_ROOT" >&2
is_pinned "$CACHE_ROOT/bin/tansu" || { echo "tansu install failed" >&2; exit 1; }
echo "$CACHE_ROOT/bin/tansu"
