#!/usr/bin/env bash
# Live fan-out against one fresh `exesdb serve`: the server's CPU with IDLE subscriptions open
# and nothing written, then SUBSCRIBERS `$all` subscribers receiving appends made at RATE
# events/s for SECONDS, then the same appends with no subscriber (the writers' baseline).
# Prints each `exesdb bench subscribe` report. Uses ./target/release (or $CARGO_TARGET_DIR).
#
#   bench/fanout.sh [IDLE] [SUBSCRIBERS] [RATE] [SECONDS]   (defaults: 10000 1000 5000 10)
set -euo pipefail
idle=${1:-10000}
subscribers=${2:-1000}
rate=${3:-5000}
seconds=${4:-10}
cd "$(dirname "$0")/.."
. bench/fresh_server.sh
start_fresh_server "$(mktemp -d)"
bench() { "$exesdb" bench --server "http://$address" subscribe --server-pid "$pid" "$@"; }

echo "== $idle idle subscriptions (and 1 event/s for 2 s, to show they still receive)"
bench --subscribers "$idle" --idle-seconds 10 --rate 1 --duration 2
echo "== $subscribers subscribers, $rate events/s for $seconds s"
bench --subscribers "$subscribers" --idle-seconds 0 --rate "$rate" --duration "$seconds"
echo "== no subscriber, $rate events/s for $seconds s"
bench --subscribers 0 --rate "$rate" --duration "$seconds"
