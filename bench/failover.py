#!/usr/bin/env python3
"""Failover as a client sees it: three `exesdb serve --mode cluster` nodes, one writer appending
one event at a time (each with its own event id, kept through retries, so a retry after a lost
answer is recognised), and the leader SIGKILLed ROUNDS times. For each kill it prints the gap
between the last acknowledgement before the kill and the first after it, then p50 and max.
At the end every acknowledged event must be stored once on every node.

    bench/failover.py [EXESDB_BINARY] [ROUNDS]     # defaults: target/release/exesdb, 10
"""

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid

from cluster_common import free_port, health

BINARY = sys.argv[1] if len(sys.argv) > 1 else "target/release/exesdb"
ROUNDS = int(sys.argv[2]) if len(sys.argv) > 2 else 10


class Node:
    def __init__(self, index, peers, clients, root):
        self.index = index
        self.peers = peers
        self.client = clients[index]
        self.dir = os.path.join(root, f"node{index}")
        self.process = None

    def start(self):
        self.process = subprocess.Popen(
            [BINARY, "serve", "--mode", "cluster", "--cluster-size", "3",
             "--data-dir", self.dir, "--listen", self.client,
             "--peer-listen", self.peers[self.index], "--seeds", ",".join(self.peers)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def kill(self):
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def health(self):
        return health(self.client)


def wait_until(condition, what, seconds=60):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = condition()
        if value is not None:
            return value
        time.sleep(0.05)
    raise SystemExit(f"not reached within {seconds} s: {what}")


def leader(nodes):
    def agreed():
        seen = [node.health() for node in nodes if node.process and node.process.poll() is None]
        leaders = {h["stores"][0].get("leader_client_addr") for h in seen if h}
        if len(seen) == len([n for n in nodes if n.process and n.process.poll() is None]) \
                and all(seen) and len(leaders) == 1 and None not in leaders:
            addr = leaders.pop()
            return next(node for node in nodes if node.client == addr)
        return None
    return wait_until(agreed, "one leader every running node agrees on")


def main():
    root = tempfile.mkdtemp(prefix="exesdb-failover-")
    peers = [f"127.0.0.1:{free_port()}" for _ in range(3)]
    clients = [f"127.0.0.1:{free_port()}" for _ in range(3)]
    nodes = [Node(i, peers, clients, root) for i in range(3)]
    for node in nodes:
        node.start()
    leader(nodes)
    acks = []  # (time, event id, position)
    stop = threading.Event()

    def writer():
        turn = 0
        while not stop.is_set():
            event_id = str(uuid.uuid4())
            while not stop.is_set():
                node = nodes[turn % 3]
                result = subprocess.run(
                    [BINARY, "append", "failover", "--type", "Written", "--data", "{}",
                     "--id", event_id, "--json", "--server", f"http://{node.client}"],
                    capture_output=True, text=True)
                if result.returncode == 0:
                    acks.append((time.monotonic(), event_id, json.loads(result.stdout)["first_position"]))
                    break
                turn += 1

    thread = threading.Thread(target=writer)
    thread.start()
    gaps = []
    for round_number in range(ROUNDS):
        wait_until(lambda: True if len(acks) > 20 * (round_number + 1) else None, "acks before the kill")
        victim = leader(nodes)
        before = len(acks)
        killed_at = time.monotonic()
        victim.kill()
        wait_until(lambda: True if len(acks) > before else None, "an ack after the kill")
        last_before = acks[before - 1][0]
        first_after = acks[before][0]
        gap = first_after - last_before
        gaps.append(gap)
        print(f"kill {round_number + 1}: gap {gap * 1000:.0f} ms "
              f"(first ack {1000 * (first_after - killed_at):.0f} ms after the kill)", flush=True)
        victim.start()
        wait_until(lambda: victim.health() and victim.health()["status"] == "ok" or None,
                   "the killed node back")
    stop.set()
    thread.join()
    gaps.sort()
    print(f"rounds {len(gaps)}, acks {len(acks)}, gap p50 {gaps[len(gaps) // 2] * 1000:.0f} ms, "
          f"max {gaps[-1] * 1000:.0f} ms")
    # Every acknowledged event is stored once, at its acknowledged position, on every node.
    wanted = {event_id: position for _, event_id, position in acks}
    for node in nodes:
        def complete():
            result = subprocess.run(
                [BINARY, "read-all", "--json", "--server", f"http://{node.client}"],
                capture_output=True, text=True)
            events = [json.loads(line) for line in result.stdout.splitlines() if line]
            return events if len(events) >= len(wanted) else None
        events = wait_until(complete, f"node {node.index} holds every acknowledged event")
        stored = {e["event_id"]: e["position"] for e in events}
        assert len(stored) == len(events), "an event stored twice"
        for event_id, position in wanted.items():
            assert stored.get(event_id) == position, f"{event_id} not at {position} on node {node.index}"
    print("self-check: every acknowledged event is on every node, once, where acknowledged")
    for node in nodes:
        node.kill()


if __name__ == "__main__":
    main()
