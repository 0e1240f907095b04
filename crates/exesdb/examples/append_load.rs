//! Embedded append benchmark: concurrent tasks append one event each, durably, to random
//! streams; prints throughput, events per fsync and latency percentiles, then checks its own
//! work (every acknowledged append has a distinct position and is in the log).
//!
//! `cargo run --release -p exesdb --example append_load -- [tasks] [streams] [event bytes] [seconds] [events per append]`
//! Defaults: 64 tasks, 1000 streams, 256 bytes, 10 seconds, 1 event per append.

use std::sync::Arc;
use std::time::{Duration, Instant};

use exesdb::{ExpectedVersion, NewEvent, ReadAllRequest, System, SystemConfig};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .map(|a| a.parse())
        .collect::<Result<_, _>>()?;
    let arg = |i: usize, default: u64| args.get(i).copied().unwrap_or(default);
    let (tasks, streams, size, seconds, batch) =
        (arg(0, 64), arg(1, 1000), arg(2, 256), arg(3, 10), arg(4, 1));
    let dir = tempfile_dir()?;
    let mut config = SystemConfig::new(&dir, "bench");
    config.limits.read_events_max = u64::MAX;
    let system = Arc::new(System::start(config).await?);
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let mut handles = Vec::new();
    for task in 0..tasks {
        let system = system.clone();
        handles.push(tokio::spawn(async move {
            let mut latencies = hdrhistogram::Histogram::<u64>::new(3).expect("histogram");
            let mut positions = Vec::new();
            let mut i = task;
            while Instant::now() < deadline {
                let stream = format!("stream-{}", (i * 7919) % streams);
                i += tasks;
                let events = (0..batch)
                    .map(|_| NewEvent::new("Bench", vec![0xAB; size as usize]))
                    .collect();
                let sent = Instant::now();
                let result = system
                    .api()
                    .append(&stream, ExpectedVersion::Any, events)
                    .await;
                let micros = sent.elapsed().as_micros() as u64;
                let result = result.expect("append");
                latencies.record(micros).expect("record");
                positions.push(result.first_position);
            }
            (latencies, positions)
        }));
    }
    let mut latencies = hdrhistogram::Histogram::<u64>::new(3)?;
    let mut positions = Vec::new();
    for handle in handles {
        let (histogram, task_positions) = handle.await?;
        latencies.add(histogram)?;
        positions.extend(task_positions);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let stats = system.api().commit_stats();
    let appends = positions.len() as u64;
    let events = appends * batch;
    println!(
        "tasks={tasks} streams={streams} event_bytes={size} events_per_append={batch} seconds={elapsed:.1}"
    );
    println!("appends/s        {:.0}", appends as f64 / elapsed);
    println!("events/s         {:.0}", events as f64 / elapsed);
    println!(
        "fsyncs (batches) {}  events per fsync {:.1}",
        stats.batches,
        stats.events as f64 / stats.batches.max(1) as f64
    );
    let per_batch = |nanos: u64| nanos as f64 / 1_000.0 / stats.batches.max(1) as f64;
    println!(
        "committer us     apply {:.0}  write+fsync {:.0}  per batch",
        per_batch(stats.apply_nanos),
        per_batch(stats.write_nanos)
    );
    println!(
        "latency us       p50 {}  p95 {}  p99 {}  p99.9 {}  max {}",
        latencies.value_at_quantile(0.50),
        latencies.value_at_quantile(0.95),
        latencies.value_at_quantile(0.99),
        latencies.value_at_quantile(0.999),
        latencies.max()
    );
    positions.sort_unstable();
    positions.dedup();
    let distinct = positions.len() as u64 == appends;
    let stored = system
        .api()
        .read_all(ReadAllRequest {
            count: u64::MAX,
            ..Default::default()
        })
        .await?
        .len() as u64;
    let check = distinct && stored == events && stats.events == events;
    println!(
        "self-check       {} (distinct positions: {distinct}, stored {stored} of {events} acknowledged)",
        if check { "ok" } else { "FAILED" }
    );
    if let Ok(system) = Arc::try_unwrap(system) {
        system.stop().await;
    }
    std::fs::remove_dir_all(&dir)?;
    if !check {
        return Err("self-check failed".into());
    }
    Ok(())
}

fn tempfile_dir() -> std::io::Result<std::path::PathBuf> {
    let base = std::env::var_os("EXESDB_BENCH_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let dir = base.join(format!("exesdb-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
