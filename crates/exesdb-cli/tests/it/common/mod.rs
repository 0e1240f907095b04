//! A real `exesdb serve` process on a free loopback port, with its own data directory, and
//! waits on conditions (a test waits for what it needs to see, never for a fixed time).

// Several test binaries include this module, each using a part of it.
#![allow(dead_code, unused_imports)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub(crate) use exesdb_test_support::{PATIENCE, wait_for};

pub(crate) struct Server {
    pub child: Child,
    pub address: String,
    pub data_dir: PathBuf,
}

impl Server {
    pub(crate) fn start(data_dir: &Path) -> Server {
        Server::start_with(data_dir, &[])
    }

    pub(crate) fn start_with(data_dir: &Path, extra: &[&str]) -> Server {
        let (child, address) = exesdb_test_support::spawn_server(
            Path::new(env!("CARGO_BIN_EXE_exesdb")),
            data_dir,
            extra,
        );
        Server {
            child,
            address,
            data_dir: data_dir.to_path_buf(),
        }
    }

    pub(crate) fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    pub(crate) async fn client(&self) -> exesdb_client::Client {
        exesdb_client::Client::connect(&self.url())
            .await
            .expect("client connects")
    }

    /// SIGTERM, then the exit status.
    pub(crate) fn terminate(mut self) -> std::process::ExitStatus {
        let sent = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(sent.success());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "server did not exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A plain HTTP/1.1 GET on the server's port: the status code and the body.
pub(crate) fn http_get(address: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(address).expect("connect");
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .expect("timeout");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("response");
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status code");
    let body = response.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (status, body)
}

/// The body of a GET that must answer 200.
pub(crate) fn http_get_ok(address: &str, path: &str) -> String {
    let (status, body) = http_get(address, path);
    assert_eq!(status, 200, "{path}: {body}");
    body
}

/// The value of a Prometheus counter or gauge in `/metrics` (0 when absent).
pub(crate) fn metric(address: &str, series: &str) -> f64 {
    http_get_ok(address, "/metrics")
        .lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}
