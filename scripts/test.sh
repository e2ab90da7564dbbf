#!/usr/bin/env bash
# The test command: installs what the tests need, then format check, clippy, every Rust test and
# the JS interop tests. CI (.ci/run) calls exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."

# Each section says when it started (seconds since the command began), so a slow step shows.
section() { printf '\n=== %s (at %ss) ===\n' "$*" "$SECONDS"; }

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
# Most end-to-end tests wait on processes, sockets and timers rather than the CPU (a run on
# two cores uses about a quarter of them with one test per core), so twice as many tests as
# cores run at once; JARVIS_TEST_THREADS overrides.
threads=${JARVIS_TEST_THREADS:-$(( $(nproc) * 2 ))}
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast --test-threads "$threads"
else
  cargo test --workspace --locked --no-fail-fast
fi

section "js interop tests"
(cd tests/js && node --test)

section "web view: unit tests"
(cd ui && node --test test/)

section "browser tests and desktop window, side by side"
# Both suites mostly wait on a browser, so they run at the same time, each browser file in its
# own server, data directory and port:
# - the browser suite serves ui/dist through jarvis-cloud and drives /usr/bin/chromium headless;
# - the desktop suite runs the debug jarvis-desktop built above (with ui/dist inside) under
#   Xvfb, driven by tauri-driver and WebKitWebDriver, its hub token in gnome-keyring in a
#   private D-Bus session. Its output is held back and printed whole after the browser suite's.
desktop_log=$(mktemp "${TMPDIR:-/tmp}/jarvis-desktop-suite.XXXXXX")
timeout --kill-after=10 600 tests/desktop/run.sh >"$desktop_log" 2>&1 &
desktop_pid=$!
browser_rc=0
(cd tests/browser && node --test --test-concurrency=3) || browser_rc=$?
desktop_rc=0
wait "$desktop_pid" || desktop_rc=$?
section "desktop window: WebDriver end to end (output)"
cat "$desktop_log"
rm -f "$desktop_log"
if ((browser_rc != 0 || desktop_rc != 0)); then
  echo "browser suite exit $browser_rc, desktop suite exit $desktop_rc" >&2
  exit 1
fi

section "all tests passed"
