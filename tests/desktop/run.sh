#!/usr/bin/env bash
# Runs the desktop window suite: an X server (Xvfb) and a private D-Bus session with an
# unlocked gnome-keyring (the Secret Service the app keeps the hub token in), then node --test.
# Needs target/debug/jarvis-desktop (built after `cd ui && npm run build`), target/debug/jarvis-cloud
# and tauri-driver (scripts/install-deps.sh).
set -euo pipefail
cd "$(dirname "$0")"
exec xvfb-run -a -s "-screen 0 1440x900x24" dbus-run-session -- sh -c \
  'echo -n jarvis-e2e | gnome-keyring-daemon --unlock --components=secrets >/dev/null && exec node --test --test-concurrency=1 "$@"' sh "$@"
