#!/usr/bin/env bash
# The `$all` read of two server builds, alternating, two rounds, each on a fresh data
# directory with the same client (this tree's release `exesdb`, which must be built): the
# client writes 1,024,000 events of 256 bytes (64 clients x 160 appends of 100), then reads
# all of `$all` three times over gRPC; events/s of each read. For a change to the read path:
# run it with the build before and the build after.
#
#   bench/read_ab.sh OLD_SERVER_BINARY NEW_SERVER_BINARY
set -euo pipefail
old=$(realpath "$1")
new=$(realpath "$2")
cd "$(dirname "$0")/.."
. bench/fresh_server.sh
client=${CARGO_TARGET_DIR:-target}/release/exesdb
read_rate() { "$client" bench read-all --server "http://$address" --json |
  python3 -c 'import json, sys; print(round(json.load(sys.stdin)["events_per_second"]))'; }
run() {
  local binary=$1 label=$2 data
  data=$(mktemp -d)
  start_server "$binary" "$data"
  "$client" bench write --server "http://$address" --json --clients 64 --requests 160 \
    --batch 100 --streams 1000 > /dev/null
  echo "$label read-all=$(read_rate) $(read_rate) $(read_rate)"
  kill "$pid"
  wait "$pid" 2>/dev/null || true
  rm -rf "$data"
}
for _ in 1 2; do
  run "$old" old
  run "$new" new
done
