#!/bin/sh
# Container entrypoint: make the data directory usable by the jarvis user, then run the command as
# that user. Platforms mount their disks root-owned; without this the server could not write its
# database on first start. Started as a non-root user already, it only runs the command.
set -eu
data="${JARVIS_DATA_DIR:-/data}"
if [ "$(id -u)" = 0 ]; then
  mkdir -p "$data"
  # Only the top directory: a large existing tree keeps its owners (and a restart stays fast).
  if [ "$(stat -c %u "$data")" != 10001 ]; then
    chown 10001:10001 "$data"
  fi
  exec setpriv --reuid=10001 --regid=10001 --clear-groups -- "$@"
fi
exec "$@"
