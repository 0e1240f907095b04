#!/usr/bin/env bash
# Peer comparison in one command: installs what is missing (Debian's postgresql and
# nats-server, when run as root or with sudo; UmaDB and SierraDB built from crates.io at pinned
# versions into a cache kept between runs, EXESDB_PEERS_DIR or ~/.cache/exesdb-compare, which
# takes about 6 and 15 minutes here the first time), builds the release binaries, and runs
# exesdb-compare, which starts each system on loopback in a temporary directory, runs the same
# loads against each, measures the machine's limits in the same run and prints one markdown
# report ending in "self-check: ok" or "self-check: FAILED".
#
#   bench/compare.sh                      # full run: 10 s per load and 1,000,000 appends for the
#                                         # many-streams load; about 13 minutes in all
#   bench/compare.sh --seconds 1 --new-streams 10000 --limits-seconds 0.5   # a smoke run of a few seconds per system
#   bench/compare.sh --json report.json --systems exesdb,postgres
#   bench/compare.sh --no-install ...     # never call apt-get
#   bench/compare.sh --no-peer-builds ... # never build UmaDB or SierraDB (use them if cached)
#
# Every other option goes to exesdb-compare (see `exesdb-compare --help`). EXESDB_COMPARE_DIR
# (or --dir) puts the run's directory, and so the disk measured, somewhere else than $TMPDIR.
set -euo pipefail
cd "$(dirname "$0")/.."

install=1
peer_builds=1
args=()
for arg in "$@"; do
    case "$arg" in
        --no-install) install=0 ;;
        --no-peer-builds) peer_builds=0 ;;
        *) args+=("$arg") ;;
    esac
done

have_postgres() { compgen -G "/usr/lib/postgresql/*/bin/pg_ctl" > /dev/null; }
have_nats() { command -v nats-server > /dev/null || [[ -x /usr/sbin/nats-server ]]; }

missing=()
have_postgres || missing+=(postgresql)
have_nats || missing+=(nats-server)
# UmaDB's build compiles its protobuf definitions with protoc.
umadb_version=0.7.8
sierradb_version=0.3.1
peers_dir="${EXESDB_PEERS_DIR:-$HOME/.cache/exesdb-compare}"
umadb_bin="$peers_dir/umadb-$umadb_version/bin/umadb"
sierradb_bin="$peers_dir/sierradb-$sierradb_version/bin/sierradb"
if [[ $peer_builds == 1 && ! -x $umadb_bin ]] && ! command -v protoc > /dev/null; then
    missing+=(protobuf-compiler)
fi
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

# Each peer is built once, with its own lock file (--locked) and a target directory removed
# afterwards; a failed build is reported and that peer skipped.
build_peer() { # crate version root
    local crate=$1 version=$2 root=$3 target
    target=$(mktemp -d)
    echo "compare.sh: building $crate $version into $root (once)" >&2
    if ! cargo install "$crate" --version "=$version" --locked --root "$root" --target-dir "$target" >&2; then
        echo "compare.sh: $crate $version did not build; it will be skipped" >&2
    fi
    rm -rf "$target"
}
if [[ $peer_builds == 1 ]]; then
    [[ -x $umadb_bin ]] || build_peer umadb "$umadb_version" "$peers_dir/umadb-$umadb_version"
    [[ -x $sierradb_bin ]] || build_peer sierradb-server "$sierradb_version" "$peers_dir/sierradb-$sierradb_version"
fi

# UmaDB's client brings a TLS stack with a C build: only with UmaDB there to measure.
features=()
[[ -x $umadb_bin ]] && features=(--features exesdb-compare/umadb)
cargo build --release -p exesdb-cli -p exesdb-compare "${features[@]}"
export EXESDB_PEERS_DIR="$peers_dir"
exec "${CARGO_TARGET_DIR:-target}/release/exesdb-compare" "${args[@]}"
