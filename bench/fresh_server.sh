# Sourced by the bench scripts: builds the release binaries (the same build as
# bench/compare.sh, so they share their artifacts) and starts one fresh `exesdb serve` on a
# free loopback port. After `start_fresh_server DATA_DIR`: $exesdb is the binary, $pid the
# server's process, $address its host:port and $log its stderr; the server is killed on exit.
# `start_server BINARY DATA_DIR` does the same with a server binary of another build, and
# builds nothing. RUST_LOG and the EXESDB_* settings pass through from the environment.

start_fresh_server() {
  local data_dir=$1
  cargo build --release -q -p exesdb-cli -p exesdb-compare
  exesdb=${CARGO_TARGET_DIR:-target}/release/exesdb
  start_server "$exesdb" "$data_dir"
}

start_server() {
  local binary=$1 data_dir=$2
  log=$(mktemp)
  "$binary" serve --listen 127.0.0.1:0 --data-dir "$data_dir" 2>"$log" &
  pid=$!
  trap 'kill "$pid" 2>/dev/null || true' EXIT
  address=
  # Wait for the line the server logs once it listens (polled: the log is a plain file).
  for _ in $(seq 1 600); do
    address=$(grep -o 'listen=[0-9.:]*' "$log" | head -n 1 | cut -d= -f2 || true)
    [ -n "$address" ] && break
    sleep 0.05
  done
  [ -n "$address" ] || { echo "the server did not start: $(cat "$log")" >&2; exit 1; }
}
