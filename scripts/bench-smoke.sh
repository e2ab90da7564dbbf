#!/usr/bin/env bash
# Runs every benchmark command of the README briefly (debug build, small sizes), to check they
# all run on a fresh clone after the test command's install step. Not a measurement: the
# figures in README come from the full commands there.
set -u
cd "$(dirname "$0")/.." || exit 1
cargo build -p jarvis-cloud -p jarvis-bench >/dev/null
B=target/debug/jarvis-bench
C=target/debug/jarvis-cloud
failed=0
run() {
  echo "=== $*"
  local start; start=$(date +%s)
  if timeout 600 "$@" > /tmp/bench-smoke.out 2>&1; then
    echo "ok ($(( $(date +%s) - start )) s)"
  else
    failed=1
    echo "FAILED ($(( $(date +%s) - start )) s)"; tail -20 /tmp/bench-smoke.out
  fi
}
run $B relay --jarvis-bin $C --quick --out /tmp/relay.md
run $B mirror --jarvis-bin $C --files 200 --megabytes 2 --edits 5 --out /tmp/mirror.md
run $B handoff --jarvis-bin $C --handoffs 3 --files 50 --megabytes 1
run $B handoff --jarvis-bin $C --handoffs 3 --files 100 --megabytes 1 --git-commits 5
run $B gateway --jarvis-bin $C --requests 50 --warmup 10 --out /tmp/gw.md
run $B anon-bodies --jarvis-bin $C --connections 4 --body-mib 2 --slow-headers 20 --out /tmp/anon.md
run $B presence-flood --jarvis-bin $C --sockets 2 --documents 20
run $B cache
(cd tests/browser && run node bench-sync-visible.mjs)
exit $failed
