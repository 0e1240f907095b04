//! `exesdb serve` in its own process on a loopback port, loaded over gRPC by the same client
//! library applications use.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use exesdb_client::{Client, Direction, ReadFrom};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_stream::StreamExt;

use super::exesdb_embedded::expected_version;
use crate::load::{self, Appender, AsyncFsyncCounter, LoadSettings, ReadCheck, SystemRun, Target};
use crate::process::ServerProcess;

pub(crate) async fn run(binary: &Path, dir: &Path, settings: &LoadSettings) -> Result<SystemRun> {
    let mut command = Command::new(binary);
    command
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.join("data"))
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1");
    let (server, rest) =
        ServerProcess::start_and_wait_for("exesdb serve", command, "listen=", &dir.join("log"))?;
    let address = rest
        .split_whitespace()
        .next()
        .context("no address after listen=")?
        .to_string();
    let url = format!("http://{address}");
    let mut pool = Vec::new();
    for _ in 0..settings.connections.max(1) {
        pool.push(Client::connect(&url).await?);
    }
    let target = Grpc { pool };
    let fsyncs = CommitBatches { address };
    let outcome = load::run_all(&target, settings, fsyncs, read_all(&url)).await;
    drop(target);
    server.stop(Duration::from_secs(30))?;
    outcome
}

struct Grpc {
    pool: Vec<Client>,
}

impl Target for Grpc {
    type Appender = GrpcAppender;

    async fn appender(&self, client: u64) -> Result<GrpcAppender> {
        Ok(GrpcAppender {
            client: self.pool[client as usize % self.pool.len()].clone(),
        })
    }
}

struct GrpcAppender {
    client: Client,
}

impl Appender for GrpcAppender {
    async fn append(
        &mut self,
        stream: &str,
        stream_length: u64,
        events: Vec<Vec<u8>>,
    ) -> Result<()> {
        let events = events
            .into_iter()
            .map(|data| exesdb_client::NewEvent::new("Bench", data))
            .collect();
        let appended = self
            .client
            .append(stream, expected_version(stream_length), events)
            .await?;
        if appended.first_event_number != stream_length {
            bail!(
                "appended at event number {} instead of {stream_length}",
                appended.first_event_number
            );
        }
        Ok(())
    }
}

/// One client reads all of `$all` (the server pages and streams it).
async fn read_all(url: &str) -> Result<load::ReadResult> {
    let client = Client::connect(url).await?;
    let mut check = ReadCheck::start();
    let mut events =
        std::pin::pin!(client.read_all(ReadFrom::Start, None, Direction::Forward, None, &[]));
    while let Some(event) = events.next().await {
        let event = event?;
        check.event(event.position, &event.stream_id, Some(event.event_number));
    }
    Ok(check.finish())
}

/// The server's commit batches (one fsync each), from the count of its
/// `exesdb_commit_batch_events` metric on `GET /metrics`.
struct CommitBatches {
    address: String,
}

impl AsyncFsyncCounter for CommitBatches {
    async fn count(&mut self) -> Option<u64> {
        let text = http_get(&self.address, "/metrics").await.ok()?;
        let batches = text
            .lines()
            .filter(|line| line.starts_with("exesdb_commit_batch_events_count"))
            .filter_map(|line| line.split_whitespace().last()?.parse::<f64>().ok())
            .sum::<f64>();
        Some(batches as u64)
    }

    async fn hops(&mut self) -> Vec<load::HopSum> {
        let Ok(text) = http_get(&self.address, "/metrics").await else {
            return Vec::new();
        };
        let mut sums: Vec<load::HopSum> = Vec::new();
        for line in text.lines() {
            let (is_nanos, rest) =
                if let Some(rest) = line.strip_prefix("exesdb_append_hop_nanoseconds_total{") {
                    (true, rest)
                } else if let Some(rest) = line.strip_prefix("exesdb_append_hop_requests_total{") {
                    (false, rest)
                } else {
                    continue;
                };
            let Some((labels, value)) = rest.split_once("} ") else {
                continue;
            };
            let Some(name) = labels
                .split(',')
                .find_map(|label| label.strip_prefix("hop=\""))
                .map(|name| name.trim_end_matches('"').to_string())
            else {
                continue;
            };
            let Ok(value) = value.trim().parse::<f64>() else {
                continue;
            };
            let index = match sums.iter().position(|hop| hop.name == name) {
                Some(index) => index,
                None => {
                    sums.push(load::HopSum {
                        name,
                        nanos: 0.0,
                        requests: 0.0,
                    });
                    sums.len() - 1
                }
            };
            if is_nanos {
                sums[index].nanos += value;
            } else {
                sums[index].requests += value;
            }
        }
        sums
    }
}

/// A plain HTTP/1.0 GET, so the body comes unchunked (the metrics page is all this tool
/// reads over HTTP).
async fn http_get(address: &str, path: &str) -> Result<String> {
    let mut stream = tokio::net::TcpStream::connect(address).await?;
    let request = format!("GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response)).await??;
    let response = String::from_utf8_lossy(&response).into_owned();
    let status = response.split_whitespace().nth(1);
    if status != Some("200") {
        bail!("GET {path} did not answer 200");
    }
    Ok(response)
}
