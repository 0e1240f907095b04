//! A subscriber that reads nothing while a million events are appended: the writers are not
//! held up, the process's memory stays within a bound, and the subscriber then receives every
//! event, in order.
//!
//! A test binary of its own: it measures the resident memory of its process, which the other
//! integration tests, run beside it in `it`, would add to.

use std::time::Duration;

#[path = "it/common/mod.rs"]
mod common;

use common::{event, start};
use exesdb::{ExpectedVersion, Selector, StartFrom, SubscriptionMessage};

/// Resident memory of this process, in bytes.
fn resident_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("procfs");
    let kilobytes: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|number| number.parse().ok())
        .expect("VmRSS");
    kilobytes * 1024
}

/// Growth allowed while a million events are written past an idle subscriber: the storage
/// engine's memtables and cache (bounded by their settings) plus slack. Holding the million
/// events for the subscriber would take well over twice this.
const GROWTH_BYTES_MAX: u64 = 400 * 1024 * 1024;
const EVENTS: u64 = 1_000_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_million_events_past_an_idle_subscriber() {
    let store = start().await;
    let s = &store.system;
    let mut idle = s
        .api()
        .subscribe(Selector::ByStream("$all".into()), StartFrom::Beginning)
        .await
        .expect("subscribe");
    let before = resident_bytes();
    let payload = "x".repeat(200);
    for chunk in 0..(EVENTS / 1_000) {
        let events = (0..1_000).map(|_| event("E", &payload)).collect();
        s.api()
            .append(&format!("s{}", chunk % 100), ExpectedVersion::Any, events)
            .await
            .expect("appends go on");
    }
    let growth = resident_bytes().saturating_sub(before);
    assert!(
        growth < GROWTH_BYTES_MAX,
        "memory grew by {} MiB with an idle subscriber",
        growth / 1024 / 1024
    );
    assert!(idle.receiver_len() <= s.api().config().limits.subscriber_buffer_events_max);
    let mut next = 0u64;
    while next < EVENTS {
        let message = tokio::time::timeout(Duration::from_secs(30), idle.next())
            .await
            .expect("delivery goes on")
            .expect("open");
        if let SubscriptionMessage::Event(event) = message {
            assert_eq!(event.position, next, "in order, nothing skipped");
            next += 1;
        }
    }
    eprintln!("resident growth while idle: {} MiB", growth / 1024 / 1024);
    store.system.stop().await;
}
