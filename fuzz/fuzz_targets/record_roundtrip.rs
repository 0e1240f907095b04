//! Generated records through the encoders and back: every field must come back exactly, and
//! any change to one byte of the encoding must be refused (the checksum covers it all).

#![no_main]

use exesdb::fuzzing::{self as codec, EventRecord, SnapshotRecord};
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Input {
    stream_id: String,
    event_number: u64,
    event_id: u128,
    created_micros: i64,
    event_type: String,
    data_content_type: String,
    metadata_content_type: String,
    data: Vec<u8>,
    metadata: Vec<u8>,
    position: u64,
    /// Where to change the encoding, and the value xor-ed in (0 is made 1).
    flip_at: u16,
    flip_with: u8,
}

fuzz_target!(|input: Input| {
    let record = EventRecord {
        stream_id: &input.stream_id,
        event_number: input.event_number,
        event_id: uuid::Uuid::from_u128(input.event_id),
        created_micros: input.created_micros,
        event_type: &input.event_type,
        data_content_type: &input.data_content_type,
        metadata_content_type: &input.metadata_content_type,
        data: &input.data,
        metadata: &input.metadata,
    };
    let mut bytes = record.encode();
    let event = codec::decode_event(input.position, &bytes).expect("an encoded event decodes");
    assert_eq!(event.stream_id, input.stream_id);
    assert_eq!(event.event_number, input.event_number);
    assert_eq!(event.event_id.as_u128(), input.event_id);
    assert_eq!(event.created_micros, input.created_micros);
    assert_eq!(event.event_type, input.event_type);
    assert_eq!(event.data_content_type, input.data_content_type);
    assert_eq!(event.metadata_content_type, input.metadata_content_type);
    assert_eq!(event.data, input.data);
    assert_eq!(event.metadata, input.metadata);
    assert_eq!(event.position, input.position);
    flip(&mut bytes, input.flip_at, input.flip_with);
    assert!(
        codec::decode_event(input.position, &bytes).is_err(),
        "a changed event record was accepted"
    );

    let snapshot = SnapshotRecord {
        data: input.data.clone(),
        metadata: input.metadata.clone(),
        created_micros: input.created_micros,
    };
    let mut bytes = snapshot.encode();
    assert_eq!(
        SnapshotRecord::decode(&bytes).ok().as_ref(),
        Some(&snapshot)
    );
    flip(&mut bytes, input.flip_at, input.flip_with);
    assert!(
        SnapshotRecord::decode(&bytes).is_err(),
        "a changed snapshot was accepted"
    );

    let mut bytes = codec::seal_blob(&input.data);
    assert_eq!(codec::open_blob(&bytes).ok(), Some(input.data.as_slice()));
    flip(&mut bytes, input.flip_at, input.flip_with);
    assert!(
        codec::open_blob(&bytes).is_err(),
        "a changed blob was accepted"
    );
});

/// Changes one byte of `bytes` (which is never empty: it has a header).
fn flip(bytes: &mut [u8], at: u16, with: u8) {
    let at = usize::from(at) % bytes.len();
    bytes[at] ^= with.max(1);
}
