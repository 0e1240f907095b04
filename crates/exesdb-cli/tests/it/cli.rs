//! The command line against a real server: the `--json` shapes of `spec/cli.md` and the exit
//! statuses (0 success, 1 refused by the server, 2 usage or connection error).

use std::io::Write;
use std::process::{Command, Stdio};

use crate::common::{Server, http_get_ok};
use serde_json::{Value, json};

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn lines(&self) -> Vec<Value> {
        self.stdout
            .lines()
            .map(|line| {
                serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
            })
            .collect()
    }

    fn one(&self) -> Value {
        let lines = self.lines();
        assert_eq!(lines.len(), 1, "{}", self.stdout);
        lines.into_iter().next().expect("one line")
    }
}

fn exesdb(server: &Server, args: &[&str], stdin: Option<&str>) -> Run {
    let mut child = Command::new(env!("CARGO_BIN_EXE_exesdb"))
        .args(args)
        .env("EXESDB_SERVER", server.url())
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("exesdb runs");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes())
            .expect("write stdin");
    }
    let output = child.wait_with_output().expect("exits");
    Run {
        code: output.status.code().expect("exit code"),
        stdout: String::from_utf8(output.stdout).expect("utf-8"),
        stderr: String::from_utf8(output.stderr).expect("utf-8"),
    }
}

#[test]
fn client_commands_print_the_documented_json_and_exit_codes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path());

    let run = exesdb(
        &server,
        &[
            "append",
            "order-1",
            "--type",
            "OrderPlaced",
            "--data",
            r#"{"total":42}"#,
            "--expected",
            "no-stream",
            "--json",
        ],
        None,
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        run.one(),
        json!({"stream_id":"order-1","first_event_number":0,"last_event_number":0,"first_position":0,"last_position":0})
    );

    // Refused by the server: exit 1, the error object on stdout.
    let run = exesdb(
        &server,
        &[
            "append",
            "order-1",
            "--type",
            "OrderPlaced",
            "--data",
            "{}",
            "--expected",
            "no-stream",
            "--json",
        ],
        None,
    );
    assert_eq!(run.code, 1);
    let error = run.one();
    assert_eq!(error["error"]["code"], "wrong_expected_version");
    assert_eq!(error["error"]["current"], 0);
    assert_eq!(error["error"]["expected"], "no_stream");

    // NDJSON on stdin, with an id and metadata, at an exact expected version.
    let id = "0190b3c4-0000-7000-8000-000000000001";
    let input = format!(
        "{{\"event_type\":\"Paid\",\"data\":{{\"amount\":42}},\"metadata\":{{\"by\":\"me\"}},\"event_id\":\"{id}\"}}\n{{\"event_type\":\"Shipped\",\"data\":null}}\n"
    );
    let run = exesdb(
        &server,
        &["append", "order-1", "--expected", "0", "--json"],
        Some(&input),
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.one()["last_event_number"], 2);
    let run = exesdb(
        &server,
        &[
            "append",
            "order-2",
            "--type",
            "X",
            "--data",
            "@/nonexistent/file",
            "--json",
        ],
        None,
    );
    assert_eq!(run.code, 2, "unreadable @FILE is a usage error");

    let run = exesdb(&server, &["read", "order-1", "--json"], None);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let events = run.lines();
    assert_eq!(events.len(), 3);
    let paid = &events[1];
    let keys: Vec<&str> = paid
        .as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .collect();
    let mut expected_keys = vec![
        "stream_id",
        "event_number",
        "position",
        "event_id",
        "event_type",
        "data",
        "metadata",
        "data_content_type",
        "metadata_content_type",
        "created",
    ];
    expected_keys.sort_unstable();
    let mut keys_sorted = keys.clone();
    keys_sorted.sort_unstable();
    assert_eq!(keys_sorted, expected_keys);
    assert_eq!(paid["event_id"], id);
    assert_eq!(paid["data"], json!({"amount": 42}));
    assert_eq!(paid["metadata"], json!({"by": "me"}));
    assert_eq!(paid["data_content_type"], "application/json");
    let created = paid["created"].as_str().expect("created");
    assert!(
        created.ends_with('Z') && created.len() == "2026-11-27T10:00:00.123456Z".len(),
        "{created}"
    );

    let run = exesdb(
        &server,
        &[
            "read",
            "order-1",
            "--from",
            "2",
            "--count",
            "5",
            "--backward",
            "--json",
        ],
        None,
    );
    let numbers: Vec<u64> = run
        .lines()
        .iter()
        .map(|e| e["event_number"].as_u64().expect("number"))
        .collect();
    assert_eq!(numbers, vec![2, 1, 0]);
    let run = exesdb(&server, &["read", "order-1"], None);
    assert_eq!(run.code, 0);
    assert!(
        run.stdout.contains("OrderPlaced") && run.stdout.contains("NUMBER"),
        "{}",
        run.stdout
    );

    exesdb(
        &server,
        &["append", "cart-1", "--type", "Added", "--data", "1"],
        None,
    );
    let run = exesdb(
        &server,
        &["read-all", "--json", "--event-type", "Added"],
        None,
    );
    assert_eq!(run.lines().len(), 1);
    let run = exesdb(
        &server,
        &[
            "read-all",
            "--json",
            "--stream-prefix",
            "order-",
            "--from",
            "1",
            "--count",
            "1",
        ],
        None,
    );
    assert_eq!(run.one()["position"], 1);

    let run = exesdb(&server, &["version", "order-1"], None);
    assert_eq!(run.stdout.trim(), "2");
    let run = exesdb(&server, &["version", "nothing-here"], None);
    assert_eq!((run.code, run.stdout.trim()), (0, "-1"));
    let run = exesdb(&server, &["streams", "--json"], None);
    assert_eq!(
        run.lines(),
        vec![
            json!({"stream_id":"cart-1","version":0}),
            json!({"stream_id":"order-1","version":2})
        ]
    );
    let run = exesdb(&server, &["stores", "--json"], None);
    assert_eq!(run.one(), json!({"store_id": "default"}));

    let run = exesdb(
        &server,
        &[
            "snapshot",
            "record",
            "order",
            "order-1",
            "2",
            "--data",
            r#"{"state":"shipped"}"#,
            "--json",
        ],
        None,
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let run = exesdb(
        &server,
        &[
            "snapshot",
            "read",
            "order",
            "order-1",
            "--at-or-below",
            "5",
            "--json",
        ],
        None,
    );
    let snapshot = run.one();
    assert_eq!(
        (snapshot["version"].clone(), snapshot["data"].clone()),
        (json!(2), json!({"state":"shipped"}))
    );
    let run = exesdb(&server, &["snapshot", "list", "--json"], None);
    assert_eq!(run.lines().len(), 1);
    let run = exesdb(
        &server,
        &["snapshot", "delete", "order", "order-1", "2", "--json"],
        None,
    );
    assert_eq!(run.code, 0);
    let run = exesdb(
        &server,
        &["snapshot", "read", "order", "order-1", "--json"],
        None,
    );
    assert_eq!(
        (run.code, run.one()["error"]["code"].clone()),
        (1, json!("snapshot_not_found"))
    );

    let run = exesdb(&server, &["read", "missing", "--json"], None);
    assert_eq!(
        (run.code, run.one()["error"]["code"].clone()),
        (1, json!("stream_not_found"))
    );
    let run = exesdb(
        &server,
        &["append", "$all", "--type", "X", "--data", "{}", "--json"],
        None,
    );
    assert_eq!(
        (run.code, run.one()["error"]["code"].clone()),
        (1, json!("invalid_argument"))
    );
    let run = exesdb(
        &server,
        &["version", "x", "--store", "nope", "--json"],
        None,
    );
    assert_eq!(
        (run.code, run.one()["error"]["code"].clone()),
        (1, json!("store_not_found"))
    );

    // Usage errors and an unreachable server: exit 2.
    let run = exesdb(&server, &["append", "s", "--data", "{}"], None);
    assert_eq!(run.code, 2);
    let run = exesdb(
        &server,
        &["append", "s", "--type", "X", "--data", "not json"],
        None,
    );
    assert_eq!(run.code, 2);
    let run = exesdb(
        &server,
        &["version", "x", "--server", "http://127.0.0.1:1", "--json"],
        None,
    );
    assert_eq!(
        (run.code, run.one()["error"]["code"].clone()),
        (2, json!("connection_error"))
    );

    // The tree, in the spec's notation and as JSON.
    let run = exesdb(&server, &["tree"], None);
    assert!(
        run.stdout.starts_with(
            "ExESDB.System [S] (:rest_for_one)\n├── ExESDB.CoreSystem [S] (:one_for_all)"
        ),
        "{}",
        run.stdout
    );
    let tree = exesdb(&server, &["tree", "--json"], None).one();
    assert_eq!(
        (
            tree["name"].clone(),
            tree["kind"].clone(),
            tree["strategy"].clone()
        ),
        (json!("ExESDB.System"), json!("S"), json!("rest_for_one"))
    );
    assert_eq!(tree["restarts"], 0);
    assert_eq!(tree["children"][1]["name"], "ExESDB.GatewaySystem");
}

#[test]
fn http_metrics_and_health_share_the_grpc_port() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path());
    exesdb(
        &server,
        &["append", "m", "--type", "X", "--data", "{}"],
        None,
    );
    exesdb(&server, &["read", "m"], None);
    let metrics = http_get_ok(&server.address, "/metrics");
    for name in [
        "exesdb_appends_total",
        "exesdb_events_appended_total",
        "exesdb_append_latency_seconds_bucket",
        "exesdb_commit_batch_events_bucket",
        "exesdb_reads_total",
        "exesdb_active_workers",
        "exesdb_supervisor_restarts",
        "exesdb_gateway_in_flight",
    ] {
        assert!(metrics.contains(name), "{name} missing from:\n{metrics}");
    }
    assert!(
        metrics.contains("exesdb_appends_total{store=\"default\"} 1"),
        "{metrics}"
    );
    let health: Value =
        serde_json::from_str(&http_get_ok(&server.address, "/health")).expect("json");
    assert_eq!(health["status"], "ok");
}
