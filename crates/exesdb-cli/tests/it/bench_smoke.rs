//! `exesdb bench` runs briefly against a real server so it cannot rot: every mode finishes,
//! prints one JSON object with `--json`, and passes its own self-check.

use std::process::Command;

use crate::common::Server;
use serde_json::Value;

fn bench(server: &Server, args: &[&str]) -> Value {
    let output = Command::new(env!("CARGO_BIN_EXE_exesdb"))
        .arg("bench")
        .args(args)
        .args(["--json", "--server", &server.url()])
        .output()
        .expect("exesdb bench runs");
    let stdout = String::from_utf8(output.stdout).expect("utf-8");
    assert!(
        output.status.success(),
        "bench {args:?} failed: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value = serde_json::from_str(stdout.trim()).expect("one JSON object");
    assert_eq!(report["self_check"]["ok"], true, "{report}");
    report
}

#[test]
fn every_bench_mode_runs_and_checks_itself() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path());

    let any = bench(
        &server,
        &[
            "write",
            "--clients",
            "4",
            "--requests",
            "25",
            "--streams",
            "10",
        ],
    );
    assert_eq!(any["appends"], 100);
    assert!(any["latency"]["p99_us"].as_u64().is_some());
    let exact = bench(
        &server,
        &[
            "write",
            "--clients",
            "4",
            "--requests",
            "10",
            "--streams",
            "2",
            "--batch",
            "3",
            "--expected",
            "exact",
        ],
    );
    assert_eq!(exact["appends"], 40);
    assert_eq!(exact["self_check"]["contiguous_versions"], true);

    let status = Command::new(env!("CARGO_BIN_EXE_exesdb"))
        .args([
            "append",
            "readme",
            "--type",
            "E",
            "--data",
            "{}",
            "--server",
            &server.url(),
        ])
        .output()
        .expect("append runs");
    assert!(status.status.success());
    let read = bench(&server, &["read", "--stream", "readme", "--requests", "3"]);
    assert_eq!(read["events"], 3);

    let all = bench(&server, &["read-all"]);
    assert_eq!(all["events"], 100 + 40 * 3 + 1);
    let together = bench(&server, &["read-all", "--readers", "3"]);
    assert_eq!(together["events_per_reader"], 100 + 40 * 3 + 1);
    assert_eq!(together["events"], 3 * (100 + 40 * 3 + 1));
    assert_eq!(together["self_check"]["same_events"], true);

    let subscribe = bench(&server, &["subscribe", "--rate", "200", "--duration", "1"]);
    assert_eq!(
        subscribe["events"], 192,
        "200 events over 16 writers: 12 each"
    );
    let pid = server.child.id().to_string();
    let fanout = bench(
        &server,
        &[
            "subscribe",
            "--subscribers",
            "3",
            "--idle-seconds",
            "1",
            "--server-pid",
            &pid,
            "--rate",
            "100",
            "--duration",
            "1",
        ],
    );
    assert_eq!(fanout["self_check"]["all_received"], true, "{fanout}");
    assert!(
        fanout["server_cpu_idle_percent"].as_f64().is_some(),
        "idle CPU measured: {fanout}"
    );
    let embedded = bench(
        &server,
        &[
            "subscribe",
            "--embedded",
            "--subscribers",
            "2",
            "--rate",
            "100",
            "--duration",
            "1",
        ],
    );
    assert!(
        embedded["emitter_steps"]
            .as_u64()
            .is_some_and(|steps| steps > 0),
        "{embedded}"
    );

    let catch_up = bench(
        &server,
        &[
            "catch-up",
            "--store-events",
            "5000",
            "--stream-events",
            "50",
            "--runs",
            "1",
        ],
    );
    assert!(catch_up["ratio"].as_f64().is_some(), "{catch_up}");
    for figure in ["by_category_catch_up_ms", "read_all_by_type_ms"] {
        assert!(catch_up[figure].as_f64().is_some(), "{figure}: {catch_up}");
    }
}

/// One stream per aggregate: a server whose pools together hold a few dozen workers takes
/// appends to hundreds of distinct new streams with no refusal (issue 11's first finding was
/// `unavailable` past 65,536 streams).
#[test]
fn appends_to_more_new_streams_than_all_the_pool_limits_are_all_accepted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = crate::common::Server::start_with(
        dir.path(),
        &[
            "--streams-writers-partitions",
            "1",
            "--streams-readers-partitions",
            "1",
            "--snapshots-partitions",
            "1",
            "--stream-workers-per-partition-max",
            "2",
            "--workers-per-partition-max",
            "8",
        ],
    );
    let report = bench(
        &server,
        &[
            "write",
            "--new-streams",
            "--clients",
            "8",
            "--requests",
            "40",
        ],
    );
    assert_eq!(report["appends"], 320, "{report}");
    assert_eq!(report["parameters"]["new_streams"], true);
    assert_eq!(report["errors"], 0, "{report}");
}
