//! The typed errors of a request, with the stable codes every interface (Rust API, gRPC, CLI)
//! shares.

/// What went wrong with one request. Operating errors only: programmer errors are assertions
/// that crash the process handling the request, and its supervisor decides what restarts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
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
    /// No persistent subscription has the name asked for.
    #[error("subscription not found: {0}")]
    SubscriptionNotFound(String),
    /// The store named in the request is not hosted here.
    #[error("store not found: {0}")]
    StoreNotFound(String),
    /// This node cannot take the request now (restarting, stopping, storage failing, full).
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// This cluster node does not lead the store, and the client asked to be told so rather
    /// than have the write forwarded. Send the request to the leader named, if one is known.
    #[error("not leader: {}", not_leader_text(.leader_node_id, .leader_addr))]
    NotLeader {
        /// The node the answering node knows to lead the store.
        leader_node_id: Option<u64>,
        /// Where clients reach that leader (`host:port`).
        leader_addr: Option<String>,
    },
}

fn not_leader_text(leader_node_id: &Option<u64>, leader_addr: &Option<String>) -> String {
    match (leader_node_id, leader_addr) {
        (Some(id), Some(addr)) => format!("node {id} at {addr} leads the store"),
        (Some(id), None) => format!("node {id} leads the store; its address is not known here"),
        _ => "no leader is known now; retry shortly".to_string(),
    }
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
            StoreError::SubscriptionNotFound(_) => "subscription_not_found",
            StoreError::StoreNotFound(_) => "store_not_found",
            StoreError::Unavailable(_) => "unavailable",
            StoreError::NotLeader { .. } => "not_leader",
        }
    }

    /// An `invalid_argument` error.
    pub fn invalid(message: impl Into<String>) -> Self {
        StoreError::InvalidArgument(message.into())
    }

    /// An `unavailable` error.
    pub fn unavailable(message: impl Into<String>) -> Self {
        StoreError::Unavailable(message.into())
    }

    /// A `limit_exceeded` error for the setting `limit`.
    pub fn limit(limit: &str, max: u64, actual: u64) -> Self {
        StoreError::LimitExceeded {
            limit: limit.to_string(),
            max,
            actual,
        }
    }
}
