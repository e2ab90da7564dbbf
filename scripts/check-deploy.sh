#!/usr/bin/env bash
# Checks the deployment files without a Docker engine: hadolint on the Dockerfile, shellcheck on
# the entrypoint, the compose file against the Compose specification's schema, yamllint, and a
# cross-check that every platform file names the port, data dir and health check the image uses.
# The image's entrypoint and binary themselves run in tests/tests/deploy.rs.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=.venv/bin
"$bin/hadolint" Dockerfile
"$bin/shellcheck" deploy/entrypoint.sh scripts/*.sh
"$bin/check-jsonschema" --builtin-schema vendor.compose-spec docker-compose.yml
"$bin/yamllint" --strict render.yaml docker-compose.yml .hadolint.yaml .yamllint.yaml
"$bin/python" deploy/check_config.py
# One package list: the Dockerfile and install-deps.sh both read it, and every line is
# "<package> all|full".
grep -q 'deploy/packages.txt' Dockerfile || { echo "Dockerfile does not read deploy/packages.txt" >&2; exit 1; }
grep -q 'deploy/packages.txt' scripts/install-deps.sh || { echo "install-deps.sh does not read deploy/packages.txt" >&2; exit 1; }
if grep -v '^#' deploy/packages.txt | grep -v '^$' | grep -Ev '^[a-z0-9][a-z0-9.+-]* (all|full)$'; then
  echo "deploy/packages.txt: lines above are not \"<package> all|full\"" >&2
  exit 1
fi
