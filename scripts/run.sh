#!/usr/bin/env bash
# Runs the product on its embedded defaults: SQLite under ./jarvis-data, no external service.
# Builds the web view first when it is missing or older than its sources, then serves it at
# http://127.0.0.1:8080/ next to the API and the sync socket. The first start prints the address
# to open with a one-time setup code (the browser creates the owner account with it), and an
# admin token for scripts.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v npm >/dev/null 2>&1; then
  echo "npm is missing: the web view cannot be built (apt-get install nodejs npm); serving the API only" >&2
elif [[ ! -f ui/dist/index.html ]] || [[ -n "$(find ui/src ui/index.html ui/package-lock.json -newer ui/dist/index.html -print -quit)" ]]; then
  echo "building the web view (ui/)" >&2
  if [[ ! -d ui/node_modules ]] || [[ ui/package-lock.json -nt ui/node_modules ]]; then
    (cd ui && npm ci --no-audit --no-fund --loglevel=error)
    touch ui/node_modules
  fi
  (cd ui && npm run build >/dev/null)
fi
exec cargo run --release --locked -p jarvis-cloud -- serve --host "${JARVIS_HOST:-127.0.0.1}" "$@"
