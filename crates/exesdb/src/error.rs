//! Typed errors of the store: the stable codes every interface (Rust API, gRPC, CLI) shares.

use std::path::PathBuf;

/// What went wrong with one request. Operating errors only: programmer errors are assertions
/// that crash the process handling the request, and its supervisor decides what restarts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The stream's version is not the one the append expected.
    #[error("wrong expected version: expected {expected}, current version is {current}")]
    WrongExpectedVersion {
        /// The expected version as given (`any`, `no_stream`, `stream_exists` or a number).
        expected: String,
        /// The stream's version when the append was applied (-1: no stream).
        current: i64,
    },
    /// The stream has no events.
    #[error("stream not found: {stream_id}")]
    StreamNotFound {
        /// The stream asked for.
        stream_id: String,
    },
    /// No snapshot matches the request.
    #[error("snapshot not found: {0}")]
    SnapshotNotFound(String),
    /// Some, but not all, of the append's event ids are already recorded where the expected
    /// version points: neither a retry nor a new append.
    #[error("idempotency conflict: {0}")]
    IdempotencyConflict(String),
    /// The request is malformed (bad stream id, empty event type, ...).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The request is well formed but exceeds a configured limit.
    #[error("limit exceeded: {limit} is {max}, the request needs {actual}")]
    LimitExceeded {
        /// The setting's name, e.g. `append_events_max`.
        limit: String,
        /// The setting's value.
        max: u64,
        /// What the request asked for.
        actual: u64,
    },
    /// The store named in the request is not hosted here.
    #[error("store not found: {0}")]
    StoreNotFound(String),
    /// This node cannot take the request now (restarting, stopping, storage failing, full).
    #[error("unavailable: {0}")]
    Unavailable(String),
}

impl StoreError {
    /// The stable machine-readable code, as in the gRPC details and the CLI's `--json`.
    pub fn code(&self) -> &'static str {
        match self {
            StoreError::WrongExpectedVersion { .. } => "wrong_expected_version",
            StoreError::StreamNotFound { .. } => "stream_not_found",
            StoreError::SnapshotNotFound(_) => "snapshot_not_found",
            StoreError::IdempotencyConflict(_) => "idempotency_conflict",
            StoreError::InvalidArgument(_) => "invalid_argument",
            StoreError::LimitExceeded { .. } => "limit_exceeded",
            StoreError::StoreNotFound(_) => "store_not_found",
            StoreError::Unavailable(_) => "unavailable",
        }
    }

    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        StoreError::InvalidArgument(message.into())
    }

    pub(crate) fn unavailable(message: impl Into<String>) -> Self {
        StoreError::Unavailable(message.into())
    }

    pub(crate) fn limit(limit: &str, max: u64, actual: u64) -> Self {
        StoreError::LimitExceeded {
            limit: limit.to_string(),
            max,
            actual,
        }
    }
}

/// Why a store's System could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The configuration is not usable.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    /// The data directory was written by a format this build does not know.
    #[error(
        "data directory {path} has format version {found}; this build reads version {supported}. \
         Refusing to open it rather than reinterpret it"
    )]
    UnsupportedFormat {
        /// The directory.
        path: PathBuf,
        /// The format found there.
        found: String,
        /// The format this build writes and reads.
        supported: u32,
    },
    /// The directory holds files but no format marker: it is not ours, or it is damaged.
    #[error("{path} is not empty and has no FORMAT file: not an exesdb data directory")]
    NotADataDirectory {
        /// The directory.
        path: PathBuf,
    },
    /// Reading or creating the data directory failed.
    #[error("cannot use data directory {path}: {source}")]
    Io {
        /// The directory or file.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The storage engine refused to open the data.
    #[error("cannot open storage in {path}: {message}")]
    Storage {
        /// The directory.
        path: PathBuf,
        /// The storage engine's error.
        message: String,
    },
    /// The stored data contradicts itself (a checksum or an invariant failed).
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// A file of the data directory is damaged in a way that would lose acknowledged data.
    #[error("{path} is corrupt: {detail}")]
    CorruptFile {
        /// The damaged file.
        path: PathBuf,
        /// What is wrong and what to do.
        detail: String,
    },
    /// One of a node's stores failed to start.
    #[error("store {store_id}: {source}")]
    Store {
        /// The store.
        store_id: String,
        /// Why it failed.
        source: Box<StartError>,
    },
    /// A process of the supervision tree failed to start.
    #[error("the supervision tree failed to start: {0}")]
    Tree(String),
}
