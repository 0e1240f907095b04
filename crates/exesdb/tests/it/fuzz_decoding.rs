//! Bad input, generated: random stored-record bytes through the record decoders, and generated
//! appends through the embedded API. Each case ends in a value or a typed error, never a panic,
//! and a rejected append writes nothing. (The wire side of the same checks is
//! `crates/exesdb-proto/tests/decoding.rs`; the `cargo fuzz` targets in `fuzz/` do both for long
//! manual runs.)

use exesdb::fuzzing::{Chunk, SnapshotRecord, decode_event, open_blob};
use proptest::prelude::*;
use proptest::strategy::ValueTree;

proptest! {
    #![proptest_config(ProptestConfig { cases: 3_000, ..ProptestConfig::default() })]

    #[test]
    fn random_record_bytes_decode_or_fail_cleanly(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode_event(0, &bytes);
        let _ = SnapshotRecord::decode(&bytes);
        let _ = open_blob(&bytes);
        if let Ok(chunk) = Chunk::open(&bytes) {
            for index in 0..=chunk.len() {
                if let Ok(Some(record)) = chunk.record(index) {
                    let _ = decode_event(index as u64, record);
                }
            }
        }
    }

    // Random bytes after a chunk's well-formed header: the framing is checked, so offsets
    // that do not fit the body are errors, never a panic or a record out of bounds.
    #[test]
    fn random_chunk_bodies_open_or_fail_cleanly(
        ends in proptest::collection::vec(any::<u32>(), 1..8),
        body in proptest::collection::vec(any::<u8>(), 0..256),
    ) {
        let mut bytes = vec![2u8, 0, 0, 0, 0];
        bytes.extend_from_slice(&(ends.len() as u32).to_be_bytes());
        for end in &ends {
            bytes.extend_from_slice(&(end % 300).to_be_bytes());
        }
        let crc = crc32fast::hash(&bytes[5..]);
        bytes[1..5].copy_from_slice(&crc.to_be_bytes());
        bytes.extend_from_slice(&body);
        if let Ok(chunk) = Chunk::open(&bytes) {
            for index in 0..=chunk.len() {
                if let Ok(Some(record)) = chunk.record(index) {
                    prop_assert!(record.len() <= body.len());
                    let _ = decode_event(index as u64, record);
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_generated_appends_write_nothing() {
    let store = crate::common::start().await;
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
            .api()
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
        .api()
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
