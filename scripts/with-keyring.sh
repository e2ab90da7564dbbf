#!/usr/bin/env bash
# Usage: scripts/with-keyring.sh <command> [args...]: runs the command in a private D-Bus session
# with an unlocked gnome-keyring (a real Secret Service), for the desktop tests. The keyring
# lives under $HOME, so point HOME at a throwaway folder.
#
# The command starts only once the daemon owns org.freedesktop.secrets on the bus. Started
# earlier (seen on a loaded machine), its first Secret Service call made D-Bus start a second,
# locked daemon over the half-written keyring file, which asked for a password on a prompter
# that cannot open: the call failed, or hung.
set -euo pipefail
# shellcheck disable=SC2016 # the inner script expands its own variables
exec dbus-run-session -- sh -c '
  echo -n jarvis-test | gnome-keyring-daemon --unlock --components=secrets >/dev/null || exit 1
  tries=0
  until dbus-send --session --print-reply --dest=org.freedesktop.DBus /org/freedesktop/DBus \
      org.freedesktop.DBus.NameHasOwner string:org.freedesktop.secrets 2>/dev/null | grep -q "boolean true"; do
    tries=$((tries + 1))
    if [ "$tries" -ge 200 ]; then
      echo "with-keyring: gnome-keyring never took org.freedesktop.secrets" >&2
      exit 1
    fi
    sleep 0.05
  done
  exec "$@"
' sh "$@"
