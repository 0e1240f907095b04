//! The contract every side of ExESDB in Rust shares: events as written and as recorded,
//! expected versions, reads, the secondary indexes, subscription selectors and definitions, snapshots, the
//! supervision tree as data, and the typed errors with their stable codes.
//!
//! The engine (`exesdb`), the server (`exesdb-server`) and the client (`exesdb-client`) all
//! speak these types; none of them depends on the others to do so. This crate knows nothing
//! of storage, processes or the network.

mod cluster;
mod error;
mod event;
mod index;
mod snapshot;
mod subscription;
mod tree;

pub use cluster::{ClusterMember, ClusterStatus};
pub use error::StoreError;
pub use event::{
    ALL_STREAM, AppendResult, DEFAULT_CONTENT_TYPE, Direction, EVENT_TYPE_BYTES_MAX, EventRef,
    ExpectedVersion, NewEvent, ReadAllRequest, RecordedEvent, STREAM_ID_BYTES_MAX, StreamInfo,
    validate_stream_id,
};
pub use index::{
    CATEGORY_SEPARATOR, CATEGORY_STREAM_PREFIX, EVENT_TYPE_STREAM_PREFIX, IndexedStream,
    category_of, reads_by_position, validate_readable_stream_id,
};
pub use snapshot::{Snapshot, SnapshotVersion};
pub use subscription::{
    ConsumerStrategy, Delivery, NackAction, Selector, StartFrom, SubscriptionDefinition,
    SubscriptionMessage, contains,
};
pub use tree::{Kind, Strategy, TreeSnapshot};
