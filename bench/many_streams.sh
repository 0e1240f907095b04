#!/usr/bin/env bash
# One stream per aggregate: against one fresh `exesdb serve`, runs the 1,000-stream write load
# and then APPENDS appends each to a new stream (64 clients, 1 event per append), and samples
# the server's resident memory every 0.2 s. Prints both loads' figures (`exesdb bench` text),
# the peak VmRSS during each, and VmRSS after. Uses ./target/release (or $CARGO_TARGET_DIR).
#
#   bench/many_streams.sh [APPENDS] [DATA_DIR]     (defaults: 1000000, a temp dir)
set -euo pipefail
appends=${1:-1000000}
data_dir=${2:-$(mktemp -d)}
cd "$(dirname "$0")/.."
. bench/fresh_server.sh
start_fresh_server "$data_dir"
clients=64
requests=$(( appends / clients ))

rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$pid/status"; }
# Runs a load while sampling the server's memory; prints the load's report and the peak.
sampled() {
  local peak=0 now
  "$@" > "$log.load" 2>/dev/null &
  local load=$!
  while kill -0 "$load" 2>/dev/null; do
    now=$(rss_kib); (( now > peak )) && peak=$now
    sleep 0.2
  done
  wait "$load" || { cat "$log.load"; echo "the load failed" >&2; exit 1; }
  python3 - "$log.load" <<'PY'
import json, sys
report = json.load(open(sys.argv[1]))
latency = report["latency"]
print("appends {} events/s {:.0f} errors {} p50 {} us p99 {} us p99.9 {} us max {} us self-check {}".format(
    report["appends"], report["events_per_second"], report["errors"], latency["p50_us"],
    latency["p99_us"], latency["p999_us"], latency["max_us"], report["self_check"]["ok"]))
PY
  echo "server VmRSS peak during the load: $(( peak / 1024 )) MiB"
}

echo "== 1,000 streams, $clients clients x $requests appends"
sampled "$exesdb" bench write --json --server "http://$address" --clients "$clients" --requests "$requests" --streams 1000
echo "== a new stream each append, $clients clients x $requests appends"
sampled "$exesdb" bench write --json --server "http://$address" --clients "$clients" --requests "$requests" --new-streams
echo "server VmRSS after both loads: $(( $(rss_kib) / 1024 )) MiB"
