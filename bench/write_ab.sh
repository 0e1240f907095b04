#!/usr/bin/env bash
# The write path of two server builds, alternating, three rounds, each on a fresh data
# directory with the same client (this tree's release `exesdb`, which must be built): 64
# clients × 1 event, 64 × 100, and one sequential client, in events/s. For a change to the
# append path: run it with the build before and the build after.
#
#   bench/write_ab.sh OLD_SERVER_BINARY NEW_SERVER_BINARY
set -euo pipefail
old=$(realpath "$1")
new=$(realpath "$2")
cd "$(dirname "$0")/.."
. bench/fresh_server.sh
client=${CARGO_TARGET_DIR:-target}/release/exesdb
rate() { "$client" bench write --server "http://$address" --json --streams 1000 "$@" |
  python3 -c 'import json, sys; print(round(json.load(sys.stdin)["events_per_second"]))'; }
run() {
  local binary=$1 label=$2 data
  data=$(mktemp -d)
  start_server "$binary" "$data"
  echo "$label 64x1=$(rate --clients 64 --requests 1000) 64x100=$(rate --clients 64 --requests 100 --batch 100) sequential=$(rate --clients 1 --requests 3000)"
  kill "$pid"
  wait "$pid" 2>/dev/null || true
  rm -rf "$data"
}
for _ in 1 2 3; do
  run "$old" old
  run "$new" new
done
