//! Bad input, generated: random and mutated request bytes through the wire decoding,
//! conversion and validation. Each case ends in a value or a typed error, never a panic. (A
//! few thousand cases per run; the `cargo fuzz` targets in `fuzz/` do the same for long manual
//! runs.) And every `StoreError` crosses the wire and comes back the same: `status` picks the
//! gRPC code of the table in docs/REQUESTS.md and carries the stable code; `store_error`
//! rebuilds the error.

use exesdb_proto::convert;
use exesdb_proto::v1 as wire;
use proptest::prelude::*;
use prost::Message;

/// A valid append request, encoded, to mutate.
fn valid_append() -> Vec<u8> {
    wire::AppendEventsRequest {
        store_id: "default".into(),
        stream_id: "order-1".into(),
        expected: Some(convert::expected_version_to_wire(
            exesdb_types::ExpectedVersion::Exact(3),
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
fn convert_append(request: wire::AppendEventsRequest) -> Result<(), exesdb_types::StoreError> {
    let _ = convert::expected_version(request.expected);
    for event in request.events {
        convert::new_event(event)?;
    }
    exesdb_types::validate_stream_id(&request.stream_id, false)
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

#[test]
fn every_error_round_trips_with_its_grpc_code() {
    let cases = [
        (
            exesdb_types::StoreError::WrongExpectedVersion {
                expected: "3".into(),
                current: 5,
            },
            tonic::Code::FailedPrecondition,
        ),
        (
            exesdb_types::StoreError::StreamNotFound {
                stream_id: "order-1".into(),
            },
            tonic::Code::NotFound,
        ),
        (
            exesdb_types::StoreError::SnapshotNotFound("a/b".into()),
            tonic::Code::NotFound,
        ),
        (
            exesdb_types::StoreError::SubscriptionNotFound(
                "no persistent subscription named \"x\"".into(),
            ),
            tonic::Code::NotFound,
        ),
        (
            exesdb_types::StoreError::StoreNotFound("other".into()),
            tonic::Code::NotFound,
        ),
        (
            exesdb_types::StoreError::IdempotencyConflict("partly there".into()),
            tonic::Code::AlreadyExists,
        ),
        (
            exesdb_types::StoreError::invalid("bad"),
            tonic::Code::InvalidArgument,
        ),
        (
            exesdb_types::StoreError::limit("append_events_max", 10, 11),
            tonic::Code::ResourceExhausted,
        ),
        (
            exesdb_types::StoreError::unavailable("restarting"),
            tonic::Code::Unavailable,
        ),
        (
            exesdb_types::StoreError::NotLeader {
                leader_node_id: Some(7),
                leader_addr: Some("127.0.0.3:2113".into()),
            },
            tonic::Code::FailedPrecondition,
        ),
        (
            exesdb_types::StoreError::NotLeader {
                leader_node_id: None,
                leader_addr: None,
            },
            tonic::Code::FailedPrecondition,
        ),
    ];
    for (error, code) in cases {
        let sent = convert::status(&error);
        assert_eq!(sent.code(), code, "{error}");
        let code_header = sent
            .metadata()
            .get("exesdb-error-code")
            .and_then(|value| value.to_str().ok());
        assert_eq!(code_header, Some(error.code()), "{error}");
        assert_eq!(convert::store_error(&sent), Some(error.clone()), "{error}");
    }
}
