"""What the cluster bench scripts share: free loopback ports, `/health`, and a 3-node cluster
of `exesdb serve --mode cluster` processes started and waited for."""

import json
import os
import socket
import subprocess
import time
import urllib.request


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


def metric(client, name):
    """The sum of the `/metrics` samples named `name` whose labels include every one given in
    `name` after the metric's name (`exesdb_x{store="a"}` matches `exesdb_x{peer="2",store="a"}`),
    or 0 when there is none."""
    base, _, wanted = name.partition("{")
    wanted = [label for label in wanted.rstrip("}").split(",") if label]
    try:
        with urllib.request.urlopen(f"http://{client}/metrics", timeout=2) as reply:
            text = reply.read().decode()
    except Exception:
        return 0.0
    total = 0.0
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(base):
            continue
        sample, _, value = line.rpartition(" ")
        sample_base, _, labels = sample.partition("{")
        if sample_base != base:
            continue
        present = labels.rstrip("}").split(",")
        if all(label in present for label in wanted):
            total += float(value)
    return total


def wait(condition, what, seconds=60):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise SystemExit(f"not reached within {seconds} s: {what}")


def start_cluster(binary, root, extra=()):
    """Starts three nodes with their data under `root`; returns (processes, client addresses,
    the leader's client address of the first store) once every node is healthy."""
    peers = [f"127.0.0.1:{free_port()}" for _ in range(3)]
    clients = [f"127.0.0.1:{free_port()}" for _ in range(3)]
    processes = [subprocess.Popen(
        [binary, "serve", "--mode", "cluster", "--cluster-size", "3", *extra,
         "--data-dir", os.path.join(root, f"node{i}"), "--listen", clients[i],
         "--peer-listen", peers[i], "--seeds", ",".join(peers)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for i in range(3)]

    def formed():
        seen = [health(client) for client in clients]
        if all(h and h["status"] == "ok" for h in seen):
            return seen
        return None

    seen = wait(formed, "the cluster formed")
    leader = next(c for c, h in zip(clients, seen) if h["stores"][0]["leader"])
    return processes, clients, leader


def stop(processes):
    for process in processes:
        process.kill()
        process.wait()
