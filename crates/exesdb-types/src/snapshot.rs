//! Snapshots of aggregates and projections, as recorded and as asked for.

/// A snapshot of an aggregate or a projection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// Who took it (e.g. an aggregate type).
    pub source_uuid: String,
    /// Of what (e.g. the aggregate's stream).
    pub stream_uuid: String,
    /// The stream version it reflects.
    pub version: u64,
    /// The snapshot itself.
    pub data: Vec<u8>,
    /// Anything kept beside it.
    pub metadata: Vec<u8>,
    /// When it was recorded, in microseconds since the Unix epoch (set by the store).
    pub created_micros: i64,
}

/// Which snapshot a read wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotVersion {
    /// Exactly this version.
    Exact(u64),
    /// The newest at or below this version.
    AtOrBelow(u64),
    /// The newest there is.
    Latest,
}
