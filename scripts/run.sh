#!/usr/bin/env bash
# Runs the product on its embedded defaults: SQLite under ./jarvis-data, no external service.
# The first start prints an admin token once; open ws://127.0.0.1:8080/sync with it.
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo run --release --locked -p jarvis-cloud -- serve --host "${JARVIS_HOST:-127.0.0.1}" "$@"
