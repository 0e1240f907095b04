//! The comparison runs end to end with tiny loads: exesdb embedded and SQLite always (they
//! need nothing installed), exesdb over gRPC when its binary has been built beside this one,
//! and the limits. PostgreSQL, NATS, UmaDB and SierraDB are pointed at binaries that do not
//! exist, so the test never depends on what the machine has installed and checks that a
//! missing peer is reported as skipped rather than failing the run.

use std::process::Command;

use serde_json::Value;

#[test]
fn a_tiny_comparison_checks_itself_and_skips_missing_peers() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let json_path = dir.path().join("report.json");
    let output = Command::new(env!("CARGO_BIN_EXE_exesdb-compare"))
        .args([
            "--systems",
            "exesdb-embedded,sqlite,exesdb,postgres,nats,umadb,sierradb",
            "--seconds",
            "0.3",
            "--clients",
            "4",
            "--streams",
            "20",
            "--batch",
            "5",
            "--new-streams",
            "200",
            "--connections",
            "2",
            "--limits-seconds",
            "0.1",
            "--pg-bin",
            "/nonexistent/postgresql/bin",
            "--nats-bin",
            "/nonexistent/nats-server",
            "--umadb-bin",
            "/nonexistent/umadb",
            "--sierradb-bin",
            "/nonexistent/sierradb",
            "--dir",
        ])
        .arg(dir.path())
        .arg("--json")
        .arg(&json_path)
        .output()
        .expect("exesdb-compare runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "exit {}\n{stdout}\n{stderr}",
        output.status
    );
    assert!(stdout.contains("self-check: ok"), "{stdout}");
    assert!(stdout.contains("| exesdb embedded"), "{stdout}");

    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(&json_path).expect("the JSON report"))
            .expect("valid JSON");
    assert_eq!(report["self_check"]["ok"], true);
    let systems = report["systems"].as_array().expect("systems");
    let system = |key: &str| {
        systems
            .iter()
            .find(|system| system["system"] == key)
            .unwrap_or_else(|| panic!("{key} is in the report"))
    };
    for key in ["exesdb-embedded", "sqlite"] {
        let run = system(key);
        assert_eq!(run["status"], "ran", "{run}");
        let writes = run["writes"].as_array().expect("writes");
        assert_eq!(writes.len(), 4, "four write loads");
        assert!(
            writes[3]["load"]
                .as_str()
                .is_some_and(|load| load.contains("a new stream each")),
            "the last load writes a new stream each time: {}",
            writes[3]
        );
        let mut acknowledged = 0;
        for write in writes {
            let events = write["events"].as_u64().expect("events");
            assert!(events > 0, "{key} wrote nothing in {write}");
            assert_eq!(write["errors"], 0);
            acknowledged += events;
        }
        assert_eq!(run["read_all"]["events"], acknowledged, "{key} read back");
        assert_eq!(run["self_check"]["ok"], true, "{run}");
    }
    // The committer counts its fsyncs, so events per fsync is known for the embedded store.
    assert!(system("exesdb-embedded")["writes"][0]["events_per_fsync"].as_f64() > Some(0.0));
    let grpc = system("exesdb");
    assert!(
        grpc["status"] == "ran"
            || grpc["status"]
                .as_str()
                .is_some_and(|s| s.starts_with("skipped")),
        "{grpc}"
    );
    assert_eq!(grpc["self_check"]["ok"], true, "{grpc}");
    for key in ["postgres", "nats"] {
        assert_eq!(system(key)["status"], "skipped (not installed)");
    }
    // UmaDB is skipped either way: not installed, or (without the feature `umadb`) not built.
    for key in ["umadb", "sierradb"] {
        let status = system(key)["status"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(status.starts_with("skipped ("), "{key}: {status}");
    }
    let limits = &report["limits"];
    assert!(
        limits["fdatasyncs_per_second"].as_f64() > Some(0.0),
        "{limits}"
    );
    assert!(
        limits["sequential_mb_per_second"].as_f64() > Some(0.0),
        "{limits}"
    );
    assert!(
        limits["noop_grpc_four_connections"]["calls_per_second"].as_f64() > Some(0.0),
        "{limits}"
    );
}
