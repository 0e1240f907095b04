//! Settings of one store's System: where it keeps its data and every limit it enforces.
//!
//! Every limit is a named setting with its unit last (`append_events_max`, `writer_idle_ms`);
//! the defaults suit a small server and can all be changed.

use std::path::PathBuf;
use std::time::Duration;

use crate::error::StartError;
use crate::system::core::store::store_registry::NodeStores;
use crate::system::gateway::pubsub::ExternalBus;

/// The longest store id, in bytes; store ids name directories, so they stay short and plain.
pub(crate) const STORE_ID_BYTES_MAX: usize = 64;

/// Limits the store enforces on requests; exceeding one gives `limit_exceeded`, never a crash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Data plus metadata of one event.
    pub event_bytes_max: u64,
    /// Events in one append.
    pub append_events_max: u64,
    /// Data plus metadata of all events in one append.
    pub append_bytes_max: u64,
    /// Events returned by one read (a page).
    pub read_events_max: u64,
    /// Bytes (data, metadata, type and stream id) a page of a streamed gRPC read holds at
    /// most, past its first event: with large events, `read_events_max` alone would let one
    /// page hold gigabytes.
    pub read_page_bytes_max: u64,
    /// Snapshot data plus metadata.
    pub snapshot_bytes_max: u64,
    /// Messages buffered for one subscriber; a subscriber that falls this far behind is fed
    /// from storage as it reads, never from memory.
    pub subscriber_buffer_events_max: usize,
    /// Bytes (as `RecordedEvent::size_bytes` counts them) of the events buffered for one
    /// subscriber; an event larger than this is buffered alone.
    pub subscriber_buffer_bytes_max: u64,
    /// Subscriptions one store serves at once.
    pub subscriptions_max: usize,
    /// Recently committed events kept decoded in memory, shared by the subscribers that are
    /// live (0 turns the tail off: every subscriber then reads storage).
    pub commit_tail_events_max: usize,
    /// Bytes (as `RecordedEvent::size_bytes` counts them) of the commit tail.
    pub commit_tail_bytes_max: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            event_bytes_max: 1024 * 1024,
            append_events_max: 10_000,
            append_bytes_max: 16 * 1024 * 1024,
            read_events_max: 10_000,
            read_page_bytes_max: 16 * 1024 * 1024,
            snapshot_bytes_max: 16 * 1024 * 1024,
            subscriber_buffer_events_max: 1_024,
            subscriber_buffer_bytes_max: 16 * 1024 * 1024,
            subscriptions_max: 10_000,
            commit_tail_events_max: 16_384,
            commit_tail_bytes_max: 16 * 1024 * 1024,
        }
    }
}

/// Restart intensity of a supervisor: more than `restarts_max` within `period_ms` and the
/// supervisor gives up, stops its children and fails, so its own parent decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Intensity {
    /// Restarts tolerated within the period.
    pub restarts_max: u32,
    /// The sliding window, in milliseconds.
    pub period_ms: u64,
}

impl Intensity {
    pub(crate) fn period(&self) -> Duration {
        Duration::from_millis(self.period_ms)
    }
}

impl Default for Intensity {
    /// OTP's default: 3 restarts in 5 seconds.
    fn default() -> Self {
        Intensity {
            restarts_max: 3,
            period_ms: 5_000,
        }
    }
}

/// Sizes of the worker pools and the queues in front of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolSettings {
    /// Partitions of `StreamsWriters` (each a dynamic supervisor of per-stream writers).
    pub streams_writers_partitions: usize,
    /// Partitions of `StreamsReaders`.
    pub streams_readers_partitions: usize,
    /// Partitions of `SnapshotsWriters` and of `SnapshotsReaders`.
    pub snapshots_partitions: usize,
    /// Partitions of `EmitterPools`.
    pub emitter_partitions: usize,
    /// Partitions of `GatewayWorkers`.
    pub gateway_partitions: usize,
    /// Gateway workers (requests are spread over them by stream).
    pub gateway_workers: usize,
    /// Requests the gateway runs at once; one more gets `unavailable` at once, not a queue.
    pub gateway_requests_in_flight_max: usize,
    /// Events buffered per streaming read; a slow reader holds the read, not more memory.
    pub read_stream_buffer_events: usize,
    /// Log records an emitter scans in one step.
    pub emitter_scan_events_max: u64,
    /// Emitters (one per subscription being delivered) one partition of `EmitterPools`, and
    /// gateway workers one partition of `GatewayWorkers`, run at once; a request for one more
    /// gets `unavailable`.
    pub workers_per_partition_max: usize,
    /// Workers one partition of `StreamsWriters`, `StreamsReaders`, `SnapshotsWriters` or
    /// `SnapshotsReaders` runs at most. Streams (and snapshot keys) share them by hash, one
    /// stream always the same worker, so the number of streams is never bounded by it.
    pub stream_workers_per_partition_max: usize,
    /// A writer with no request for this long stops.
    pub writer_idle_ms: u64,
    /// A reader with no request for this long stops.
    pub reader_idle_ms: u64,
}

impl Default for PoolSettings {
    fn default() -> Self {
        PoolSettings {
            streams_writers_partitions: 4,
            streams_readers_partitions: 4,
            snapshots_partitions: 2,
            emitter_partitions: 2,
            gateway_partitions: 2,
            gateway_workers: 8,
            gateway_requests_in_flight_max: 4_096,
            read_stream_buffer_events: 1_024,
            emitter_scan_events_max: 4_096,
            workers_per_partition_max: 16_384,
            // Writers hand appends on without waiting for the commit, so a few hundred serve
            // any load; each costs a process and its mailbox.
            stream_workers_per_partition_max: 64,
            writer_idle_ms: 10_000,
            reader_idle_ms: 10_000,
        }
    }
}

/// Settings of the Store's committer (group commit).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitSettings {
    /// Commands waiting for the committer; a writer waits when the queue is full.
    pub commit_queue_commands_max: usize,
    /// Commands applied in one storage batch (one fsync).
    pub commit_batch_commands_max: usize,
    /// Stream versions kept in memory; older entries are re-read from storage.
    pub stream_head_cache_entries_max: usize,
    /// Requests (appends, reads, snapshot calls) in flight through the API at once.
    pub requests_in_flight_max: usize,
    /// How long a request waits for a free slot before `unavailable`.
    pub request_admission_wait_ms: u64,
}

impl Default for CommitSettings {
    fn default() -> Self {
        CommitSettings {
            commit_queue_commands_max: 8_192,
            commit_batch_commands_max: 2_048,
            stream_head_cache_entries_max: 100_000,
            requests_in_flight_max: 8_192,
            request_admission_wait_ms: 5_000,
        }
    }
}

/// Settings of the storage engine (fjall).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageSettings {
    /// Size at which a keyspace's memtable is sealed and flushed. Each flush of the log's
    /// memtable stalls the commits that share the disk with it for about as long as it takes,
    /// and every keyspace's memtable is held in memory: 16 MiB keeps both small at little cost
    /// in throughput (DECISIONS.md, "Memtables of 16 MiB").
    pub memtable_bytes_max: u64,
    /// Journal kept before memtables must be flushed; bounds the replay on restart.
    pub journal_bytes_max: u64,
    /// Block cache for reads.
    pub cache_bytes_max: u64,
    /// Free space the disk must keep: below it, writes are refused (`unavailable`, storage
    /// full) before they reach the engine, so a full disk never fails a journal write (which
    /// would poison the engine until a restart) and memtable flushes still have room. Writes
    /// resume on their own once space is freed.
    pub disk_free_bytes_min: u64,
    /// How long reopening the engine after a failed write waits for readers still using the
    /// failed one to finish, in milliseconds; past it the reopen is retried with the next write.
    pub reopen_wait_ms: u64,
    /// Read every table file at start and refuse to start, naming the file, if a block fails
    /// its checksum. Off by default: it reads all the data (seconds per GiB), where a normal
    /// start reads only what recovery needs and finds damaged blocks when they are read.
    pub verify_tables_on_start: bool,
}

impl Default for StorageSettings {
    fn default() -> Self {
        StorageSettings {
            memtable_bytes_max: 16 * 1024 * 1024,
            journal_bytes_max: 128 * 1024 * 1024,
            cache_bytes_max: 64 * 1024 * 1024,
            disk_free_bytes_min: 256 * 1024 * 1024,
            reopen_wait_ms: 5_000,
            verify_tables_on_start: false,
        }
    }
}

/// Cluster mode: who this node is, how it finds its peers, how its Raft groups elect, and the
/// transport their calls go over (the server's peer port).
#[derive(Clone)]
pub struct ClusterConfig {
    /// This node's id: generated once and kept in the data directory ([`node_id`]).
    pub node_id: u64,
    /// Nodes join only a cluster of this name.
    pub cluster_name: String,
    /// How many nodes form a new cluster; used only to bootstrap one.
    pub cluster_size: usize,
    /// Peer addresses of other nodes (`--seeds`).
    pub seeds: Vec<String>,
    /// The address peers reach this node at (`--peer-advertise`).
    pub peer_advertise: String,
    /// The address clients reach this node at (`--listen`, as advertised).
    pub client_advertise: String,
    /// A follower that hears nothing from a leader for a random time in this range stands.
    pub election_timeout_min_ms: u64,
    /// See `election_timeout_min_ms`.
    pub election_timeout_max_ms: u64,
    /// How often a leader reminds its followers.
    pub heartbeat_interval_ms: u64,
    /// A write not committed within this is answered `unavailable`, outcome unknown.
    pub write_timeout_ms: u64,
    /// How often discovery asks the seeds who they are, until the cluster is formed.
    pub discovery_interval_ms: u64,
    /// The store's group snapshots the whole store after this many log entries, and keeps as
    /// many behind the snapshot for followers that catch up from the log.
    pub snapshot_every_entries: u64,
    /// Whether a read must see every write acknowledged before it began (the default), or
    /// may be served from what this node has applied.
    pub read_consistency: ReadConsistency,
    /// How the store's Raft group reaches other nodes.
    pub transport: std::sync::Arc<dyn crate::PeerTransport>,
}

impl ClusterConfig {
    /// Defaults for everything but identity, addresses and transport.
    pub fn new(
        node_id: u64,
        cluster_name: impl Into<String>,
        cluster_size: usize,
        peer_advertise: impl Into<String>,
        client_advertise: impl Into<String>,
        transport: std::sync::Arc<dyn crate::PeerTransport>,
    ) -> Self {
        ClusterConfig {
            node_id,
            cluster_name: cluster_name.into(),
            cluster_size,
            seeds: Vec::new(),
            peer_advertise: peer_advertise.into(),
            client_advertise: client_advertise.into(),
            election_timeout_min_ms: 500,
            election_timeout_max_ms: 1_000,
            heartbeat_interval_ms: 100,
            write_timeout_ms: 10_000,
            discovery_interval_ms: 250,
            snapshot_every_entries: 100_000,
            read_consistency: ReadConsistency::Linearizable,
            transport,
        }
    }
}

/// What a read in cluster mode waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReadConsistency {
    /// A read sees every write acknowledged before it began, on any node: the node learns the
    /// leader's commit index (confirmed by a quorum) and waits until it has applied that far.
    #[default]
    Linearizable,
    /// A read is served from what this node has applied: no round trip, and on a follower it
    /// may miss the newest writes.
    Stale,
}

impl std::fmt::Debug for ClusterConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterConfig")
            .field("node_id", &self.node_id)
            .field("cluster_name", &self.cluster_name)
            .field("cluster_size", &self.cluster_size)
            .field("seeds", &self.seeds)
            .field("peer_advertise", &self.peer_advertise)
            .field("client_advertise", &self.client_advertise)
            .field("read_consistency", &self.read_consistency)
            .finish_non_exhaustive()
    }
}

/// The file in a data directory that holds the node's id.
const NODE_ID_FILE: &str = "NODE_ID";

/// This node's id, generated the first time and kept in `data_dir`, so it is never given by an
/// operator and never reused: openraft cannot detect the split brain a reused id causes.
pub fn node_id(data_dir: &std::path::Path) -> Result<u64, StartError> {
    let io = |path: &std::path::Path| {
        let path = path.to_path_buf();
        move |source| StartError::Io { path, source }
    };
    let path = data_dir.join(NODE_ID_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => text
            .trim()
            .parse::<u64>()
            .map_err(|_| StartError::CorruptFile {
                path: path.clone(),
                detail: format!(
                    "it should hold this node's id, a number, and holds {:?}; restore it from a \
                 backup, or wipe the directory and add the node to the cluster again",
                    text.trim()
                ),
            }),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(data_dir).map_err(io(data_dir))?;
            // The low 62 bits of a v7 UUID are random; 0 is never an id.
            let id = (uuid::Uuid::now_v7().as_u128() as u64 & ((1 << 62) - 1)).max(1);
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, format!("{id}\n")).map_err(io(&tmp))?;
            std::fs::File::open(&tmp)
                .and_then(|file| file.sync_all())
                .map_err(io(&tmp))?;
            std::fs::rename(&tmp, &path).map_err(io(&path))?;
            std::fs::File::open(data_dir)
                .and_then(|dir| dir.sync_all())
                .map_err(io(data_dir))?;
            Ok(id)
        }
        Err(error) => Err(io(&path)(error)),
    }
}

/// Everything needed to start one store's System.
#[derive(Debug, Clone)]
pub struct SystemConfig {
    /// The node's data directory; this store lives in `<data_dir>/<store_id>`.
    pub data_dir: PathBuf,
    /// The store's name (`default` unless told otherwise).
    pub store_id: String,
    /// Request limits.
    pub limits: Limits,
    /// Pool sizes and idle times.
    pub pools: PoolSettings,
    /// Committer settings.
    pub commit: CommitSettings,
    /// Storage engine settings.
    pub storage: StorageSettings,
    /// Restart intensity of every supervisor in the tree.
    pub intensity: Intensity,
    /// How long a process gets to stop before it is killed, in milliseconds.
    pub shutdown_timeout_ms: u64,
    /// The stores hosted by this node; Systems started with the same value list each other.
    pub node_stores: NodeStores,
    /// An application's bus to which `ExESDB.PubSub` forwards every event (none by default).
    pub event_bus: Option<ExternalBus>,
    /// Cluster mode: the store is one Raft group across the cluster's nodes (none: single
    /// mode).
    pub cluster: Option<ClusterConfig>,
}

impl SystemConfig {
    /// A configuration with the defaults for `store_id` under `data_dir`.
    pub fn new(data_dir: impl Into<PathBuf>, store_id: impl Into<String>) -> Self {
        SystemConfig {
            data_dir: data_dir.into(),
            store_id: store_id.into(),
            limits: Limits::default(),
            pools: PoolSettings::default(),
            commit: CommitSettings::default(),
            storage: StorageSettings::default(),
            intensity: Intensity::default(),
            shutdown_timeout_ms: 10_000,
            node_stores: NodeStores::default(),
            event_bus: None,
            cluster: None,
        }
    }

    /// The directory of this store's data.
    pub fn store_dir(&self) -> PathBuf {
        self.data_dir.join(&self.store_id)
    }

    pub(crate) fn validate(&self) -> Result<(), StartError> {
        validate_store_id(&self.store_id).map_err(StartError::InvalidConfig)?;
        let pools = &self.pools;
        for (name, value) in [
            (
                "streams_writers_partitions",
                pools.streams_writers_partitions,
            ),
            (
                "streams_readers_partitions",
                pools.streams_readers_partitions,
            ),
            ("snapshots_partitions", pools.snapshots_partitions),
            ("emitter_partitions", pools.emitter_partitions),
            ("gateway_partitions", pools.gateway_partitions),
            ("workers_per_partition_max", pools.workers_per_partition_max),
            (
                "stream_workers_per_partition_max",
                pools.stream_workers_per_partition_max,
            ),
            ("gateway_workers", pools.gateway_workers),
            (
                "gateway_requests_in_flight_max",
                pools.gateway_requests_in_flight_max,
            ),
            ("read_stream_buffer_events", pools.read_stream_buffer_events),
            (
                "commit_queue_commands_max",
                self.commit.commit_queue_commands_max,
            ),
            (
                "commit_batch_commands_max",
                self.commit.commit_batch_commands_max,
            ),
            (
                "stream_head_cache_entries_max",
                self.commit.stream_head_cache_entries_max,
            ),
            ("requests_in_flight_max", self.commit.requests_in_flight_max),
        ] {
            if value == 0 {
                return Err(StartError::InvalidConfig(format!(
                    "{name} must be at least 1"
                )));
            }
        }
        // fjall refuses journals under 64 MiB.
        if self.storage.journal_bytes_max < 64 * 1024 * 1024 {
            return Err(StartError::InvalidConfig(
                "journal_bytes_max must be at least 64 MiB".into(),
            ));
        }
        if self.storage.memtable_bytes_max < 1024 * 1024 {
            return Err(StartError::InvalidConfig(
                "memtable_bytes_max must be at least 1 MiB".into(),
            ));
        }
        let limits = &self.limits;
        if limits.subscriber_buffer_events_max == 0
            || limits.subscriber_buffer_bytes_max == 0
            || self.pools.emitter_scan_events_max == 0
        {
            return Err(StartError::InvalidConfig(
                "subscriber_buffer_events_max, subscriber_buffer_bytes_max and \
                 emitter_scan_events_max must be at least 1"
                    .into(),
            ));
        }
        if limits.append_events_max == 0
            || limits.read_events_max == 0
            || limits.read_page_bytes_max == 0
        {
            return Err(StartError::InvalidConfig(
                "append_events_max and read_events_max must be at least 1".into(),
            ));
        }
        if limits.event_bytes_max > limits.append_bytes_max {
            return Err(StartError::InvalidConfig(
                "event_bytes_max cannot exceed append_bytes_max".into(),
            ));
        }
        Ok(())
    }
}

/// Store ids name directories: 1..=64 ASCII letters, digits, `-` or `_`.
pub(crate) fn validate_store_id(store_id: &str) -> Result<(), String> {
    let plain = store_id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if store_id.is_empty() || store_id.len() > STORE_ID_BYTES_MAX || !plain {
        return Err(format!(
            "store id {store_id:?} must be 1 to {STORE_ID_BYTES_MAX} ASCII letters, digits, '-' or '_'"
        ));
    }
    Ok(())
}
