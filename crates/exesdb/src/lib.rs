//! ExESDB in Rust: an event store for event-sourced systems, embeddable in a Rust program or
//! run as a server, built as the supervision tree of the Elixir original.
//!
//! Start a store with [`System::start`], then append, read, snapshot and stop through the
//! returned [`System`]. `docs/ARCHITECTURE.md` maps the code; `docs/DURABILITY.md` says when
//! bytes reach the disk.

mod config;
mod error;
mod raft;
mod storage;
mod supervision;
mod system;

pub use config::{
    ClusterConfig, CommitSettings, Intensity, Limits, PoolSettings, ReadConsistency,
    StorageSettings, SystemConfig, node_id,
};
pub use error::StartError;
pub use exesdb_types::{
    ALL_STREAM, AppendResult, CATEGORY_STREAM_PREFIX, ClusterMember, ClusterStatus,
    ConsumerStrategy, Delivery, Direction, EVENT_TYPE_STREAM_PREFIX, EventRef, ExpectedVersion,
    IndexedStream, Kind, NackAction, NewEvent, ReadAllRequest, RecordedEvent, Selector, Snapshot,
    SnapshotVersion, StartFrom, StoreError, Strategy, StreamInfo, SubscriptionDefinition,
    SubscriptionMessage, TreeSnapshot, category_of, validate_stream_id,
};
pub use raft::{
    PeerAnswers, PeerCall, PeerCallError, PeerCallFuture, PeerCallKind, PeerMessages,
    PeerStreamFuture, PeerTransport,
};
pub use storage::EventPage;
#[cfg(feature = "fault-injection")]
pub use storage::fault::{IoFault, StorageFault};
pub use system::context::CommitStats;
pub use system::core::notification::persistent::PersistentConsumer;
pub use system::core::notification::subscription::Subscription;
pub use system::core::store::store_registry::NodeStores;
pub use system::gateway::Gateway;
pub use system::gateway::pubsub::{BusError, EventBus, ExternalBus};
pub use system::hops::{AppendHops, Hop};
pub use system::{AllPages, StoreApi, System};

/// What the fuzz targets and the storage-damage tests reach inside: the record codecs, the
/// table check and the append validation. Not part of the supported API.
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::storage::codec::{
        Chunk, ChunkWriter, EventRecord, SnapshotRecord, decode_event, decode_event_header,
        open_blob, seal_blob,
    };
    pub use crate::storage::table_check::find_damaged_table;
    pub use crate::system::core::store::state_machine::{
        AppendCommand, PreparedEvent, validate_append,
    };
}
