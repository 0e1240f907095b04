//! Streamed reads of large events: a page stops at `read_page_bytes_max` (so one read never
//! holds `read_events_max` large events in memory), and a page cut short that way is not taken
//! for the end: every read still returns exactly what it asked for, in order, in streams paged
//! by event number and in `$all` and the index streams, paged by position.

use crate::common::{Server, metric};
use exesdb_client::{Direction, ExpectedVersion, NewEvent, ReadFrom};
use tokio_stream::StreamExt;

const EVENT_BYTES: usize = 64 * 1024;
const BIG_EVENTS: u64 = 120;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_of_large_events_page_by_bytes_and_lose_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    // 1 MiB pages: about 15 of these events each.
    let server = Server::start_with(dir.path(), &["--read-page-bytes-max", "1048576"]);
    let client = server.client().await;
    for append in 0..BIG_EVENTS / 10 {
        let events = (0..10)
            .map(|i| NewEvent::new("Big", vec![(append * 10 + i) as u8; EVENT_BYTES]))
            .collect();
        client
            .append("big", ExpectedVersion::Any, events)
            .await
            .expect("append big");
        client
            .append(
                "small",
                ExpectedVersion::Any,
                vec![NewEvent::new("Small", "{}")],
            )
            .await
            .expect("append small");
    }
    let total = BIG_EVENTS + BIG_EVENTS / 10;

    let reads_before = metric(&server.address, "exesdb_reads_total{store=\"default\"}");
    let forward: Vec<_> = client
        .read_stream("big", ReadFrom::Start, None, Direction::Forward)
        .map(|event| event.expect("readable"))
        .collect()
        .await;
    assert_eq!(
        forward.iter().map(|e| e.event_number).collect::<Vec<_>>(),
        (0..BIG_EVENTS).collect::<Vec<_>>()
    );
    for event in &forward {
        assert_eq!(event.data, vec![event.event_number as u8; EVENT_BYTES]);
    }
    // 120 events of 64 KiB in pages of at most 1 MiB (past the first event): at least 8 pages,
    // where `read_events_max` alone would have read them in one.
    let pages = metric(&server.address, "exesdb_reads_total{store=\"default\"}") - reads_before;
    assert!(pages >= 8.0, "the read was paged by bytes ({pages} pages)");
    let backward: Vec<u64> = client
        .read_stream("big", ReadFrom::Start, None, Direction::Backward)
        .map(|event| event.expect("readable").event_number)
        .collect()
        .await;
    assert_eq!(backward, (0..BIG_EVENTS).rev().collect::<Vec<_>>());
    let counted: Vec<u64> = client
        .read_stream("big", ReadFrom::At(7), Some(50), Direction::Forward)
        .map(|event| event.expect("readable").event_number)
        .collect()
        .await;
    assert_eq!(counted, (7..57).collect::<Vec<_>>());

    let all: Vec<u64> = client
        .read_all(ReadFrom::Start, None, Direction::Forward, None, &[])
        .map(|event| event.expect("readable").position)
        .collect()
        .await;
    assert_eq!(all, (0..total).collect::<Vec<_>>());
    let some: Vec<u64> = client
        .read_all(ReadFrom::Start, Some(40), Direction::Forward, None, &[])
        .map(|event| event.expect("readable").position)
        .collect()
        .await;
    assert_eq!(some, (0..40).collect::<Vec<_>>());
    let big_only = client
        .read_all(ReadFrom::Start, None, Direction::Forward, Some("big"), &[])
        .map(|event| event.expect("readable"))
        .collect::<Vec<_>>()
        .await;
    assert_eq!(big_only.len() as u64, BIG_EVENTS);

    // An index stream and `$all` read as streams page by position, not by event number: the
    // `Big` events hold positions that are not their numbers (a `Small` one follows every 10).
    let big_positions: Vec<u64> = big_only.iter().map(|event| event.position).collect();
    for direction in [Direction::Forward, Direction::Backward] {
        let mut wanted = big_positions.clone();
        if direction == Direction::Backward {
            wanted.reverse();
        }
        let by_type: Vec<u64> = client
            .read_stream("$et-Big", ReadFrom::Start, None, direction)
            .map(|event| event.expect("readable").position)
            .collect()
            .await;
        assert_eq!(by_type, wanted, "$et-Big {direction:?}");
    }
    let reads_before = metric(&server.address, "exesdb_reads_total{store=\"default\"}");
    let whole: Vec<u64> = client
        .read_stream("$all", ReadFrom::Start, None, Direction::Forward)
        .map(|event| event.expect("readable").position)
        .collect()
        .await;
    assert_eq!(
        whole,
        (0..total).collect::<Vec<_>>(),
        "$all read as a stream"
    );
    let pages = metric(&server.address, "exesdb_reads_total{store=\"default\"}") - reads_before;
    assert!(pages >= 8.0, "$all was paged by bytes ({pages} pages)");
}
