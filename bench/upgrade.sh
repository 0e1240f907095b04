#!/usr/bin/env bash
# The format 1 → 2 upgrade (the backfill of the indexes by event type and category): a build
# of format 1 (FORMAT1_BINARY, such as bb2c946's) writes a store of EVENTS events, then this
# tree's release `exesdb` starts on it and logs how long building the indexes took.
#
#   bench/upgrade.sh FORMAT1_BINARY [EVENTS]
set -euo pipefail
old=$(realpath "$1")
events=${2:-1000000}
cd "$(dirname "$0")/.."
. bench/fresh_server.sh
new=${CARGO_TARGET_DIR:-target}/release/exesdb
data=$(mktemp -d)
start_server "$old" "$data"
"$old" bench write --server "http://$address" --clients 16 --batch 100 \
  --requests $((events / 1600)) --streams 1000 >/dev/null
kill "$pid"
wait "$pid" 2>/dev/null || true
echo "before: $(cat "$data/default/FORMAT")"
start_server "$new" "$data"
grep -o 'data directory upgraded.*' "$log"
echo "after: $(cat "$data/default/FORMAT")"
"$new" read --server "http://$address" '$et-Bench' --count 1 --json | head -c 300 || true
echo
kill "$pid"
wait "$pid" 2>/dev/null || true
rm -rf "$data"
