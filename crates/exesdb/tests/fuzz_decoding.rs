//! Bad input, generated: random and mutated request bytes through the wire decoding,
//! conversion and validation, and random stored-record bytes through the record decoders.
//! Each case ends in a value or a typed error, never a panic, and a rejected append writes
//! nothing. (A few thousand cases per run; the `cargo fuzz` targets in `fuzz/` do the same for
//! long manual runs.)

mod common;

use exesdb::system::gateway::wire as convert;
use exesdb_proto::v1 as wire;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use prost::Message;

/// A valid append request, encoded, to mutate.
fn valid_append() -> Vec<u8> {
    wire::AppendEventsRequest {
        store_id: "default".into(),
        stream_id: "order-1".into(),
        expected: Some(convert::expected_version_to_wire(
            exesdb::ExpectedVersion::Exact(3),
        )),
        events: vec![wire::NewEvent {
            event_id: "0190b3c4-0000-7000-8000-000000000001".into(),
            event_type: "Placed".into(),
            data: b"{}".to_vec(),
            ..Default::default()
        }],
    }
    .encode_to_vec()
}

/// What the gateway does with a decoded append before the store sees it.
fn convert_append(request: wire::AppendEventsRequest) -> Result<(), exesdb::StoreError> {
    let _ = convert::expected_version(request.expected);
    for event in request.events {
        convert::new_event(event)?;
    }
    exesdb::event::validate_stream_id(&request.stream_id, false)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3_000, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_decode_or_fail_cleanly(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        if let Ok(request) = wire::AppendEventsRequest::decode(bytes.as_slice()) {
            let _ = convert_append(request);
        }
        if let Ok(request) = wire::ReadAllRequest::decode(bytes.as_slice()) {
            let _ = convert::direction(request.direction);
        }
        if let Ok(request) = wire::SubscribeRequest::decode(bytes.as_slice()) {
            let _ = convert::selector(request.selector);
            let _ = convert::start_from(request.start);
        }
        if let Ok(request) = wire::SaveSubscriptionRequest::decode(bytes.as_slice()) {
            let _ = convert::definition(request.definition);
        }
        let _ = exesdb::storage::codec::decode_event(0, &bytes);
        let _ = exesdb::storage::codec::SnapshotRecord::decode(&bytes);
        let _ = exesdb::storage::codec::open_blob(&bytes);
    }

    #[test]
    fn mutated_requests_decode_or_fail_cleanly(
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut bytes = valid_append();
        for (index, value) in flips {
            let at = index.index(bytes.len());
            bytes[at] = value;
        }
        bytes.truncate(cut.index(bytes.len() + 1));
        if let Ok(request) = wire::AppendEventsRequest::decode(bytes.as_slice()) {
            let _ = convert_append(request);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_generated_appends_write_nothing() {
    let store = common::start().await;
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let strategy = (
        proptest::collection::vec(any::<u8>(), 0..600),
        proptest::collection::vec(any::<char>(), 0..300),
        0usize..3,
    );
    let mut rejected = 0;
    let mut accepted = 0u64;
    for _ in 0..500 {
        let (data, type_chars, count) = strategy.new_tree(&mut runner).expect("a value").current();
        let event_type: String = type_chars.into_iter().collect();
        let stream: String = event_type.chars().rev().collect();
        let events = (0..count)
            .map(|_| exesdb::NewEvent::new(event_type.clone(), data.clone()))
            .collect();
        match store
            .system
            .append(&stream, exesdb::ExpectedVersion::Any, events)
            .await
        {
            Ok(result) => accepted += result.last_event_number - result.first_event_number + 1,
            Err(error) => {
                assert!(
                    matches!(error.code(), "invalid_argument" | "limit_exceeded"),
                    "{error}"
                );
                rejected += 1;
            }
        }
    }
    let all = store
        .system
        .read_all(exesdb::ReadAllRequest {
            count: 10_000,
            ..Default::default()
        })
        .await
        .expect("read");
    assert_eq!(
        all.len() as u64,
        accepted,
        "only accepted appends wrote events"
    );
    assert!(rejected > 0, "the generator produced invalid appends");
    store.system.stop().await;
}
