//! Request bytes from the network, through what the gateway and the store do with them before
//! anything is written: protobuf decoding, conversion to the store's types, and validation.
//! The first byte picks the request type, the rest is the message.
//!
//! Besides "no panic", two properties: a definition that converts comes back the same from its
//! wire form and from its stored form, and each conversion that succeeds survives the trip to
//! the wire and back unchanged.

#![no_main]

use exesdb::Limits;
use exesdb::fuzzing::{AppendCommand, PreparedEvent, validate_append};
use exesdb_proto::convert;
use exesdb_proto::v1 as wire;
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|input: &[u8]| {
    let Some((&kind, bytes)) = input.split_first() else {
        return;
    };
    match kind % 8 {
        0 => append(bytes),
        1 => read_stream(bytes),
        2 => read_all(bytes),
        3 => subscribe(bytes),
        4 => save_subscription(bytes),
        5 => consume(bytes),
        6 => snapshot(bytes),
        _ => list_streams(bytes),
    }
});

/// `AppendEvents`: the gateway converts; the stream writer fixes ids; the store validates.
fn append(bytes: &[u8]) {
    let Ok(request) = wire::AppendEventsRequest::decode(bytes) else {
        return;
    };
    let expected = convert::expected_version(request.expected);
    assert_eq!(
        convert::expected_version(Some(convert::expected_version_to_wire(expected))),
        expected
    );
    let mut events = Vec::new();
    for (index, event) in request.events.into_iter().enumerate() {
        let Ok(event) = convert::new_event(event) else {
            return;
        };
        let again = convert::new_event(convert::new_event_to_wire(event.clone()));
        assert_eq!(again.ok().as_ref(), Some(&event), "new event round trip");
        events.push(PreparedEvent {
            client_event_id: event.event_id.is_some(),
            // Distinct, like the generated ids (the store uses UUIDv7; any distinct id does).
            event_id: event
                .event_id
                .unwrap_or_else(|| uuid::Uuid::from_u128(index as u128 + 1)),
            event_type: event.event_type,
            data: event.data,
            metadata: event.metadata,
            data_content_type: event.data_content_type,
            metadata_content_type: event.metadata_content_type,
        });
    }
    if exesdb::validate_stream_id(&request.stream_id, false).is_err() {
        return;
    }
    let command = AppendCommand {
        stream_id: request.stream_id,
        expected,
        events,
        created_micros: 0,
    };
    let _ = validate_append(&command, &Limits::default());
}

fn read_stream(bytes: &[u8]) {
    let Ok(request) = wire::ReadStreamRequest::decode(bytes) else {
        return;
    };
    if let Ok(direction) = convert::direction(request.direction) {
        assert_eq!(
            convert::direction(convert::direction_to_wire(direction)).ok(),
            Some(direction)
        );
    }
    let _ = exesdb::validate_stream_id(&request.stream_id, true);
}

fn read_all(bytes: &[u8]) {
    let Ok(request) = wire::ReadAllRequest::decode(bytes) else {
        return;
    };
    let _ = convert::direction(request.direction);
}

fn list_streams(bytes: &[u8]) {
    let _ = wire::ListStreamsRequest::decode(bytes);
}

fn subscribe(bytes: &[u8]) {
    let Ok(request) = wire::SubscribeRequest::decode(bytes) else {
        return;
    };
    let start = convert::start_from(request.start);
    assert_eq!(
        convert::start_from(Some(convert::start_from_to_wire(start))),
        start
    );
    if let Ok(selector) = convert::selector(request.selector) {
        let _ = selector.validate();
        let again = convert::selector(Some(convert::selector_to_wire(&selector)));
        assert_eq!(again.ok().as_ref(), Some(&selector), "selector round trip");
    }
}

/// `SaveSubscription`: converted, validated, then stored as JSON; what is stored must read
/// back as the same definition.
fn save_subscription(bytes: &[u8]) {
    let Ok(request) = wire::SaveSubscriptionRequest::decode(bytes) else {
        return;
    };
    let Ok(definition) = convert::definition(request.definition) else {
        return;
    };
    let from_wire = convert::definition(Some(convert::definition_to_wire(&definition)));
    assert_eq!(
        from_wire.ok().as_ref(),
        Some(&definition),
        "wire round trip"
    );
    if definition.validate().is_err() {
        return;
    }
    let stored = exesdb::SubscriptionDefinition::decode(&definition.encode());
    assert_eq!(stored.ok().as_ref(), Some(&definition), "stored round trip");
}

fn consume(bytes: &[u8]) {
    use wire::consume_request::Request;
    let Ok(request) = wire::ConsumeRequest::decode(bytes) else {
        return;
    };
    if let Some(Request::Nack(nack)) = request.request
        && let Ok(action) = convert::nack_action(nack.action)
    {
        assert_eq!(
            convert::nack_action(convert::nack_action_to_wire(action)).ok(),
            Some(action)
        );
    }
}

fn snapshot(bytes: &[u8]) {
    if let Ok(request) = wire::ReadSnapshotRequest::decode(bytes) {
        let version = convert::snapshot_version(request.version);
        assert_eq!(
            convert::snapshot_version(Some(convert::snapshot_version_to_wire(version))),
            version
        );
    }
    let _ = wire::RecordSnapshotRequest::decode(bytes);
    let _ = wire::DeleteSnapshotRequest::decode(bytes);
    let _ = wire::ListSnapshotsRequest::decode(bytes);
}
