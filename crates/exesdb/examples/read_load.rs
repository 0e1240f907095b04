//! Embedded `$all` read benchmark: writes a store of events, then reads `$all` from the start
//! in pages, as a catching-up reader does, several times; prints each read's events/s and the
//! median, and checks its own work (every position once, in order).
//!
//! `cargo run --release -p exesdb --example read_load -- [events] [event bytes] [page events] [reads] [page|owned]`
//! Defaults: 1,000,000 events of 256 bytes, pages of 10,000, 5 reads, through `read_all_pages`
//! (events lent by each page, the next page read ahead); `owned` reads page by page through
//! `read_all` (an owned copy of each event). It runs on mimalloc, as
//! the `exesdb` and `exesdb-compare` binaries do: allocation is a large part of a read's cost.

use std::time::Instant;

use exesdb::{Direction, ExpectedVersion, NewEvent, ReadAllRequest, System, SystemConfig};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let owned = args.last().is_some_and(|a| a == "owned" || a == "page") && {
        let last = args.pop();
        last.as_deref() == Some("owned")
    };
    let args: Vec<u64> = args.iter().map(|a| a.parse()).collect::<Result<_, _>>()?;
    let arg = |i: usize, default: u64| args.get(i).copied().unwrap_or(default);
    let (events, size, page, reads) = (arg(0, 1_000_000), arg(1, 256), arg(2, 10_000), arg(3, 5));
    let base = std::env::var_os("EXESDB_BENCH_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let dir = base.join(format!("exesdb-read-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mut config = SystemConfig::new(&dir, "bench");
    config.limits.read_events_max = page.max(1);
    let system = System::start(config).await?;
    const APPEND_EVENTS: u64 = 1_000;
    for chunk in 0..events.div_ceil(APPEND_EVENTS) {
        let count = APPEND_EVENTS.min(events - chunk * APPEND_EVENTS);
        let batch = (0..count)
            .map(|_| NewEvent::new("Bench", vec![0xAB; size as usize]))
            .collect();
        system
            .api()
            .append(
                &format!("stream-{}", chunk % 100),
                ExpectedVersion::Any,
                batch,
            )
            .await?;
    }
    let mut rates = Vec::new();
    let mut ok = true;
    for _ in 0..reads {
        let started = Instant::now();
        let mut next = 0u64;
        // Each event is looked at once, as a reader would: its position, type and payload.
        let mut look = |position: u64, event_type: &str, data: &[u8]| {
            ok &= position == next && event_type == "Bench" && data.len() == size as usize;
            next += 1;
        };
        let request = ReadAllRequest {
            from_position: Some(0),
            count: page,
            direction: Direction::Forward,
            ..ReadAllRequest::default()
        };
        if owned {
            let mut from = 0;
            loop {
                let request = ReadAllRequest {
                    from_position: Some(from),
                    ..request.clone()
                };
                let got = system.api().read_all(request).await?;
                let Some(last) = got.last() else { break };
                from = last.position + 1;
                for event in &got {
                    look(event.position, &event.event_type, &event.data);
                }
            }
        } else {
            let mut pages = system.api().read_all_pages(request).await;
            while let Some(got) = pages.next().await {
                for event in got?.iter() {
                    look(event.position, event.event_type, event.data);
                }
            }
        }
        ok &= next == events;
        let rate = events as f64 / started.elapsed().as_secs_f64();
        let how = if owned { "read_all" } else { "read_all_pages" };
        println!("{how} $all: {events} events in pages of {page}: {rate:.0} events/s");
        rates.push(rate);
    }
    rates.sort_by(f64::total_cmp);
    let median = rates.get(rates.len() / 2).copied().unwrap_or(0.0);
    println!(
        "median {median:.0} events/s over {reads} reads (self-check: {})",
        if ok { "ok" } else { "FAILED" }
    );
    system.stop().await;
    std::fs::remove_dir_all(&dir)?;
    if !ok {
        return Err("a read lost, repeated or reordered events".into());
    }
    Ok(())
}
