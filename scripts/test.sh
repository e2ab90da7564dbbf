#!/usr/bin/env bash
# The test command: installs what the tests need, then format check, clippy, every Rust test and
# the JS interop tests. CI (.ci/run) calls exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."

section() { printf '\n=== %s ===\n' "$*"; }

if [[ "${CI:-}" == "true" ]]; then
  export CARGO_INCREMENTAL=0
fi
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

section "install dependencies"
scripts/install-deps.sh

section "cargo fmt --check"
cargo fmt --all --check

section "deployment files"
scripts/check-deploy.sh

section "web view: build"
# Before any cargo step: the desktop app (src-tauri) embeds ui/dist when it compiles.
(cd ui && npm run build)

section "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

section "build binaries and examples"
# The end-to-end and JS tests start these binaries; build them once, in the same target dir.
cargo build --workspace --bins --examples --locked

section "rust tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast
else
  cargo test --workspace --locked --no-fail-fast
fi

section "js interop tests"
(cd tests/js && node --test)

section "web view: unit tests, browser tests"
# The browser suite serves ui/dist through jarvis-cloud and drives /usr/bin/chromium headless.
(cd ui && node --test test/)
(cd tests/browser && node --test --test-concurrency=1)

section "desktop window: WebDriver end to end"
# The debug jarvis-desktop built above (with ui/dist inside) under Xvfb, driven by tauri-driver
# and WebKitWebDriver, its hub token in gnome-keyring in a private D-Bus session.
timeout --kill-after=10 600 tests/desktop/run.sh

section "all tests passed"
