#!/usr/bin/env bash
# Startup time after a crash: writes EVENTS events through `exesdb bench write` (appends of
# 1,000), kills the server with SIGKILL, restarts it and times how long until /health answers
# 200, then checks with `exesdb bench read-all` that every event is there, gapless. Prints the
# server's resident memory (VmRSS, and the peak VmHWM) after writing, after the restart and
# after the read.
#
#   bench/startup_after_crash.sh [EVENTS] [DATA_DIR]     (defaults: 10000000, a temp dir)
set -euo pipefail
events=${1:-10000000}
data_dir=${2:-$(mktemp -d)}
cd "$(dirname "$0")/.."
cargo build --release -q -p exesdb-cli
exesdb=./target/release/exesdb
log=$(mktemp)

start_server() {
  "$exesdb" serve --listen 127.0.0.1:0 --data-dir "$data_dir" 2>"$log" &
  pid=$!
  for _ in $(seq 1 600); do
    address=$(grep -o 'listen=[0-9.:]*' "$log" | head -n 1 | cut -d= -f2 || true)
    [ -n "$address" ] && break
    sleep 0.05
  done
}

healthy() { curl -s -o /dev/null -w '%{http_code}' "http://$address/health" 2>/dev/null | grep -q 200; }

start_server
clients=10
requests=$(( events / 1000 / clients ))
"$exesdb" bench write --server "http://$address" --clients "$clients" --requests "$requests" --batch 1000 --streams 1000
rss() { grep -E "^(VmRSS|VmHWM)" "/proc/$pid/status" | tr -s ' \t' ' ' | tr '\n' ' '; }
echo "server memory after writing: $(rss)"
kill -9 "$pid"; wait "$pid" 2>/dev/null || true

started=$(date +%s.%N)
start_server
until healthy; do sleep 0.01; done
ready=$(date +%s.%N)
echo "startup after SIGKILL with $(( clients * requests * 1000 )) events: $(echo "$ready - $started" | bc) s (process start to /health 200)"
echo "server memory right after the restart: $(rss)"
"$exesdb" bench read-all --server "http://$address"
echo "server memory after reading everything back: $(rss)"
kill "$pid"; wait "$pid" 2>/dev/null || true
du -sh "$data_dir"
