#!/usr/bin/env bash
# Runs the desktop window suite: an X server (Xvfb) and a private D-Bus session with an
# unlocked gnome-keyring (the Secret Service the app keeps the hub token in), then node --test.
# The keyring lives in a throwaway HOME, so a developer's own login keyring is never touched.
# Needs target/debug/jarvis-desktop (built after `cd ui && npm run build`), target/debug/jarvis-cloud
# and tauri-driver (scripts/install-deps.sh).
set -euo pipefail
cd "$(dirname "$0")"
home=$(mktemp -d "${TMPDIR:-/tmp}/jarvis-desktop-e2e-home.XXXXXX")
trap 'rm -rf "$home"' EXIT
export TAURI_DRIVER_BIN="${TAURI_DRIVER_BIN:-$(command -v tauri-driver || echo tauri-driver)}"
# No accessibility bus: GTK/WebKit would start one that can outlive the window.
HOME="$home" XDG_DATA_HOME="$home/.local/share" XDG_CONFIG_HOME="$home/.config" \
  XDG_CACHE_HOME="$home/.cache" NO_AT_BRIDGE=1 GTK_A11Y=none \
  xvfb-run -a -s "-screen 0 1440x900x24" ../../scripts/with-keyring.sh \
  node --test --test-concurrency=1 "$@"
