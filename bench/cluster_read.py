#!/usr/bin/env python3
"""What a linearizable read costs: a 3-node cluster with 100 events in one stream, `exesdb bench
read` (8 readers, each reading the whole stream 200 times) through the leader and through a
follower, once with `--read-consistency linearizable` (the default) and once with `stale`.

    bench/cluster_read.py [EXESDB_BINARY]
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

BINARY = sys.argv[1] if len(sys.argv) > 1 else "target/release/exesdb"


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def health(client):
    try:
        with urllib.request.urlopen(f"http://{client}/health", timeout=1) as reply:
            return json.load(reply)
    except Exception:
        return None


def run(consistency):
    root = tempfile.mkdtemp(prefix="exesdb-cluster-read-")
    peers = [f"127.0.0.1:{free_port()}" for _ in range(3)]
    clients = [f"127.0.0.1:{free_port()}" for _ in range(3)]
    processes = [subprocess.Popen(
        [BINARY, "serve", "--mode", "cluster", "--cluster-size", "3", "--read-consistency",
         consistency, "--data-dir", os.path.join(root, f"node{i}"), "--listen", clients[i],
         "--peer-listen", peers[i], "--seeds", ",".join(peers)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for i in range(3)]
    try:
        deadline = time.monotonic() + 60
        while True:
            seen = [health(client) for client in clients]
            if all(h and h["status"] == "ok" for h in seen):
                break
            if time.monotonic() > deadline:
                raise SystemExit("the cluster did not form")
            time.sleep(0.05)
        leader = next(c for c, h in zip(clients, seen) if h["stores"][0]["leader"])
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
        for process in processes:
            process.kill()
            process.wait()
        shutil.rmtree(root, ignore_errors=True)


def main():
    for consistency in ("linearizable", "stale"):
        leader, follower = run(consistency)
        for where, report in (("leader", leader), ("follower", follower)):
            print(consistency, where, json.dumps({k: v for k, v in report.items()
                                                  if k != "parameters"}), flush=True)


if __name__ == "__main__":
    main()
