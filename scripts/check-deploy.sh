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
