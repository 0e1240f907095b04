#!/usr/bin/env python3
"""Three nodes on this machine against one, in the same run: `exesdb bench write` (64 clients
x 1 event of 256 B, 1,000 streams) on a single-mode node, then on a 3-node cluster through its
leader and through a follower (which forwards to the leader), ROUNDS times alternating. Prints
events/s, p50 and p99 of each, the cluster's rate as a share of the single node's, and, for
each node, the Raft log entries (here one 1-event append each) per log fsync during the run
through the leader.

    bench/cluster_write.py [EXESDB_BINARY] [ROUNDS] [REQUESTS_PER_CLIENT]
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile

from cluster_common import free_port, health, metric, start_cluster, stop, wait

BINARY = sys.argv[1] if len(sys.argv) > 1 else "target/release/exesdb"
ROUNDS = int(sys.argv[2]) if len(sys.argv) > 2 else 2
REQUESTS = sys.argv[3] if len(sys.argv) > 3 else "500"


def cpu_seconds(pid):
    """User + system CPU seconds a process has used so far (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_per_1k_events(pids, run):
    """Runs `run`; returns its result and each process's CPU milliseconds per 1,000 events."""
    before = [cpu_seconds(pid) for pid in pids]
    result = run()
    events = 64 * int(REQUESTS)
    return result, [(cpu_seconds(pid) - b) * 1e6 / events for pid, b in zip(pids, before)]


def bench(client):
    result = subprocess.run(
        [BINARY, "bench", "write", "--server", f"http://{client}", "--json", "--clients", "64",
         "--requests", REQUESTS, "--streams", "1000", "--size", "256"],
        capture_output=True, text=True)
    # The bench exits non-zero when its self-check fails; its JSON still says what it saw.
    report = json.loads(result.stdout)
    if not report["self_check"]["ok"]:
        raise SystemExit(f"the bench's self-check failed: {report['self_check']}")
    return report


def figures(report):
    latency = report["latency"]
    return (round(report["events_per_second"]), latency["p50_us"], latency["p99_us"],
            report["errors"])


def single(root):
    client = f"127.0.0.1:{free_port()}"
    data = os.path.join(root, "single")
    process = subprocess.Popen([BINARY, "serve", "--data-dir", data, "--listen", client],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait(lambda: health(client), "the single node")
        report, cpu = cpu_per_1k_events([process.pid], lambda: bench(client))
        return figures(report), cpu
    finally:
        process.kill()
        process.wait()
        shutil.rmtree(data, ignore_errors=True)


def log_counters(clients):
    return [(metric(c, 'exesdb_raft_log_entries_total{store="default"}'),
             metric(c, 'exesdb_raft_log_syncs_total{store="default"}')) for c in clients]


def cluster(root):
    processes, clients, leader = start_cluster(BINARY, root)
    try:
        follower = next(c for c in clients if c != leader)
        # The leader first in the per-node figures.
        ordered = [leader] + [c for c in clients if c != leader]
        pids = [processes[clients.index(c)].pid for c in ordered]
        before = log_counters(ordered)
        report, cpu = cpu_per_1k_events(pids, lambda: bench(leader))
        after = log_counters(ordered)
        per_fsync = [(a[0] - b[0]) / max(a[1] - b[1], 1) for a, b in zip(after, before)]
        return figures(report), figures(bench(follower)), per_fsync, cpu
    finally:
        stop(processes)
        for i in range(3):
            shutil.rmtree(os.path.join(root, f"node{i}"), ignore_errors=True)


def main():
    root = tempfile.mkdtemp(prefix="exesdb-cluster-bench-")
    print("| round | single node | cluster via leader | cluster via follower | leader / single "
          "| entries per log fsync (leader, followers) "
          "| server CPU ms per 1k events (single; leader, followers) |")
    print("|---|---:|---:|---:|---:|---|---|")
    for round_number in range(1, ROUNDS + 1):
        one, single_cpu = single(root)
        via_leader, via_follower, per_fsync, cluster_cpu = cluster(root)
        cell = lambda f: f"{f[0]:,}/s (p50 {f[1]} µs, p99 {f[2]} µs, {f[3]} errors)"
        fsyncs = ", ".join(f"{n:.1f}" for n in per_fsync)
        cpu = f"{single_cpu[0]:.0f}; " + ", ".join(f"{n:.0f}" for n in cluster_cpu)
        print(f"| {round_number} | {cell(one)} | {cell(via_leader)} | {cell(via_follower)} | "
              f"{via_leader[0] / one[0]:.0%} | {fsyncs} | {cpu} |", flush=True)
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
