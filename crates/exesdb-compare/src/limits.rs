//! The limits of this machine, measured in the same run: how many `fdatasync` calls per
//! second and how many MB/s of sequential writes the run's disk takes, and how many no-op
//! unary gRPC calls per second the RPC layer alone allows from the same client.

use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use exesdb_client::Client;

use crate::load::{Payloads, new_histogram};
use crate::process::ServerProcess;

#[derive(Debug, Clone)]
pub(crate) struct Limits {
    pub fdatasyncs_per_second: f64,
    pub sequential_mb_per_second: f64,
    /// One caller, one call at a time: the ceiling of a sequential client.
    pub noop_one_caller: NoopRate,
    pub noop_one_connection: NoopRate,
    pub noop_four_connections: NoopRate,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct NoopRate {
    pub calls_per_second: f64,
    pub p50_us: u64,
    pub p99_us: u64,
}

pub(crate) async fn measure(dir: &Path, seconds: f64, callers: u64) -> Result<Limits> {
    let duration = Duration::from_secs_f64(seconds);
    let fdatasyncs_per_second = fdatasync_rate(&dir.join("fdatasync.bin"), duration)?;
    let sequential_mb_per_second = sequential_write_rate(&dir.join("sequential.bin"), duration)?;
    let [noop_one_caller, noop_one_connection, noop_four_connections] =
        noop_rates(dir, duration, callers).await?;
    Ok(Limits {
        fdatasyncs_per_second,
        sequential_mb_per_second,
        noop_one_caller,
        noop_one_connection,
        noop_four_connections,
    })
}

/// Appends 256 bytes and `fdatasync`s, in a loop: the rate at which one writer can make
/// small appends durable on this disk.
fn fdatasync_rate(path: &Path, duration: Duration) -> Result<f64> {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    let record = Payloads::new(1).next(256);
    let started = Instant::now();
    let mut syncs = 0u64;
    while started.elapsed() < duration {
        file.write_all(&record)?;
        file.sync_data()?;
        syncs += 1;
    }
    let rate = syncs as f64 / started.elapsed().as_secs_f64();
    std::fs::remove_file(path)?;
    Ok(rate)
}

/// Sequential writes of 1 MiB, synced every 64 MiB and at the end, so the figure is what
/// reaches the disk rather than the page cache.
fn sequential_write_rate(path: &Path, duration: Duration) -> Result<f64> {
    const CHUNK_BYTES: usize = 1 << 20;
    const SYNC_EVERY_CHUNKS: u64 = 64;
    let mut file = std::fs::File::create(path)?;
    let chunk = Payloads::new(2).next(CHUNK_BYTES);
    let started = Instant::now();
    let mut chunks = 0u64;
    while started.elapsed() < duration {
        file.write_all(&chunk)?;
        chunks += 1;
        if chunks.is_multiple_of(SYNC_EVERY_CHUNKS) {
            file.sync_data()?;
        }
    }
    file.sync_all()?;
    let rate = (chunks * CHUNK_BYTES as u64) as f64 / 1e6 / started.elapsed().as_secs_f64();
    std::fs::remove_file(path)?;
    Ok(rate)
}

/// Starts this program's own no-op gRPC server in a process of its own (as `exesdb serve`
/// runs in its own), then calls it from one task, and from `callers` tasks over 1 and over 4
/// connections.
async fn noop_rates(dir: &Path, duration: Duration, callers: u64) -> Result<[NoopRate; 3]> {
    let program = std::env::current_exe().context("cannot find this program")?;
    let mut command = Command::new(program);
    command.arg("noop-server");
    let (server, rest) = ServerProcess::start_and_wait_for(
        "no-op gRPC server",
        command,
        "listen=",
        &dir.join("noop.log"),
    )?;
    let url = format!(
        "http://{}",
        rest.split_whitespace().next().context("no address")?
    );
    let single = noop_rate(&url, 1, 1, duration).await?;
    let one = noop_rate(&url, 1, callers, duration).await?;
    let four = noop_rate(&url, 4, callers, duration).await?;
    server.stop(Duration::from_secs(10))?;
    Ok([single, one, four])
}

async fn noop_rate(
    url: &str,
    connections: u64,
    callers: u64,
    duration: Duration,
) -> Result<NoopRate> {
    let mut pool = Vec::new();
    for _ in 0..connections {
        pool.push(Client::connect(url).await?);
    }
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = Vec::new();
    for caller in 0..callers {
        let client = pool[(caller % connections) as usize].clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = new_histogram()?;
            let mut calls = 0u64;
            while Instant::now() < deadline {
                let sent = Instant::now();
                client.healthy().await?;
                latencies.saturating_record(sent.elapsed().as_micros() as u64);
                calls += 1;
            }
            anyhow::Ok((calls, latencies))
        }));
    }
    let mut latencies = new_histogram()?;
    let mut calls = 0;
    for task in tasks {
        let (task_calls, task_latencies) = task.await??;
        calls += task_calls;
        latencies.add(&task_latencies)?;
    }
    Ok(NoopRate {
        calls_per_second: calls as f64 / started.elapsed().as_secs_f64(),
        p50_us: latencies.value_at_quantile(0.5),
        p99_us: latencies.value_at_quantile(0.99),
    })
}
