#!/usr/bin/env python3
"""Recovery figures of a 3-node cluster on this machine:

- graceful leader transfer (`exesdb cluster transfer-leader`): from the command to the first
  write the new leader acknowledges;
- graceful stop of the leader (SIGTERM, which hands over first): from the signal to the first
  write a survivor acknowledges;
- catch-up of a follower that was down while EVENTS events were written (64 clients x 1 event):
  from its restart to its applied index reaching the leader's, first from the log, then, on a
  cluster that snapshots every 1,000 entries, from a snapshot. Gives events/s of catch-up.

Each probe write is one `exesdb append` process (about 10 ms of its own), retried every 20 ms
until acknowledged.

    bench/cluster_recovery.py [EXESDB_BINARY] [ROUNDS] [EVENTS]
"""

import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

from cluster_common import health, metric, start_cluster, stop, wait

BINARY = sys.argv[1] if len(sys.argv) > 1 else "target/release/exesdb"
ROUNDS = int(sys.argv[2]) if len(sys.argv) > 2 else 5
EVENTS = int(sys.argv[3]) if len(sys.argv) > 3 else 20000


def write_ok(client):
    return subprocess.run(
        [BINARY, "append", "--server", f"http://{client}", "probe", "--type", "Probed",
         "--data", "{}"],
        capture_output=True).returncode == 0


def first_write_after(started, clients):
    """Seconds from `started` to the first write one of `clients` acknowledges."""
    turn = 0
    while time.monotonic() - started < 60:
        if write_ok(clients[turn % len(clients)]):
            return time.monotonic() - started
        turn += 1
        time.sleep(0.02)
    raise SystemExit("no write acknowledged within 60 s")


def leader_of(clients):
    seen = [health(client) for client in clients]
    return next((c for c, h in zip(clients, seen) if h and h["stores"][0]["leader"]), None)


def node_id(client):
    status = subprocess.run(
        [BINARY, "cluster", "status", "--json", "--server", f"http://{client}"],
        capture_output=True, text=True, check=True)
    members = json.loads(status.stdout)["members"]
    return next(member["node_id"] for member in members if member["client_addr"] == client)


def applied(client):
    return metric(client, 'exesdb_raft_applied_index{store="default"}')


def transfers(root):
    processes, clients, leader = start_cluster(BINARY, root)
    gaps = []
    try:
        for _ in range(ROUNDS):
            leader = wait(lambda: leader_of(clients), "a leader")
            target = next(c for c in clients if c != leader)
            started = time.monotonic()
            moved = subprocess.run(
                [BINARY, "cluster", "transfer-leader", "--server", f"http://{leader}", "--to",
                 str(node_id(target))], capture_output=True, text=True)
            if moved.returncode != 0:
                raise SystemExit(f"transfer-leader failed: {moved.stdout}{moved.stderr}")
            gaps.append(first_write_after(started, [target]))
    finally:
        stop(processes)
    return gaps


def graceful_stops(root):
    gaps = []
    for round_number in range(ROUNDS):
        base = os.path.join(root, f"stop{round_number}")
        processes, clients, leader = start_cluster(BINARY, base)
        try:
            index = clients.index(leader)
            survivors = [c for c in clients if c != leader]
            started = time.monotonic()
            processes[index].send_signal(signal.SIGTERM)
            gaps.append(first_write_after(started, survivors))
            processes[index].wait(timeout=60)
        finally:
            stop(processes)
            shutil.rmtree(base, ignore_errors=True)
    return gaps


def catch_up(root, extra):
    processes, clients, leader = start_cluster(BINARY, root, extra)
    try:
        index = next(i for i, c in enumerate(clients) if c != leader)
        follower = clients[index]
        command = processes[index].args
        processes[index].kill()
        processes[index].wait()
        subprocess.run(
            [BINARY, "bench", "write", "--server", f"http://{leader}", "--clients", "64",
             "--requests", str(EVENTS // 64), "--streams", "1000", "--size", "256"],
            capture_output=True, check=True)
        target = applied(leader)
        started = time.monotonic()
        processes[index] = subprocess.Popen(command, stdout=subprocess.DEVNULL,
                                            stderr=subprocess.DEVNULL)
        wait(lambda: applied(follower) >= target, "the follower caught up", seconds=300)
        seconds = time.monotonic() - started
        snapshot = metric(follower, 'exesdb_raft_snapshot_received_bytes_total{store="default"}')
        return seconds, snapshot
    finally:
        stop(processes)


def summary(gaps):
    return (f"p50 {statistics.median(gaps) * 1000:.0f} ms, max {max(gaps) * 1000:.0f} ms "
            f"over {len(gaps)}")


def main():
    root = tempfile.mkdtemp(prefix="exesdb-recovery-bench-")
    try:
        print(f"graceful transfer-leader to first write: {summary(transfers(os.path.join(root, 't')))}")
        print(f"graceful stop of the leader to first write: {summary(graceful_stops(root))}")
        events = (EVENTS // 64) * 64
        for name, extra in (("log", ()), ("snapshot", ("--raft-snapshot-entries", "1000"))):
            seconds, snapshot = catch_up(os.path.join(root, name), extra)
            print(f"catch-up by {name}: {events} events in {seconds:.2f} s "
                  f"({events / seconds:,.0f} events/s; snapshot bytes received {snapshot:,.0f})")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
