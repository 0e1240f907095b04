//! Load over gRPC against a running `exesdb serve`, checking its own work.
//!
//! `cargo run --release -p exesdb-client --example grpc_load -- write URL [clients] [streams] [event bytes] [seconds] [events per append] [connections]`
//! `cargo run --release -p exesdb-client --example grpc_load -- read-all URL`
//!
//! `write`: each client appends to random streams with expected version `any` and waits for the
//! durable acknowledgement; prints appends/s, events/s and latency percentiles, then checks that
//! every acknowledged append got a distinct position. `read-all`: reads the whole `$all`
//! stream once and prints events/s, checking positions are gapless.

use std::time::{Duration, Instant};

// The same allocator as the server, so the client is not the slower side of the measurement.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use exesdb_client::{Client, Direction, ExpectedVersion, NewEvent, ReadFrom};
use tokio_stream::StreamExt;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mode = args.first().map(String::as_str).unwrap_or("write");
    let url = args
        .get(1)
        .cloned()
        .unwrap_or_else(|| "http://127.0.0.1:2113".into());
    let number = |i: usize, default: u64| -> Result<u64, Box<dyn std::error::Error>> {
        Ok(match args.get(i) {
            Some(text) => text.parse()?,
            None => default,
        })
    };
    match mode {
        "write" => {
            write(
                &url,
                number(2, 64)?,
                number(3, 1000)?,
                number(4, 256)?,
                number(5, 10)?,
                number(6, 1)?,
                number(7, 4)?,
            )
            .await
        }
        "read-all" => read_all(&url).await,
        other => Err(format!("unknown mode {other:?}: write or read-all").into()),
    }
}

async fn write(
    url: &str,
    clients: u64,
    streams: u64,
    size: u64,
    seconds: u64,
    batch: u64,
    connections: u64,
) -> Result<(), Box<dyn std::error::Error>> {
    let mut pool = Vec::new();
    for _ in 0..connections.max(1) {
        pool.push(Client::connect(url).await?);
    }
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for task in 0..clients {
        let client = pool[(task % connections.max(1)) as usize].clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = hdrhistogram::Histogram::<u64>::new(3).expect("histogram");
            let mut positions = Vec::new();
            let mut errors = 0u64;
            let mut i = task;
            while Instant::now() < deadline {
                let stream = format!("stream-{}", (i * 7919) % streams);
                i += clients;
                let events = (0..batch)
                    .map(|_| NewEvent::new("Bench", vec![0xAB; size as usize]))
                    .collect();
                let sent = Instant::now();
                match client.append(&stream, ExpectedVersion::Any, events).await {
                    Ok(result) => {
                        latencies
                            .record(sent.elapsed().as_micros() as u64)
                            .expect("record");
                        positions.push(result.first_position);
                    }
                    Err(_) => errors += 1,
                }
            }
            (latencies, positions, errors)
        }));
    }
    let mut latencies = hdrhistogram::Histogram::<u64>::new(3)?;
    let mut positions = Vec::new();
    let mut errors = 0;
    for task in tasks {
        let (histogram, task_positions, task_errors) = task.await?;
        latencies.add(histogram)?;
        positions.extend(task_positions);
        errors += task_errors;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let appends = positions.len() as u64;
    println!(
        "clients={clients} connections={connections} streams={streams} event_bytes={size} events_per_append={batch} seconds={elapsed:.1}"
    );
    println!("appends/s   {:.0}", appends as f64 / elapsed);
    println!("events/s    {:.0}", (appends * batch) as f64 / elapsed);
    println!(
        "latency us  p50 {}  p95 {}  p99 {}  p99.9 {}  max {}",
        latencies.value_at_quantile(0.5),
        latencies.value_at_quantile(0.95),
        latencies.value_at_quantile(0.99),
        latencies.value_at_quantile(0.999),
        latencies.max()
    );
    positions.sort_unstable();
    positions.dedup();
    let ok = positions.len() as u64 == appends && errors == 0;
    println!(
        "self-check  {} (distinct positions for {appends} acknowledged appends, {errors} errors)",
        if ok { "ok" } else { "FAILED" }
    );
    if ok {
        Ok(())
    } else {
        Err("self-check failed".into())
    }
}

async fn read_all(url: &str) -> Result<(), Box<dyn std::error::Error>> {
    let client = Client::connect(url).await?;
    let started = Instant::now();
    let mut events =
        std::pin::pin!(client.read_all(ReadFrom::Start, None, Direction::Forward, None, &[]));
    let mut count = 0u64;
    let mut gapless = true;
    while let Some(event) = events.next().await {
        let event = event?;
        gapless &= event.position == count;
        count += 1;
    }
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "read-all    {count} events in {elapsed:.2} s: {:.0} events/s",
        count as f64 / elapsed
    );
    println!(
        "self-check  {}",
        if gapless {
            "ok (positions gapless from 0)"
        } else {
            "FAILED"
        }
    );
    if gapless {
        Ok(())
    } else {
        Err("self-check failed".into())
    }
}
