#!/usr/bin/env bash
# Tail latency of durable appends over gRPC: against one fresh `exesdb serve`, 64 clients append
# one event each to 1,000 streams for SECONDS (default 60). Prints the load's figures (p50 to
# p99.9 and max), then every batch write the server logged as slow (20 ms or more), each with
# what the storage engine logged in the half second before it (memtable and journal rotation,
# flushes, compactions), which is where the stalls come from. Uses ./target/release (or
# $CARGO_TARGET_DIR). Storage settings come from the environment, as for `exesdb serve`
# (for example EXESDB_MEMTABLE_BYTES_MAX).
#
#   bench/tail_latency.sh [SECONDS] [DATA_DIR]
set -euo pipefail
seconds=${1:-60}
data_dir=${2:-$(mktemp -d)}
cd "$(dirname "$0")/.."
. bench/fresh_server.sh
RUST_LOG=info,fjall=debug start_fresh_server "$data_dir"

"$exesdb" bench write --json --server "http://$address" --clients 64 --seconds "$seconds" \
  --streams 1000 > "$log.load"
kill "$pid"
wait "$pid" || true
python3 - "$log.load" "$log" <<'PY'
import datetime, json, re, sys
report = json.load(open(sys.argv[1]))
latency = report["latency"]
print("appends {} in {:.1f} s: {:.0f} events/s, errors {}, self-check {}".format(
    report["appends"], report["seconds"], report["events_per_second"], report["errors"],
    report["self_check"]["ok"]))
print("latency us: p50 {} p95 {} p99 {} p99.9 {} max {}".format(
    latency["p50_us"], latency["p95_us"], latency["p99_us"], latency["p999_us"],
    latency["max_us"]))

def when(line):
    try:
        return datetime.datetime.fromisoformat(line.split()[0].rstrip("Z"))
    except (ValueError, IndexError):
        return None

lines = [(when(line), line.rstrip()) for line in open(sys.argv[2])]
engine = [(t, line) for t, line in lines if t and " fjall::" in line]
slow = [(t, line) for t, line in lines if t and "slow batch write" in line]
print("slow batch writes (20 ms or more): {}".format(len(slow)))
for t, line in slow:
    found = re.search(r'write_ms="?([0-9.]+)', line)
    millis = float(found.group(1)) if found else 0.0
    print("- {} {:.1f} ms".format(t.time(), millis))
    # The write began `millis` before its log line; look half a second further back.
    start = t - datetime.timedelta(milliseconds=millis + 500)
    for at, event in engine:
        if start <= at <= t:
            print("    {} {}".format(at.time(), event.split(" fjall::", 1)[1]))
PY
