//! ExESDB in Rust: an event store for event-sourced systems, embeddable in a Rust program or
//! run as a server, built as the supervision tree of the Elixir original.
//!
//! Start a store with [`System::start`], then append, read, snapshot and stop through the
//! returned [`System`]. `docs/ARCHITECTURE.md` maps the code; `docs/DURABILITY.md` says when
//! bytes reach the disk.

pub mod config;
pub mod error;
pub mod event;
pub mod node;
pub mod storage;
pub mod supervision;
pub mod system;

pub use config::{CommitSettings, Intensity, Limits, PoolSettings, StorageSettings, SystemConfig};
pub use error::{StartError, StoreError};
pub use event::{
    ALL_STREAM, AppendResult, Direction, ExpectedVersion, NewEvent, ReadAllRequest, RecordedEvent,
    StreamInfo,
};
pub use node::{MetricsRenderer, Node, NodeHealth, StoreHealth};
#[cfg(feature = "fault-injection")]
pub use storage::fault::{IoFault, StorageFault};
pub use supervision::{Kind, Strategy, TreeSnapshot};
pub use system::context::CommitStats;
pub use system::core::notification::persistent::{
    ConsumerStrategy, Delivery, NackAction, PersistentConsumer, SubscriptionDefinition,
};
pub use system::core::notification::subscription::{
    Selector, StartFrom, Subscription, SubscriptionMessage,
};
pub use system::core::store::store_registry::NodeStores;
pub use system::gateway::pubsub::{EventBus, ExternalBus};
pub use system::{Snapshot, SnapshotVersion, StoreApi, System};
