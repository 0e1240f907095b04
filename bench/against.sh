#!/usr/bin/env bash
# Issue 12's subscription loads against one fresh server started from SERVER_BINARY (another
# build's `exesdb`, to compare builds with the same client): 10,000 idle subscriptions (the
# server's CPU), a 1,000-event stream's catch-up in a 1,000,000-event store, and 1,000 `$all`
# subscribers over gRPC at 5,000 events/s. The client is this tree's release `exesdb`
# (./target/release, or $CARGO_TARGET_DIR), which must be built.
#
#   bench/against.sh SERVER_BINARY LABEL
set -euo pipefail
server_bin=$(realpath "$1")
label=$2
cd "$(dirname "$0")/.."
. bench/fresh_server.sh
bench=${CARGO_TARGET_DIR:-target}/release/exesdb
start_server "$server_bin" "$(mktemp -d)"
b() { "$bench" bench --server "http://$address" "$@"; }

echo "=== $label: 10000 idle subscriptions, 10 s"
b subscribe --server-pid "$pid" --subscribers 10000 --idle-seconds 10 --rate 1 --duration 2
echo "=== $label: catch-up"
b catch-up --store-events 1000000 --stream-events 1000 --runs 3
echo "=== $label: 1000 subscribers over gRPC, 5000/s for 5 s"
b subscribe --server-pid "$pid" --subscribers 1000 --idle-seconds 0 --rate 5000 --duration 5
