#!/usr/bin/env python3
"""What a linearizable read costs: a 3-node cluster with 100 events in one stream, `exesdb bench
read` (8 readers, each reading the whole stream 200 times) through the leader and through a
follower, once with `--read-consistency linearizable` (the default) and once with `stale`.

    bench/cluster_read.py [EXESDB_BINARY]
"""

import json
import shutil
import subprocess
import sys
import tempfile

from cluster_common import start_cluster, stop

BINARY = sys.argv[1] if len(sys.argv) > 1 else "target/release/exesdb"


def run(consistency):
    root = tempfile.mkdtemp(prefix="exesdb-cluster-read-")
    processes, clients, leader = start_cluster(BINARY, root, ["--read-consistency", consistency])
    try:
        follower = next(c for c in clients if c != leader)
        lines = "".join(json.dumps({"event_type": "Written", "data": {"n": n}}) + "\n"
                        for n in range(100))
        subprocess.run([BINARY, "append", "s", "--server", f"http://{leader}"], input=lines,
                       text=True, check=True, capture_output=True)
        figures = []
        for client in (leader, follower):
            result = subprocess.run(
                [BINARY, "bench", "read", "--stream", "s", "--clients", "8", "--requests", "200",
                 "--json", "--server", f"http://{client}"],
                capture_output=True, text=True, check=True)
            report = json.loads(result.stdout)
            figures.append(report)
        return figures
    finally:
        stop(processes)
        shutil.rmtree(root, ignore_errors=True)


def main():
    for consistency in ("linearizable", "stale"):
        leader, follower = run(consistency)
        for where, report in (("leader", leader), ("follower", follower)):
            print(consistency, where, json.dumps({k: v for k, v in report.items()
                                                  if k != "parameters"}), flush=True)


if __name__ == "__main__":
    main()
