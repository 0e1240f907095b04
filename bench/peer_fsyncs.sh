#!/usr/bin/env bash
# What a peer's acknowledgement costs in syncs: runs exesdb-compare on one peer with its server
# under `strace -f -c`, and prints the fsync-family calls (fsync, fdatasync, sync_file_range,
# msync) per acknowledged append, over all of the comparison's write loads.
#
#   bench/peer_fsyncs.sh umadb|sierradb|nats [exesdb-compare options]
#   bench/peer_fsyncs.sh umadb --seconds 3 --new-streams 5000
#
# Needs strace, the release build of exesdb-compare (bench/compare.sh makes it) and the peer
# (bench/compare.sh installs UmaDB and SierraDB into EXESDB_PEERS_DIR, ~/.cache/exesdb-compare).
set -euo pipefail
cd "$(dirname "$0")/.."

system=${1:-}
[[ $# -gt 0 ]] && shift
peers_dir=${EXESDB_PEERS_DIR:-$HOME/.cache/exesdb-compare}
case $system in
    umadb) real=$peers_dir/umadb-0.7.8/bin/umadb ;;
    sierradb) real=$peers_dir/sierradb-0.3.1/bin/sierradb ;;
    nats) real=$(command -v nats-server || echo /usr/sbin/nats-server) ;;
    *)
        echo "usage: bench/peer_fsyncs.sh umadb|sierradb|nats [exesdb-compare options]" >&2
        exit 2
        ;;
esac
[[ -x $real ]] || { echo "peer_fsyncs.sh: $real is not there (bench/compare.sh installs it)" >&2; exit 1; }
command -v strace > /dev/null || { echo "peer_fsyncs.sh: strace is not installed" >&2; exit 1; }
compare=${CARGO_TARGET_DIR:-target}/release/exesdb-compare
[[ -x $compare ]] || { echo "peer_fsyncs.sh: build $compare first (bench/compare.sh)" >&2; exit 1; }

work=$(mktemp -d)
trap '[[ -n ${KEEP:-} ]] && echo "kept $work" >&2 || rm -rf "$work"' EXIT
# The run stops its server with SIGTERM: the wrapper passes it to the traced server, then
# waits for strace to write its summary. Each start writes a summary of its own (the report
# also runs the binary for its version); they are added up.
cat > "$work/traced" <<EOF
#!/usr/bin/env bash
strace -f -c -o "$work/strace.\$\$.txt" -e trace=fsync,fdatasync,sync_file_range,msync "$real" "\$@" &
tracer=\$!
trap 'pkill -TERM -P \$tracer; wait \$tracer' TERM INT
wait \$tracer
EOF
chmod +x "$work/traced"

EXESDB_PEERS_DIR=$peers_dir "$compare" --systems "$system" "--$system-bin" "$work/traced" \
    --no-limits --json "$work/report.json" "$@" > "$work/report.md"
python3 - "$work/report.json" "$work"/strace.*.txt <<'EOF'
import json, sys
report = json.load(open(sys.argv[1]))
run = report["systems"][0]
if run.get("status") != "ran":
    sys.exit(f"peer_fsyncs.sh: the run did not run: {run.get('status')}")
appends = sum(write["appends"] for write in run["writes"])
events = sum(write["events"] for write in run["writes"])
syncs = {}
for summary in sys.argv[2:]:
    for line in open(summary):
        fields = line.split()
        if fields and fields[-1] in ("fsync", "fdatasync", "sync_file_range", "msync"):
            syncs[fields[-1]] = syncs.get(fields[-1], 0) + int(fields[3])
total = sum(syncs.values())
print(f"{run['system']}: {appends} appends ({events} events) acknowledged; sync calls {syncs}")
print(f"{total / max(appends, 1):.3f} sync calls per acknowledged append, "
      f"{events / max(total, 1):.1f} events per sync call")
EOF
