#!/usr/bin/env python3
"""Nodes sharing the load: three stores on a 3-node cluster, each led by another node, written
one at a time and then all at once. Each run is `exesdb bench write` (64 clients x 1 event of
256 B, 1,000 streams, SECONDS seconds) against the store's leader; "all at once" runs one such
bench per store at the same time and adds their rates. Prints, per round, one store alone and
the three together, with the aggregate as a multiple of the store alone.

    bench/cluster_stores.py [EXESDB_BINARY] [ROUNDS] [SECONDS]
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile

from cluster_common import health, start_cluster, stop, wait

BINARY = sys.argv[1] if len(sys.argv) > 1 else "target/release/exesdb"
ROUNDS = int(sys.argv[2]) if len(sys.argv) > 2 else 2
SECONDS = sys.argv[3] if len(sys.argv) > 3 else "10"
STORES = ["alpha", "beta", "gamma"]


def bench_command(client, store):
    return [BINARY, "bench", "write", "--server", f"http://{client}", "--store", store, "--json",
            "--clients", "64", "--seconds", SECONDS, "--streams", "1000", "--size", "256"]


def report_of(stdout, stderr):
    try:
        report = json.loads(stdout)
    except json.JSONDecodeError:
        raise SystemExit(f"the bench printed no report: {stderr.strip()}")
    # The bench exits non-zero when its self-check fails; its JSON still says what it saw.
    if not report["self_check"]["ok"]:
        raise SystemExit(f"the bench's self-check failed: {report['self_check']}")
    return report


def run_together(targets):
    """Runs one bench per (client, store) at the same time; returns their reports."""
    processes = [subprocess.Popen(bench_command(client, store), stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
                 for client, store in targets]
    return [report_of(*process.communicate()) for process in processes]


def spread_leaders(clients):
    """Waits until the three stores are led by three different nodes (the StoreCoordinators
    balance every 2 s); returns {store: leader's client address}."""
    def spread():
        leaders = {}
        for client in clients:
            seen = health(client)
            if not seen or seen["status"] != "ok":
                return None
            for store in seen["stores"]:
                if store["leader"]:
                    leaders[store["store"]] = client
        if sorted(leaders) == STORES and len(set(leaders.values())) == len(STORES):
            return leaders
        return None
    return wait(spread, "each store led by another node", seconds=120)


def cell(report):
    latency = report["latency"]
    return (f"{round(report['events_per_second']):,}/s (p50 {latency['p50_us']} µs, "
            f"p99 {latency['p99_us']} µs, {report['errors']} errors)")


def main():
    root = tempfile.mkdtemp(prefix="exesdb-stores-bench-")
    extra = [arg for store in STORES for arg in ("--store", store)]
    print("| round | alpha alone | alpha, beta, gamma at once | aggregate | aggregate / alone |")
    print("|---|---:|---|---:|---:|")
    for round_number in range(1, ROUNDS + 1):
        processes, clients, _ = start_cluster(BINARY, root, extra)
        try:
            leaders = spread_leaders(clients)
            alone = run_together([(leaders["alpha"], "alpha")])[0]
            together = run_together([(leaders[store], store) for store in STORES])
        finally:
            stop(processes)
            for i in range(3):
                shutil.rmtree(os.path.join(root, f"node{i}"), ignore_errors=True)
        aggregate = sum(report["events_per_second"] for report in together)
        each = "; ".join(f"{store} {cell(report)}" for store, report in zip(STORES, together))
        print(f"| {round_number} | {cell(alone)} | {each} | {round(aggregate):,}/s | "
              f"{aggregate / alone['events_per_second']:.2f}× |", flush=True)
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
