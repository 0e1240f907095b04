//! `exesdb serve` as a real process on a free loopback port: health, then a clean stop.

use crate::common::{Server, http_get};

use std::process::Command;

fn start_server(data_dir: &std::path::Path) -> (Server, String) {
    let server = Server::start(data_dir);
    let address = server.address.clone();
    (server, address)
}

#[test]
fn serve_answers_health_and_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (child, address) = start_server(dir.path());
    let (status, body) = http_get(&address, "/health");
    assert_eq!(status, 200, "{body}");
    let health: serde_json::Value = serde_json::from_str(&body).expect("json body");
    assert_eq!(health["status"], "ok");
    assert_eq!(health["mode"], "single");
    assert_eq!(health["stores"][0]["store"], "default");
    assert!(dir.path().join("default").join("FORMAT").exists());

    let status = child.terminate();
    assert_eq!(status.code(), Some(0), "exit status after SIGTERM");

    // The data directory opens again: the stop released it.
    let (_again, address) = start_server(dir.path());
    assert_eq!(http_get(&address, "/health").0, 200);
}

/// The server prints `listen=` once it watches its stop signals: a SIGTERM sent the moment
/// the line appears stops it cleanly (it used to kill it when the signal beat the accept loop).
#[test]
fn a_sigterm_the_moment_the_server_is_up_stops_it_cleanly() {
    for _ in 0..5 {
        let dir = tempfile::tempdir().expect("tempdir");
        let (child, _) = start_server(dir.path());
        assert_eq!(
            child.terminate().code(),
            Some(0),
            "exit status after SIGTERM"
        );
    }
}

#[test]
fn a_data_directory_of_a_newer_format_is_refused_with_a_clear_message() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = dir.path().join("default");
    std::fs::create_dir_all(&store).expect("mkdir");
    std::fs::write(store.join("FORMAT"), "exesdb-format 99\n").expect("write");
    let output = Command::new(env!("CARGO_BIN_EXE_exesdb"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .output()
        .expect("runs");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("format version"), "{stderr}");
}
