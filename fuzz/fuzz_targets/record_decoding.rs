//! Stored-record bytes (as a torn write or a flipped bit on disk could leave them) through
//! every record decoder: each gives a value or `CorruptRecord`, never a panic. When a full
//! event decodes, the header-only decoder must agree with it.

#![no_main]

use exesdb::fuzzing as codec;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let event = codec::decode_event(7, bytes);
    let header = codec::decode_event_header(bytes);
    if let Ok(event) = &event {
        let (stream_id, event_id, event_type) = header.expect("a decodable event has a header");
        assert_eq!(stream_id, event.stream_id);
        assert_eq!(event_id, event.event_id);
        assert_eq!(event_type, event.event_type);
        assert_eq!(event.position, 7);
    }
    let _ = codec::SnapshotRecord::decode(bytes);
    // Subscription definitions are stored as JSON inside a checked blob.
    if let Ok(inner) = codec::open_blob(bytes) {
        let _ = exesdb::SubscriptionDefinition::decode(inner);
    }
});
