//! Waiting on conditions, shared by the integration tests of the engine and the command: a
//! test waits for what it needs to see, never for a fixed time. And the history checker of
//! the cluster tests ([`history`]).

pub mod history;

use std::future::Future;
use std::time::Duration;

/// How long a test waits for a condition before it fails. Generous: the wait ends as soon as
/// the condition holds, so only a failing test ever waits this long.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// How often a wait looks at its condition again.
pub const POLL_INTERVAL: Duration = Duration::from_millis(5);

/// Waits until `condition` holds, looking every few milliseconds; fails the test, naming
/// `what` was awaited, if it does not hold within `timeout`.
pub async fn wait_until(timeout: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    wait_for(timeout, || {
        std::future::ready(if condition() {
            Ok(())
        } else {
            Err(what.to_string())
        })
    })
    .await;
}

/// Tries `attempt` every few milliseconds until it gives a value; fails the test with the last
/// `Err` (which says what was awaited and what was seen instead) once `timeout` has passed.
pub async fn wait_for<T, F>(timeout: Duration, mut attempt: impl FnMut() -> F) -> T
where
    F: Future<Output = Result<T, String>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let seen = match attempt().await {
            Ok(value) => return value,
            Err(seen) => seen,
        };
        assert!(
            tokio::time::Instant::now() < deadline,
            "not reached within {timeout:?}: {seen}"
        );
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Starts `binary serve` on a free loopback port (unless `extra` gives `--listen`) with its
/// data in `data_dir` (and `extra` arguments), and returns the process with the address it listens on, read from its log.
/// The rest of its log is drained on a thread (so the server never blocks on a full pipe) and
/// shown when `EXESDB_TEST_SERVER_LOG` is set.
pub fn spawn_server(
    binary: &std::path::Path,
    data_dir: &std::path::Path,
    extra: &[&str],
) -> (std::process::Child, String) {
    try_spawn_server(binary, data_dir, extra).unwrap_or_else(|log| {
        panic!("the server exited before logging its address; its log:\n{log}")
    })
}

/// [`spawn_server`], or the log of a server that exited before it logged its address.
pub fn try_spawn_server(
    binary: &std::path::Path,
    data_dir: &std::path::Path,
    extra: &[&str],
) -> Result<(std::process::Child, String), String> {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let mut command = Command::new(binary);
    command.arg("serve");
    // A free port unless the caller names one (a restart that keeps its address).
    if !extra.contains(&"--listen") {
        command.args(["--listen", "127.0.0.1:0"]);
    }
    let mut child = command
        .arg("--data-dir")
        .arg(data_dir)
        .args(extra)
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("exesdb starts");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    let mut before = Vec::new();
    let address = loop {
        let Some(line) = lines.next() else {
            let _ = child.wait();
            return Err(before.join("\n"));
        };
        let line = line.expect("readable log");
        before.push(line.clone());
        if let Some(rest) = line.split(" listen=").nth(1) {
            break rest.split_whitespace().next().expect("address").to_string();
        }
    };
    let show = std::env::var_os("EXESDB_TEST_SERVER_LOG").is_some();
    let server = address.clone();
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            if show {
                eprintln!("[server {server}] {line}");
            }
        }
    });
    Ok((child, address))
}
