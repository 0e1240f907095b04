//! The append contract: expected versions, atomicity, idempotent retries, limits and bad input,
//! reads of streams and `$all`, snapshots, and durability across a restart.

use crate::common::{event, start, start_with};
use exesdb::{Direction, ExpectedVersion, NewEvent, ReadAllRequest, SnapshotVersion, StoreError};
use uuid::Uuid;

fn wrong_version(error: &StoreError) -> Option<(String, i64)> {
    match error {
        StoreError::WrongExpectedVersion { expected, current } => {
            Some((expected.clone(), *current))
        }
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expected_version_cases_on_new_existing_and_empty_streams() {
    let store = start().await;
    let s = &store.system;

    // A new stream: no_stream and any succeed; stream_exists and exact fail with current -1.
    let error = s
        .api()
        .append(
            "new-1",
            ExpectedVersion::StreamExists,
            vec![event("A", "1")],
        )
        .await
        .expect_err("stream_exists on a new stream");
    assert_eq!(wrong_version(&error), Some(("stream_exists".into(), -1)));
    let error = s
        .api()
        .append("new-1", ExpectedVersion::Exact(0), vec![event("A", "1")])
        .await
        .expect_err("exact 0 on a new stream");
    assert_eq!(wrong_version(&error), Some(("0".into(), -1)));
    assert_eq!(s.api().stream_version("new-1").await.expect("version"), -1);

    let first = s
        .api()
        .append("new-1", ExpectedVersion::NoStream, vec![event("A", "1")])
        .await
        .expect("no_stream on a new stream");
    assert_eq!((first.first_event_number, first.last_event_number), (0, 0));
    let any = s
        .api()
        .append("new-2", ExpectedVersion::Any, vec![event("A", "1")])
        .await
        .expect("any on a new stream");
    assert_eq!(any.first_event_number, 0);

    // An existing stream at version 0.
    let error = s
        .api()
        .append("new-1", ExpectedVersion::NoStream, vec![event("A", "2")])
        .await
        .expect_err("no_stream on an existing stream");
    assert_eq!(wrong_version(&error), Some(("no_stream".into(), 0)));
    let error = s
        .api()
        .append("new-1", ExpectedVersion::Exact(5), vec![event("A", "2")])
        .await
        .expect_err("exact 5 at version 0");
    assert_eq!(wrong_version(&error), Some(("5".into(), 0)));
    let exists = s
        .api()
        .append(
            "new-1",
            ExpectedVersion::StreamExists,
            vec![event("A", "2")],
        )
        .await
        .expect("stream_exists on an existing stream");
    assert_eq!(exists.first_event_number, 1);
    let exact = s
        .api()
        .append(
            "new-1",
            ExpectedVersion::Exact(1),
            vec![event("A", "3"), event("A", "4")],
        )
        .await
        .expect("exact 1 at version 1");
    assert_eq!((exact.first_event_number, exact.last_event_number), (2, 3));
    let any = s
        .api()
        .append("new-1", ExpectedVersion::Any, vec![event("A", "5")])
        .await
        .expect("any on an existing stream");
    assert_eq!(any.first_event_number, 4);
    assert_eq!(s.api().stream_version("new-1").await.expect("version"), 4);

    // Global positions are gapless across streams.
    let all = s
        .api()
        .read_all(ReadAllRequest {
            count: 100,
            ..Default::default()
        })
        .await
        .expect("read $all");
    let positions: Vec<u64> = all.iter().map(|e| e.position).collect();
    assert_eq!(positions, (0..all.len() as u64).collect::<Vec<_>>());
    assert_eq!(all.len(), 6);
    store.system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_append_writes_nothing() {
    let store = start().await;
    let s = &store.system;
    s.api()
        .append("order-1", ExpectedVersion::NoStream, vec![event("A", "1")])
        .await
        .expect("first append");

    // Wrong version with three events: none of them may appear.
    let batch = vec![event("B", "1"), event("B", "2"), event("B", "3")];
    s.api()
        .append("order-1", ExpectedVersion::Exact(7), batch)
        .await
        .expect_err("wrong version");
    // A batch whose last event is invalid: the valid first events must not appear either.
    let mut bad = vec![event("C", "1"), event("C", "2")];
    bad.push(NewEvent::new("", b"no type".to_vec()));
    let error = s
        .api()
        .append("order-1", ExpectedVersion::Any, bad)
        .await
        .expect_err("invalid last event");
    assert_eq!(error.code(), "invalid_argument");

    let events = s
        .api()
        .read_stream("order-1", None, 100, Direction::Forward)
        .await
        .expect("read");
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].event_type, "A");
    let all = s
        .api()
        .read_all(ReadAllRequest {
            count: 100,
            ..Default::default()
        })
        .await
        .expect("read all");
    assert_eq!(all.len(), 1, "no partial append in $all");
    store.system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_retry_returns_the_original_result_and_writes_nothing() {
    let store = start().await;
    let s = &store.system;
    let ids: Vec<Uuid> = (0..3).map(|_| Uuid::now_v7()).collect();
    let batch = |ids: &[Uuid]| -> Vec<NewEvent> {
        ids.iter()
            .map(|id| event("Placed", "x").with_id(*id))
            .collect()
    };
    s.api()
        .append("other", ExpectedVersion::Any, vec![event("X", "0")])
        .await
        .expect("unrelated event moves positions");
    let original = s
        .api()
        .append("order-9", ExpectedVersion::NoStream, batch(&ids))
        .await
        .expect("original");

    // Exact repeat with the same expected version: same result, nothing new.
    let retry = s
        .api()
        .append("order-9", ExpectedVersion::NoStream, batch(&ids))
        .await
        .expect("retry");
    assert_eq!(retry, original);
    // The same with `any`.
    let retry_any = s
        .api()
        .append("order-9", ExpectedVersion::Any, batch(&ids))
        .await
        .expect("retry with any");
    assert_eq!(retry_any, original);
    assert_eq!(s.api().stream_version("order-9").await.expect("version"), 2);

    // Partial overlap: one known id and one new one.
    let overlap = vec![
        event("Placed", "x").with_id(ids[2]),
        event("Placed", "y").with_id(Uuid::now_v7()),
    ];
    let error = s
        .api()
        .append("order-9", ExpectedVersion::Any, overlap)
        .await
        .expect_err("partial overlap");
    assert_eq!(error.code(), "idempotency_conflict");
    // The full repeat at another place than the expected version points to is not a retry.
    let error = s
        .api()
        .append("order-9", ExpectedVersion::Exact(5), batch(&ids))
        .await
        .expect_err("repeat at a wrong place");
    assert_eq!(error.code(), "wrong_expected_version");

    let all = s
        .api()
        .read_all(ReadAllRequest {
            count: 100,
            ..Default::default()
        })
        .await
        .expect("read all");
    assert_eq!(all.len(), 4, "retries wrote nothing");
    store.system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_typed_errors_and_the_store_keeps_working() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = start_with(dir, |config| {
        config.limits.append_events_max = 5;
        config.limits.event_bytes_max = 1_000;
        config.limits.read_events_max = 50;
    })
    .await;
    let s = &store.system;
    let one = || vec![event("A", "1")];
    let long_id = "x".repeat(513);
    let cases: Vec<(&str, Result<_, StoreError>)> = vec![
        (
            "empty stream id",
            s.api().append("", ExpectedVersion::Any, one()).await,
        ),
        (
            "long stream id",
            s.api().append(&long_id, ExpectedVersion::Any, one()).await,
        ),
        (
            "control character",
            s.api().append("a\u{7}b", ExpectedVersion::Any, one()).await,
        ),
        (
            "reserved stream",
            s.api().append("$all", ExpectedVersion::Any, one()).await,
        ),
        (
            "no events",
            s.api().append("s", ExpectedVersion::Any, vec![]).await,
        ),
        (
            "empty type",
            s.api()
                .append("s", ExpectedVersion::Any, vec![event("", "1")])
                .await,
        ),
        (
            "oversized event",
            s.api()
                .append(
                    "s",
                    ExpectedVersion::Any,
                    vec![NewEvent::new("A", vec![0u8; 1_001])],
                )
                .await,
        ),
        (
            "too many events",
            s.api()
                .append(
                    "s",
                    ExpectedVersion::Any,
                    (0..6).map(|_| event("A", "1")).collect(),
                )
                .await,
        ),
        ("duplicate ids in one append", {
            let id = Uuid::now_v7();
            s.api()
                .append(
                    "s",
                    ExpectedVersion::Any,
                    vec![event("A", "1").with_id(id), event("A", "2").with_id(id)],
                )
                .await
        }),
    ];
    let expected_codes = [
        "invalid_argument",
        "invalid_argument",
        "invalid_argument",
        "invalid_argument",
        "invalid_argument",
        "invalid_argument",
        "limit_exceeded",
        "limit_exceeded",
        "invalid_argument",
    ];
    for ((name, result), code) in cases.into_iter().zip(expected_codes) {
        let error = result.expect_err(name);
        assert_eq!(error.code(), code, "{name}: {error}");
    }
    for count in [0, 51, u64::MAX] {
        let error = s
            .api()
            .read_stream("s", None, count, Direction::Forward)
            .await
            .expect_err("absurd count");
        assert!(
            matches!(error.code(), "invalid_argument" | "limit_exceeded"),
            "{error}"
        );
        let error = s
            .api()
            .read_all(ReadAllRequest {
                count,
                ..Default::default()
            })
            .await
            .expect_err("absurd count on $all");
        assert!(
            matches!(error.code(), "invalid_argument" | "limit_exceeded"),
            "{error}"
        );
    }
    let error = s
        .api()
        .read_stream("never-written", None, 10, Direction::Forward)
        .await
        .expect_err("missing stream");
    assert_eq!(error.code(), "stream_not_found");

    // Nothing was written, and the store still works.
    let all = s
        .api()
        .read_all(ReadAllRequest {
            count: 50,
            ..Default::default()
        })
        .await
        .expect("read all");
    assert!(
        all.is_empty(),
        "rejected requests wrote {} events",
        all.len()
    );
    let ok = s
        .api()
        .append("s", ExpectedVersion::NoStream, vec![event("A", "1")])
        .await
        .expect("a good append after bad ones");
    assert_eq!(ok.first_position, 0);
    store.system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_forward_backward_filtered_and_paged() {
    let store = start().await;
    let s = &store.system;
    for i in 0..5 {
        s.api()
            .append(
                "cart-1",
                ExpectedVersion::Any,
                vec![event("Added", &i.to_string())],
            )
            .await
            .expect("append cart");
        s.api()
            .append(
                "order-1",
                ExpectedVersion::Any,
                vec![event("Placed", &i.to_string())],
            )
            .await
            .expect("append order");
    }
    let forward = s
        .api()
        .read_stream("cart-1", Some(1), 2, Direction::Forward)
        .await
        .expect("read");
    assert_eq!(
        forward.iter().map(|e| e.event_number).collect::<Vec<_>>(),
        vec![1, 2]
    );
    let backward = s
        .api()
        .read_stream("cart-1", None, 3, Direction::Backward)
        .await
        .expect("read");
    assert_eq!(
        backward.iter().map(|e| e.event_number).collect::<Vec<_>>(),
        vec![4, 3, 2]
    );
    let backward_from = s
        .api()
        .read_stream("cart-1", Some(1), 5, Direction::Backward)
        .await
        .expect("read");
    assert_eq!(
        backward_from
            .iter()
            .map(|e| e.event_number)
            .collect::<Vec<_>>(),
        vec![1, 0]
    );
    let beyond = s
        .api()
        .read_stream("cart-1", Some(10), 5, Direction::Forward)
        .await
        .expect("read");
    assert!(beyond.is_empty());

    let orders = s
        .api()
        .read_all(ReadAllRequest {
            count: 3,
            stream_prefix: Some("order-".into()),
            ..Default::default()
        })
        .await
        .expect("filtered");
    assert_eq!(orders.len(), 3);
    assert!(orders.iter().all(|e| e.stream_id == "order-1"));
    let typed_backward = s
        .api()
        .read_all(ReadAllRequest {
            count: 10,
            direction: Direction::Backward,
            event_types: vec!["Added".into()],
            ..Default::default()
        })
        .await
        .expect("by type");
    assert_eq!(typed_backward.len(), 5);
    assert!(
        typed_backward
            .windows(2)
            .all(|w| w[0].position > w[1].position)
    );
    let from_middle = s
        .api()
        .read_all(ReadAllRequest {
            from_position: Some(8),
            count: 10,
            ..Default::default()
        })
        .await
        .expect("from position");
    assert_eq!(
        from_middle.iter().map(|e| e.position).collect::<Vec<_>>(),
        vec![8, 9]
    );

    let page_one = s.api().list_streams(None, 1).await.expect("streams");
    assert_eq!(page_one.len(), 1);
    assert_eq!(page_one[0].stream_id, "cart-1");
    let page_two = s
        .api()
        .list_streams(Some("cart-1"), 10)
        .await
        .expect("streams");
    assert_eq!(
        page_two
            .iter()
            .map(|i| (i.stream_id.as_str(), i.version))
            .collect::<Vec<_>>(),
        vec![("order-1", 4)]
    );
    assert_eq!(s.api().list_stores(), vec!["default".to_string()]);
    store.system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_record_read_delete_list() {
    let store = start().await;
    let s = &store.system;
    for version in [3, 7, 12] {
        s.api()
            .record_snapshot(
                "cart",
                "cart-1",
                version,
                format!("v{version}").into_bytes(),
                vec![],
            )
            .await
            .expect("record");
    }
    s.api()
        .record_snapshot("cart", "cart-2", 1, b"other".to_vec(), b"m".to_vec())
        .await
        .expect("record");
    let exact = s
        .api()
        .read_snapshot("cart", "cart-1", SnapshotVersion::Exact(7))
        .await
        .expect("exact");
    assert_eq!(exact.data, b"v7");
    let below = s
        .api()
        .read_snapshot("cart", "cart-1", SnapshotVersion::AtOrBelow(11))
        .await
        .expect("below");
    assert_eq!(below.version, 7);
    let latest = s
        .api()
        .read_snapshot("cart", "cart-1", SnapshotVersion::Latest)
        .await
        .expect("latest");
    assert_eq!(latest.version, 12);
    let error = s
        .api()
        .read_snapshot("cart", "cart-1", SnapshotVersion::Exact(8))
        .await
        .expect_err("no snapshot at 8");
    assert_eq!(error.code(), "snapshot_not_found");
    let error = s
        .api()
        .read_snapshot("cart", "cart-1", SnapshotVersion::AtOrBelow(2))
        .await
        .expect_err("none at or below 2");
    assert_eq!(error.code(), "snapshot_not_found");

    s.api()
        .delete_snapshot("cart", "cart-1", 12)
        .await
        .expect("delete");
    s.api()
        .delete_snapshot("cart", "cart-1", 12)
        .await
        .expect("delete again is fine");
    let latest = s
        .api()
        .read_snapshot("cart", "cart-1", SnapshotVersion::Latest)
        .await
        .expect("latest");
    assert_eq!(latest.version, 7);
    let listed = s
        .api()
        .list_snapshots(Some("cart"), Some("cart-1"), 100)
        .await
        .expect("list");
    assert_eq!(
        listed.iter().map(|x| x.version).collect::<Vec<_>>(),
        vec![3, 7]
    );
    let all = s
        .api()
        .list_snapshots(None, None, 100)
        .await
        .expect("list all");
    assert_eq!(all.len(), 3);
    let store = store.restart().await;
    let after = store
        .system
        .api()
        .read_snapshot("cart", "cart-2", SnapshotVersion::Exact(1))
        .await
        .expect("survives restart");
    assert_eq!(
        (after.data.as_slice(), after.metadata.as_slice()),
        (&b"other"[..], &b"m"[..])
    );
    store.system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_appends_survive_a_restart() {
    let store = start().await;
    let mut acknowledged = Vec::new();
    for i in 0..50u64 {
        let stream = format!("s-{}", i % 7);
        let result = store
            .system
            .api()
            .append(
                &stream,
                ExpectedVersion::Any,
                vec![event("E", &i.to_string())],
            )
            .await
            .expect("append");
        acknowledged.push((stream, result, i.to_string()));
    }
    let store = store.restart().await;
    for (stream, result, data) in &acknowledged {
        let events = store
            .system
            .api()
            .read_stream(
                stream,
                Some(result.first_event_number),
                1,
                Direction::Forward,
            )
            .await
            .expect("read");
        assert_eq!(events[0].position, result.first_position);
        assert_eq!(events[0].data, data.as_bytes());
    }
    // Positions continue where they stopped.
    let next = store
        .system
        .api()
        .append("after", ExpectedVersion::NoStream, vec![event("E", "x")])
        .await
        .expect("append after restart");
    assert_eq!(next.first_position, 50);
    store.system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paged_reads_of_all_cover_the_store_once_either_way_and_stop_at_an_error() {
    let store = start().await;
    let s = &store.system;
    // 250 events in appends of 1 to 20, across 7 streams, so that log chunks, pages and
    // appends all end in different places.
    let mut written = 0u64;
    let mut size = 1;
    while written < 250 {
        let count = size.min(250 - written);
        let events = (0..count)
            .map(|i| event("Paged", &format!("{}", written + i)))
            .collect();
        s.api()
            .append(
                &format!("paged-{}", written % 7),
                ExpectedVersion::Any,
                events,
            )
            .await
            .expect("append");
        written += count;
        size = size % 20 + 1;
    }
    let positions = |request: ReadAllRequest| async move {
        let mut pages = s.api().read_all_pages(request).await;
        let mut positions = Vec::new();
        let mut page_sizes = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.expect("page");
            page_sizes.push(page.len());
            for event in page.iter() {
                // The payload is the event's own position, written above.
                assert_eq!(event.data, event.position.to_string().as_bytes());
                positions.push(event.position);
            }
        }
        (positions, page_sizes)
    };
    let (forward, sizes) = positions(ReadAllRequest {
        from_position: Some(3),
        count: 40,
        ..Default::default()
    })
    .await;
    assert_eq!(forward, (3..250).collect::<Vec<_>>());
    assert!(sizes.iter().all(|&n| n <= 40), "{sizes:?}");
    let (backward, _) = positions(ReadAllRequest {
        from_position: Some(200),
        count: 33,
        direction: Direction::Backward,
        ..Default::default()
    })
    .await;
    assert_eq!(backward, (0..=200).rev().collect::<Vec<_>>());
    // A byte bound ends a page early, and the next page goes on from there.
    let (bounded, sizes) = positions(ReadAllRequest {
        count: 50,
        bytes_max: Some(200),
        ..Default::default()
    })
    .await;
    assert_eq!(bounded, (0..250).collect::<Vec<_>>());
    assert!(sizes.iter().all(|&n| n < 50), "{sizes:?}");
    // A request the store refuses ends the pages with its error.
    let mut pages = s
        .api()
        .read_all_pages(ReadAllRequest {
            count: 0,
            ..Default::default()
        })
        .await;
    let error = pages
        .next()
        .await
        .expect("one answer")
        .expect_err("refused");
    assert_eq!(error.code(), "invalid_argument");
    assert!(pages.next().await.is_none());
    // A reader that stops early just drops the pages.
    let mut pages = s
        .api()
        .read_all_pages(ReadAllRequest {
            count: 10,
            ..Default::default()
        })
        .await;
    assert_eq!(pages.next().await.expect("a page").expect("ok").len(), 10);
    drop(pages);
    store.system.stop().await;
}
