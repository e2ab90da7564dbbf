#!/usr/bin/env bash
# Usage: scripts/ci-times.sh <before-rev> [<after-rev>]: `.ci/run` cold (fresh clone) and warm
# (the same clone again) for two commits, back to back on this machine, into ci-times.txt.
# Run it on an otherwise idle machine; each cold run takes several minutes.
set -u
repo=$(cd "$(dirname "$0")/.." && pwd)
before=${1:?before-rev}
after=${2:-HEAD}
work=$(mktemp -d)
out=$repo/ci-times.txt
: > "$out"
time_run() {
  local dir=$1 label=$2 start rc
  start=$(date +%s)
  (cd "$dir" && CI=true bash .ci/run > "$work/$label.log" 2>&1); rc=$?
  echo "$label rc=$rc secs=$(( $(date +%s) - start )) log=$work/$label.log" | tee -a "$out"
}
for rev in "$before" "$after"; do
  git clone -q "$repo" "$work/$rev" && (cd "$work/$rev" && git checkout -q "$rev")
done
time_run "$work/$before" "before-cold"
time_run "$work/$after" "after-cold"
time_run "$work/$after" "after-warm"
time_run "$work/$before" "before-warm"
