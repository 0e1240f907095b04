//! Embedded subscription benchmark.
//!
//! `cargo run --release -p exesdb --example subscribe_load -- [catch-up events] [live events/s] [live seconds]`
//! Defaults: 1,000,000 events to catch up on; 10,000 events/s for 10 s live.
//!
//! Catch-up: appends the events (in appends of 1,000), then times a new `$all` subscriber from
//! the beginning to `CaughtUp`. Live: a subscriber from the end while appenders write at the
//! given rate; latency is from each append's acknowledgement to the subscriber's receipt.
//! Checks its own work: every position arrives once, in order.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use exesdb::{
    ExpectedVersion, NewEvent, Selector, StartFrom, SubscriptionMessage, System, SystemConfig,
};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .map(|a| a.parse())
        .collect::<Result<_, _>>()?;
    let arg = |i: usize, default: u64| args.get(i).copied().unwrap_or(default);
    let (catch_up_events, rate, seconds) = (arg(0, 1_000_000), arg(1, 10_000), arg(2, 10));
    let base = std::env::var_os("EXESDB_BENCH_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let dir = base.join(format!("exesdb-subscribe-bench-{}", std::process::id()));
    let system = Arc::new(System::start(SystemConfig::new(&dir, "bench")).await?);

    // Catch-up. A third of the events is written with nobody subscribed, a third past a
    // subscriber that reads nothing, a third alone again: if the middle rate matches the
    // others, the idle subscriber does not hold writers up.
    let payload = vec![0xAB; 256];
    let third = catch_up_events / 3;
    let before = append_bulk(&system, third, &payload).await?;
    let idle = system
        .api()
        .subscribe(Selector::ByStream("$all".into()), StartFrom::Beginning)
        .await?;
    let with_idle = append_bulk(&system, third, &payload).await?;
    let buffered = idle.receiver_len();
    drop(idle);
    let after = append_bulk(&system, catch_up_events - 2 * third, &payload).await?;
    println!(
        "write rate   {before:.0} events/s alone, {with_idle:.0} past an idle subscriber ({buffered} messages buffered for it), {after:.0} alone again"
    );
    let started = Instant::now();
    let mut subscription = system
        .api()
        .subscribe(Selector::ByStream("$all".into()), StartFrom::Beginning)
        .await?;
    let mut expected = 0u64;
    loop {
        match subscription.next().await {
            Some(SubscriptionMessage::Event(event)) => {
                if event.position != expected {
                    return Err(format!(
                        "catch-up gap: got {} expecting {expected}",
                        event.position
                    )
                    .into());
                }
                expected += 1;
            }
            Some(SubscriptionMessage::CaughtUp) => break,
            None => return Err("subscription ended".into()),
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "catch-up     {expected} events in {elapsed:.2} s: {:.0} events/s (self-check: {})",
        expected as f64 / elapsed,
        if expected == catch_up_events {
            "ok"
        } else {
            "FAILED"
        }
    );
    drop(subscription);

    // Live latency.
    let acks: Arc<Mutex<HashMap<u64, Instant>>> = Arc::new(Mutex::new(HashMap::new()));
    let mut live = system
        .api()
        .subscribe(Selector::ByStream("$all".into()), StartFrom::End)
        .await?;
    let first_live = catch_up_events;
    let total = rate * seconds;
    let writers = 16u64;
    let mut tasks = Vec::new();
    for writer in 0..writers {
        let system = system.clone();
        let acks = acks.clone();
        let payload = payload.clone();
        tasks.push(tokio::spawn(async move {
            let per_writer = total / writers;
            let interval = Duration::from_secs_f64(writers as f64 / rate as f64);
            let mut ticker = tokio::time::interval(interval);
            for _ in 0..per_writer {
                ticker.tick().await;
                let result = system
                    .api()
                    .append(
                        &format!("live-{writer}"),
                        ExpectedVersion::Any,
                        vec![NewEvent::new("Live", payload.clone())],
                    )
                    .await
                    .expect("append");
                acks.lock()
                    .expect("acks")
                    .insert(result.first_position, Instant::now());
            }
        }));
    }
    let expected_live = (total / writers) * writers;
    let mut latencies = hdrhistogram::Histogram::<u64>::new(3)?;
    let mut next = first_live;
    let mut received = HashMap::new();
    while next < first_live + expected_live {
        match live.next().await {
            Some(SubscriptionMessage::Event(event)) => {
                if event.position != next {
                    return Err(format!("live gap: got {} expecting {next}", event.position).into());
                }
                received.insert(event.position, Instant::now());
                next += 1;
            }
            Some(SubscriptionMessage::CaughtUp) => {}
            None => return Err("subscription ended".into()),
        }
    }
    for task in tasks {
        task.await?;
    }
    {
        let acks = acks.lock().map_err(|_| "acks")?;
        for (position, receipt) in &received {
            if let Some(ack) = acks.get(position) {
                // A receipt can precede the writer's own wake-up after its ack: that counts as 0.
                latencies.record(receipt.saturating_duration_since(*ack).as_micros() as u64)?;
            }
        }
    }
    println!(
        "live         {} events at {rate}/s: ack-to-receipt p50 {} us  p99 {} us  p99.9 {} us  max {} us (self-check: ok, gapless)",
        received.len(),
        latencies.value_at_quantile(0.5),
        latencies.value_at_quantile(0.99),
        latencies.value_at_quantile(0.999),
        latencies.max()
    );
    drop(live);
    if let Ok(system) = Arc::try_unwrap(system) {
        system.stop().await;
    }
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

/// Appends `count` events in appends of 1,000; returns events/s.
async fn append_bulk(
    system: &System,
    count: u64,
    payload: &[u8],
) -> Result<f64, Box<dyn std::error::Error>> {
    let started = Instant::now();
    let mut appended = 0;
    while appended < count {
        let n = (count - appended).min(1_000);
        let events = (0..n)
            .map(|_| NewEvent::new("Bench", payload.to_vec()))
            .collect();
        system
            .api()
            .append(
                &format!("s{}", appended % 1000),
                ExpectedVersion::Any,
                events,
            )
            .await?;
        appended += n;
    }
    Ok(count as f64 / started.elapsed().as_secs_f64())
}
