//! The data model of the contract: events as written and as recorded, expected versions,
//! append results, and the validation of stream ids.

use std::fmt;

use uuid::Uuid;

use crate::error::StoreError;

/// The id of the global stream of every event in the store, in position order.
pub const ALL_STREAM: &str = "$all";

/// The longest stream id the contract allows, in bytes.
pub const STREAM_ID_BYTES_MAX: usize = 512;
/// The longest event type the contract allows, in bytes.
pub const EVENT_TYPE_BYTES_MAX: usize = 256;

/// The content type events get when the writer names none.
pub const DEFAULT_CONTENT_TYPE: &str = "application/octet-stream";

/// An event as a client writes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    /// The event's id; the store generates a UUID v7 when it is `None`.
    pub event_id: Option<Uuid>,
    /// What happened, e.g. `OrderPlaced` (1..=256 bytes).
    pub event_type: String,
    /// The payload.
    pub data: Vec<u8>,
    /// Anything the writer wants to keep beside the payload.
    pub metadata: Vec<u8>,
    /// How `data` is encoded.
    pub data_content_type: String,
    /// How `metadata` is encoded.
    pub metadata_content_type: String,
}

impl NewEvent {
    /// An event with the given type and data, no metadata, and the default content types.
    pub fn new(event_type: impl Into<String>, data: impl Into<Vec<u8>>) -> Self {
        NewEvent {
            event_id: None,
            event_type: event_type.into(),
            data: data.into(),
            metadata: Vec::new(),
            data_content_type: DEFAULT_CONTENT_TYPE.to_string(),
            metadata_content_type: DEFAULT_CONTENT_TYPE.to_string(),
        }
    }

    /// An event whose data is JSON text.
    pub fn json(event_type: impl Into<String>, data: &serde_json::Value) -> Self {
        let mut event = NewEvent::new(event_type, data.to_string());
        event.data_content_type = "application/json".to_string();
        event
    }

    /// Sets the event id, making a retry of the same append idempotent.
    pub fn with_id(mut self, event_id: Uuid) -> Self {
        self.event_id = Some(event_id);
        self
    }

    /// Sets the metadata and its content type.
    pub fn with_metadata(mut self, metadata: impl Into<Vec<u8>>, content_type: &str) -> Self {
        self.metadata = metadata.into();
        self.metadata_content_type = content_type.to_string();
        self
    }
}

/// An event as the store recorded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedEvent {
    /// The stream it belongs to.
    pub stream_id: String,
    /// Its 0-based version within the stream.
    pub event_number: u64,
    /// Its 0-based, gapless place in the store's global order.
    pub position: u64,
    /// Its id.
    pub event_id: Uuid,
    /// What happened.
    pub event_type: String,
    /// The payload.
    pub data: Vec<u8>,
    /// The writer's metadata.
    pub metadata: Vec<u8>,
    /// How `data` is encoded.
    pub data_content_type: String,
    /// How `metadata` is encoded.
    pub metadata_content_type: String,
    /// When the store accepted it: microseconds since the Unix epoch, UTC.
    pub created_micros: i64,
}

impl RecordedEvent {
    /// Its variable-size bytes: data, metadata, type, content types and stream id. What read
    /// byte limits count.
    pub fn size_bytes(&self) -> u64 {
        self.as_event_ref().size_bytes()
    }

    /// The event lent, as a read's page lends one.
    pub fn as_event_ref(&self) -> EventRef<'_> {
        EventRef {
            stream_id: &self.stream_id,
            event_number: self.event_number,
            position: self.position,
            event_id: self.event_id,
            event_type: &self.event_type,
            data: &self.data,
            metadata: &self.metadata,
            data_content_type: &self.data_content_type,
            metadata_content_type: &self.metadata_content_type,
            created_micros: self.created_micros,
        }
    }
}

/// A recorded event borrowed from where it was read, as a page of a read yields it: the
/// same fields as [`RecordedEvent`], copied only if the reader asks
/// ([`EventRef::to_event`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventRef<'a> {
    /// The stream it belongs to.
    pub stream_id: &'a str,
    /// Its 0-based version within the stream.
    pub event_number: u64,
    /// Its 0-based, gapless place in the store's global order.
    pub position: u64,
    /// Its id.
    pub event_id: Uuid,
    /// What happened.
    pub event_type: &'a str,
    /// The payload.
    pub data: &'a [u8],
    /// The writer's metadata.
    pub metadata: &'a [u8],
    /// How `data` is encoded.
    pub data_content_type: &'a str,
    /// How `metadata` is encoded.
    pub metadata_content_type: &'a str,
    /// When the store accepted it: microseconds since the Unix epoch, UTC.
    pub created_micros: i64,
}

impl EventRef<'_> {
    /// An owned copy.
    pub fn to_event(&self) -> RecordedEvent {
        RecordedEvent {
            stream_id: self.stream_id.to_string(),
            event_number: self.event_number,
            position: self.position,
            event_id: self.event_id,
            event_type: self.event_type.to_string(),
            data: self.data.to_vec(),
            metadata: self.metadata.to_vec(),
            data_content_type: self.data_content_type.to_string(),
            metadata_content_type: self.metadata_content_type.to_string(),
            created_micros: self.created_micros,
        }
    }

    /// Its variable-size bytes: data, metadata, type, content types and stream id. What read
    /// byte limits count.
    pub fn size_bytes(&self) -> u64 {
        (self.data.len()
            + self.metadata.len()
            + self.event_type.len()
            + self.data_content_type.len()
            + self.metadata_content_type.len()
            + self.stream_id.len()) as u64
    }
}

/// What version a stream must be at for an append to go ahead.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ExpectedVersion {
    /// No check.
    Any,
    /// The stream must have no events (version -1).
    NoStream,
    /// The stream must have at least one event.
    StreamExists,
    /// The stream's last event must have this number.
    Exact(u64),
}

impl fmt::Display for ExpectedVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExpectedVersion::Any => f.write_str("any"),
            ExpectedVersion::NoStream => f.write_str("no_stream"),
            ExpectedVersion::StreamExists => f.write_str("stream_exists"),
            ExpectedVersion::Exact(version) => write!(f, "{version}"),
        }
    }
}

/// Where an append landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AppendResult {
    /// Event number of the first event written.
    pub first_event_number: u64,
    /// Event number of the last event written: the stream's new version.
    pub last_event_number: u64,
    /// Global position of the first event written.
    pub first_position: u64,
    /// Global position of the last event written.
    pub last_position: u64,
}

/// Which way a read goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Direction {
    /// Oldest first.
    #[default]
    Forward,
    /// Newest first.
    Backward,
}

/// A read of `$all`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReadAllRequest {
    /// The first position to consider; `None` is the start (forward) or the end (backward).
    pub from_position: Option<u64>,
    /// At most this many events are returned.
    pub count: u64,
    /// Which way to read.
    pub direction: Direction,
    /// Only events of streams whose id starts with this.
    pub stream_prefix: Option<String>,
    /// Only events of these types (all types when empty).
    pub event_types: Vec<String>,
    /// Stop once the events read hold at least this many bytes ([`RecordedEvent::size_bytes`]);
    /// at least one event is returned. A read that stops for this reason returns fewer than
    /// `count` events without having reached the end. `None`: no byte limit.
    pub bytes_max: Option<u64>,
}

/// A stream and its version, as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamInfo {
    /// The stream's id.
    pub stream_id: String,
    /// The number of its last event.
    pub version: u64,
}

/// Checks a stream id against the contract: UTF-8 (guaranteed by `&str`), 1..=512 bytes, no
/// control characters, and not reserved (`$...`) unless `allow_reserved`.
pub fn validate_stream_id(stream_id: &str, allow_reserved: bool) -> Result<(), StoreError> {
    if stream_id.is_empty() {
        return Err(StoreError::invalid("stream id is empty"));
    }
    if stream_id.len() > STREAM_ID_BYTES_MAX {
        return Err(StoreError::invalid(format!(
            "stream id is {} bytes; the most is {STREAM_ID_BYTES_MAX}",
            stream_id.len()
        )));
    }
    if stream_id.chars().any(char::is_control) {
        return Err(StoreError::invalid(
            "stream id contains a control character",
        ));
    }
    if !allow_reserved && crate::index::IndexedStream::parse(stream_id).is_some() {
        return Err(StoreError::invalid(format!(
            "stream {stream_id:?} reads one of the store's indexes: it is read-only"
        )));
    }
    if !allow_reserved && stream_id.starts_with('$') {
        return Err(StoreError::invalid(format!(
            "stream id {stream_id:?} starts with '$', which is reserved for system streams"
        )));
    }
    Ok(())
}
