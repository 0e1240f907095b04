#!/usr/bin/env bash
# Peer comparison in one command: installs what is missing (Debian's postgresql and
# nats-server, when run as root or with sudo), builds the release binaries, and runs
# exesdb-compare, which starts each system on loopback in a temporary directory, runs the same
# loads against each, measures the machine's limits in the same run and prints one markdown
# report ending in "self-check: ok" or "self-check: FAILED".
#
#   bench/compare.sh                      # full run: 10 s per load and 1,000,000 appends for the
#                                         # many-streams load; about 13 minutes in all
#   bench/compare.sh --seconds 1 --new-streams 10000 --limits-seconds 0.5   # a smoke run of a few seconds per system
#   bench/compare.sh --json report.json --systems exesdb,postgres
#   bench/compare.sh --no-install ...     # never call apt-get
#
# Every other option goes to exesdb-compare (see `exesdb-compare --help`). EXESDB_COMPARE_DIR
# (or --dir) puts the run's directory, and so the disk measured, somewhere else than $TMPDIR.
set -euo pipefail
cd "$(dirname "$0")/.."

install=1
args=()
for arg in "$@"; do
    if [[ "$arg" == "--no-install" ]]; then install=0; else args+=("$arg"); fi
done

have_postgres() { compgen -G "/usr/lib/postgresql/*/bin/pg_ctl" > /dev/null; }
have_nats() { command -v nats-server > /dev/null || [[ -x /usr/sbin/nats-server ]]; }

missing=()
have_postgres || missing+=(postgresql)
have_nats || missing+=(nats-server)
if [[ $install == 1 && ${#missing[@]} -gt 0 ]]; then
    if [[ $(id -u) == 0 ]]; then
        sudo=()
    elif command -v sudo > /dev/null && sudo -n true 2> /dev/null; then
        sudo=(sudo)
    else
        sudo=(none)
    fi
    if [[ ${sudo[0]:-} == none ]] || ! command -v apt-get > /dev/null; then
        echo "compare.sh: ${missing[*]} missing and cannot be installed here (needs apt-get as root or sudo); those peers will be skipped" >&2
    else
        echo "compare.sh: installing ${missing[*]}" >&2
        "${sudo[@]}" apt-get update -qq
        DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq "${missing[@]}" > /dev/null
    fi
fi

cargo build --release -p exesdb-cli -p exesdb-compare
exec "${CARGO_TARGET_DIR:-target}/release/exesdb-compare" "${args[@]}"
