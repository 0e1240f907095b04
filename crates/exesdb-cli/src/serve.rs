//! `exesdb serve`: every setting from flags, `EXESDB_*` environment variables or a TOML file
//! (`--config`), in that order of precedence, then the defaults.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::ValueEnum;
use exesdb::SystemConfig;
use exesdb_server::{MetricsRenderer, NetworkSettings, Node};
use serde::Deserialize;

#[derive(Clone, Copy, Debug, ValueEnum, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Mode {
    Single,
    Cluster,
}

#[derive(Clone, Copy, Debug, ValueEnum, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub(crate) enum ReadConsistency {
    Linearizable,
    Stale,
}

#[derive(Clone, Copy, Debug, ValueEnum, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub(crate) enum LogFormat {
    Text,
    Json,
}

/// Sets one tunable: a path that starts with `network` is a field of the node's
/// [`NetworkSettings`]; any other path is a field of the store template.
macro_rules! assign {
    ($config:ident, $network:ident, network . $($path:ident).+ = $value:expr) => {
        $network.$($path).+ = $value
    };
    ($config:ident, $network:ident, $($path:ident).+ = $value:expr) => {
        $config.$($path).+ = $value
    };
}

/// Declares each tunable once: its flag and environment variable (clap), its key in the config
/// file (serde), and where it goes: the store's configuration, or the node's network settings.
macro_rules! tunables {
    ($( $(#[doc = $doc:literal])* $field:ident $([was $old_key:literal, $old_flag:literal])? : $ty:ty, $env:literal => $($path:ident).+ ;)*) => {
        /// Limits, pool sizes, idle times and storage settings of every store on the node, and
        /// the node's network limits.
        #[derive(clap::Args, Debug, Default)]
        pub(crate) struct Tunables {
            $(
                $(#[doc = $doc])*
                #[arg(long, env = $env, help_heading = "Store settings" $(, alias = $old_flag)?)]
                pub $field: Option<$ty>,
            )*
        }

        /// The same settings, as keys of the config file.
        #[derive(Deserialize, Debug, Default)]
        #[serde(deny_unknown_fields)]
        pub(crate) struct FileTunables {
            $(
                $(#[serde(alias = $old_key)])?
                pub $field: Option<$ty>,
            )*
        }

        impl Tunables {
            /// Sets, on `config` or `network`, each value given as a flag or variable, else in
            /// the file.
            fn apply(
                &self,
                file: &FileTunables,
                config: &mut SystemConfig,
                network: &mut NetworkSettings,
            ) {
                $(
                    if let Some(value) = self.$field.clone().or_else(|| file.$field.clone()) {
                        assign!(config, network, $($path).+ = value);
                    }
                )*
            }
        }
    };
}

tunables! {
    /// Data plus metadata of one event, bytes [default: 1048576].
    event_bytes_max: u64, "EXESDB_EVENT_BYTES_MAX" => limits.event_bytes_max;
    /// Events in one append [default: 10000].
    append_events_max: u64, "EXESDB_APPEND_EVENTS_MAX" => limits.append_events_max;
    /// Bytes in one append [default: 16777216].
    append_bytes_max: u64, "EXESDB_APPEND_BYTES_MAX" => limits.append_bytes_max;
    /// Events in one read page [default: 10000].
    read_events_max: u64, "EXESDB_READ_EVENTS_MAX" => limits.read_events_max;
    /// Bytes a page of a streamed read holds at most, past its first event [default: 16777216].
    read_page_bytes_max: u64, "EXESDB_READ_PAGE_BYTES_MAX" => limits.read_page_bytes_max;
    /// Snapshot data plus metadata, bytes [default: 16777216].
    snapshot_bytes_max: u64, "EXESDB_SNAPSHOT_BYTES_MAX" => limits.snapshot_bytes_max;
    /// Messages buffered per subscriber; past that it is fed from storage as it reads [default: 1024].
    subscriber_buffer_events_max: usize, "EXESDB_SUBSCRIBER_BUFFER_EVENTS_MAX" => limits.subscriber_buffer_events_max;
    /// Bytes of events buffered for one subscriber; a larger event is buffered alone [default: 16777216].
    subscriber_buffer_bytes_max: u64, "EXESDB_SUBSCRIBER_BUFFER_BYTES_MAX" => limits.subscriber_buffer_bytes_max;
    /// Subscriptions one store serves at once [default: 10000].
    subscriptions_max: usize, "EXESDB_SUBSCRIPTIONS_MAX" => limits.subscriptions_max;
    /// Recent events kept in memory for live subscribers; 0 turns the tail off [default: 16384].
    commit_tail_events_max: usize, "EXESDB_COMMIT_TAIL_EVENTS_MAX" => limits.commit_tail_events_max;
    /// Bytes of the recent events kept for live subscribers [default: 16777216].
    commit_tail_bytes_max: u64, "EXESDB_COMMIT_TAIL_BYTES_MAX" => limits.commit_tail_bytes_max;
    /// Log records an emitter scans in one step [default: 4096].
    emitter_scan_events_max: u64, "EXESDB_EMITTER_SCAN_EVENTS_MAX" => pools.emitter_scan_events_max;
    /// Partitions of StreamsWriters [default: 4].
    streams_writers_partitions: usize, "EXESDB_STREAMS_WRITERS_PARTITIONS" => pools.streams_writers_partitions;
    /// Partitions of StreamsReaders [default: 4].
    streams_readers_partitions: usize, "EXESDB_STREAMS_READERS_PARTITIONS" => pools.streams_readers_partitions;
    /// Partitions of SnapshotsWriters and SnapshotsReaders [default: 2].
    snapshots_partitions: usize, "EXESDB_SNAPSHOTS_PARTITIONS" => pools.snapshots_partitions;
    /// Partitions of EmitterPools [default: 2].
    emitter_partitions: usize, "EXESDB_EMITTER_PARTITIONS" => pools.emitter_partitions;
    /// Partitions of GatewayWorkers [default: 2].
    gateway_partitions: usize, "EXESDB_GATEWAY_PARTITIONS" => pools.gateway_partitions;
    /// Gateway workers [default: 8].
    gateway_workers: usize, "EXESDB_GATEWAY_WORKERS" => pools.gateway_workers;
    /// Requests the gateway runs at once; more are refused with `unavailable` [default: 4096].
    gateway_requests_in_flight_max: usize, "EXESDB_GATEWAY_REQUESTS_IN_FLIGHT_MAX" => pools.gateway_requests_in_flight_max;
    /// Events buffered per streaming read [default: 1024].
    read_stream_buffer_events: usize, "EXESDB_READ_STREAM_BUFFER_EVENTS" => pools.read_stream_buffer_events;
    /// Emitters and gateway workers per pool partition [default: 16384].
    workers_per_partition_max: usize, "EXESDB_WORKERS_PER_PARTITION_MAX" => pools.workers_per_partition_max;
    /// Stream and snapshot workers per pool partition, shared by any number of streams [default: 64].
    stream_workers_per_partition_max: usize, "EXESDB_STREAM_WORKERS_PER_PARTITION_MAX" => pools.stream_workers_per_partition_max;
    /// A stream writer with no work for this long stops, ms [default: 10000].
    writer_idle_ms: u64, "EXESDB_WRITER_IDLE_MS" => pools.writer_idle_ms;
    /// A stream reader with no work for this long stops, ms [default: 10000].
    reader_idle_ms: u64, "EXESDB_READER_IDLE_MS" => pools.reader_idle_ms;
    /// Commands queued for the committer [default: 8192].
    commit_queue_commands_max: usize, "EXESDB_COMMIT_QUEUE_COMMANDS_MAX" => commit.commit_queue_commands_max;
    /// Commands in one commit batch (one fsync) [default: 2048].
    commit_batch_commands_max: usize, "EXESDB_COMMIT_BATCH_COMMANDS_MAX" => commit.commit_batch_commands_max;
    /// Stream versions cached in memory [default: 100000].
    stream_head_cache_entries_max: usize, "EXESDB_STREAM_HEAD_CACHE_ENTRIES_MAX" => commit.stream_head_cache_entries_max;
    /// Requests in flight in a store's API [default: 8192].
    requests_in_flight_max: usize, "EXESDB_REQUESTS_IN_FLIGHT_MAX" => commit.requests_in_flight_max;
    /// How long a request waits for a slot before `unavailable`, ms [default: 5000].
    request_admission_wait_ms: u64, "EXESDB_REQUEST_ADMISSION_WAIT_MS" => commit.request_admission_wait_ms;
    /// Memtable size per keyspace, bytes [default: 16777216].
    memtable_bytes_max: u64, "EXESDB_MEMTABLE_BYTES_MAX" => storage.memtable_bytes_max;
    /// Journal kept before flushing (bounds restart replay), bytes, at least 64 MiB [default: 134217728].
    journal_bytes_max: u64, "EXESDB_JOURNAL_BYTES_MAX" => storage.journal_bytes_max;
    /// Free disk space below which writes are refused as storage full, bytes [default: 268435456].
    disk_free_bytes_min: u64, "EXESDB_DISK_FREE_BYTES_MIN" => storage.disk_free_bytes_min;
    /// After a failed write, how long reopening the storage waits for readers of the failed engine, ms [default: 5000].
    reopen_wait_ms: u64, "EXESDB_REOPEN_WAIT_MS" => storage.reopen_wait_ms;
    /// Read every table file at start and refuse to start, naming the file, if a block is damaged (true/false) [default: false].
    verify_tables_on_start: bool, "EXESDB_VERIFY_TABLES_ON_START" => storage.verify_tables_on_start;
    /// Block cache, bytes [default: 67108864].
    cache_bytes_max: u64, "EXESDB_CACHE_BYTES_MAX" => storage.cache_bytes_max;
    /// Restarts a supervisor tolerates within the period [default: 3].
    restarts_max [was "max_restarts", "max-restarts"]: u32, "EXESDB_RESTARTS_MAX" => intensity.restarts_max;
    /// The restart-intensity period, ms [default: 5000].
    restart_period_ms: u64, "EXESDB_RESTART_PERIOD_MS" => intensity.period_ms;
    /// How long a process gets to stop before it is killed, ms [default: 10000].
    shutdown_timeout_ms: u64, "EXESDB_SHUTDOWN_TIMEOUT_MS" => shutdown_timeout_ms;
    /// TCP connections open at once; one more is closed at once [default: 1024].
    connections_max: usize, "EXESDB_CONNECTIONS_MAX" => network.connections_max;
    /// A new connection silent for this long is closed, ms [default: 10000].
    connection_first_bytes_ms: u64, "EXESDB_CONNECTION_FIRST_BYTES_MS" => network.connection_first_bytes_ms;
    /// Calls at once on one HTTP/2 connection; the client queues more [default: 200].
    http2_concurrent_streams_max [was "http2_max_concurrent_streams", "http2-max-concurrent-streams"]: u32, "EXESDB_HTTP2_CONCURRENT_STREAMS_MAX" => network.http2_concurrent_streams_max;
    /// Ping an HTTP/2 connection silent this long; close it if no answer in as long again, ms; 0: off [default: 30000].
    http2_keepalive_interval_ms: u64, "EXESDB_HTTP2_KEEPALIVE_INTERVAL_MS" => network.http2_keepalive_interval_ms;
}

#[derive(clap::Args, Debug)]
pub(crate) struct ServeArgs {
    /// A TOML file with any of these settings (keys as the flags, with underscores).
    #[arg(long, env = "EXESDB_CONFIG")]
    pub config: Option<PathBuf>,
    /// Where the stores keep their data, one directory each [default: ./data].
    #[arg(long, env = "EXESDB_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// A store to host; repeat (or separate with commas) for several [default: default].
    #[arg(long = "store", env = "EXESDB_STORE", value_delimiter = ',')]
    pub stores: Vec<String>,
    /// Address for gRPC and HTTP together [default: 127.0.0.1:2113].
    #[arg(long, env = "EXESDB_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// `single` (one node) or `cluster` (a Raft group per store across nodes) [default: single].
    #[arg(long, env = "EXESDB_MODE", value_enum)]
    pub mode: Option<Mode>,
    /// Cluster mode: nodes join only a cluster of this name [default: exesdb].
    #[arg(long, env = "EXESDB_CLUSTER_NAME", help_heading = "Cluster mode")]
    pub cluster_name: Option<String>,
    /// Cluster mode: how many nodes form a new cluster; used only to bootstrap [default: 3].
    #[arg(long, env = "EXESDB_CLUSTER_SIZE", help_heading = "Cluster mode")]
    pub cluster_size: Option<usize>,
    /// Cluster mode: peer addresses (--peer-listen) of other nodes, comma-separated.
    #[arg(
        long,
        env = "EXESDB_SEEDS",
        value_delimiter = ',',
        help_heading = "Cluster mode"
    )]
    pub seeds: Vec<String>,
    /// Cluster mode: address of the peer port, for the other nodes [default: 127.0.0.1:2114].
    #[arg(long, env = "EXESDB_PEER_LISTEN", help_heading = "Cluster mode")]
    pub peer_listen: Option<SocketAddr>,
    /// Cluster mode: the peer address the other nodes are told [default: the bound --peer-listen].
    #[arg(long, env = "EXESDB_PEER_ADVERTISE", help_heading = "Cluster mode")]
    pub peer_advertise: Option<String>,
    /// Cluster mode: a file holding the secret every peer call must carry [default: none].
    #[arg(
        long,
        env = "EXESDB_CLUSTER_SECRET_FILE",
        help_heading = "Cluster mode"
    )]
    pub cluster_secret_file: Option<PathBuf>,
    /// Cluster mode: a follower that hears no leader for a random time between this and
    /// --election-timeout-max-ms stands for election, ms [default: 500].
    #[arg(
        long,
        env = "EXESDB_ELECTION_TIMEOUT_MIN_MS",
        help_heading = "Cluster mode"
    )]
    pub election_timeout_min_ms: Option<u64>,
    /// Cluster mode: see --election-timeout-min-ms, ms [default: 1000].
    #[arg(
        long,
        env = "EXESDB_ELECTION_TIMEOUT_MAX_MS",
        help_heading = "Cluster mode"
    )]
    pub election_timeout_max_ms: Option<u64>,
    /// Cluster mode: how often a leader reminds its followers, ms [default: 100].
    #[arg(
        long,
        env = "EXESDB_HEARTBEAT_INTERVAL_MS",
        help_heading = "Cluster mode"
    )]
    pub heartbeat_interval_ms: Option<u64>,
    /// Cluster mode: `linearizable` (a read sees every write acknowledged before it began, on
    /// any node) or `stale` (what this node has applied) [default: linearizable].
    #[arg(
        long,
        env = "EXESDB_READ_CONSISTENCY",
        value_enum,
        help_heading = "Cluster mode"
    )]
    pub read_consistency: Option<ReadConsistency>,
    /// Cluster mode: a store's Raft group snapshots the whole store after this many log
    /// entries, and keeps as many behind the snapshot, so that a follower that was away
    /// briefly catches up from the log [default: 100000].
    #[arg(
        long,
        env = "EXESDB_RAFT_SNAPSHOT_ENTRIES",
        help_heading = "Cluster mode"
    )]
    pub raft_snapshot_entries: Option<u64>,
    /// Log lines on stderr as text or JSON (filter with RUST_LOG) [default: text].
    #[arg(long, env = "EXESDB_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    #[command(flatten)]
    pub tunables: Tunables,
}

/// The config file: the server keys and every tunable.
#[derive(Debug, Default)]
struct ConfigFile {
    server: ServerKeys,
    tunables: FileTunables,
}

/// The server's own keys of the config file (the rest are tunables).
#[derive(Deserialize, Debug, Default)]
struct ServerKeys {
    data_dir: Option<PathBuf>,
    stores: Option<Vec<String>>,
    listen: Option<SocketAddr>,
    mode: Option<Mode>,
    log_format: Option<LogFormat>,
    cluster_name: Option<String>,
    cluster_size: Option<usize>,
    seeds: Option<Vec<String>>,
    peer_listen: Option<SocketAddr>,
    peer_advertise: Option<String>,
    cluster_secret_file: Option<PathBuf>,
    election_timeout_min_ms: Option<u64>,
    election_timeout_max_ms: Option<u64>,
    heartbeat_interval_ms: Option<u64>,
    read_consistency: Option<ReadConsistency>,
    raft_snapshot_entries: Option<u64>,
}

const SERVER_KEYS: [&str; 16] = [
    "data_dir",
    "stores",
    "listen",
    "mode",
    "log_format",
    "cluster_name",
    "cluster_size",
    "seeds",
    "peer_listen",
    "peer_advertise",
    "cluster_secret_file",
    "election_timeout_min_ms",
    "election_timeout_max_ms",
    "heartbeat_interval_ms",
    "read_consistency",
    "raft_snapshot_entries",
];

/// Cluster mode's settings, after precedence is applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ClusterSettings {
    pub cluster_name: String,
    pub cluster_size: usize,
    pub seeds: Vec<String>,
    pub peer_listen: SocketAddr,
    pub peer_advertise: Option<String>,
    pub cluster_secret_file: Option<PathBuf>,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    pub heartbeat_interval_ms: u64,
    pub read_consistency: ReadConsistency,
    pub raft_snapshot_entries: u64,
}

/// Everything `serve` runs with, after precedence is applied.
#[derive(Debug)]
pub(crate) struct Settings {
    pub listen: SocketAddr,
    pub mode: Mode,
    pub log_format: LogFormat,
    pub stores: Vec<String>,
    pub template: SystemConfig,
    pub network: NetworkSettings,
    pub cluster: ClusterSettings,
}

impl ServeArgs {
    /// Flags and variables over the file over the defaults.
    pub(crate) fn settings(&self) -> Result<Settings, String> {
        let file = match &self.config {
            Some(path) => read_config_file(path)?,
            None => ConfigFile::default(),
        };
        let server = &file.server;
        let data_dir = self
            .data_dir
            .clone()
            .or(server.data_dir.clone())
            .unwrap_or_else(|| PathBuf::from("./data"));
        let mut template = SystemConfig::new(data_dir, "default");
        let mut network = NetworkSettings::default();
        self.tunables
            .apply(&file.tunables, &mut template, &mut network);
        network.validate()?;
        let stores = if !self.stores.is_empty() {
            self.stores.clone()
        } else {
            server
                .stores
                .clone()
                .unwrap_or_else(|| vec!["default".to_string()])
        };
        let default_listen = SocketAddr::from(([127, 0, 0, 1], 2113));
        let cluster = ClusterSettings {
            cluster_name: self
                .cluster_name
                .clone()
                .or(server.cluster_name.clone())
                .unwrap_or_else(|| "exesdb".to_string()),
            cluster_size: self.cluster_size.or(server.cluster_size).unwrap_or(3),
            seeds: if self.seeds.is_empty() {
                server.seeds.clone().unwrap_or_default()
            } else {
                self.seeds.clone()
            },
            peer_listen: self
                .peer_listen
                .or(server.peer_listen)
                .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 2114))),
            peer_advertise: self
                .peer_advertise
                .clone()
                .or(server.peer_advertise.clone()),
            cluster_secret_file: self
                .cluster_secret_file
                .clone()
                .or(server.cluster_secret_file.clone()),
            election_timeout_min_ms: self
                .election_timeout_min_ms
                .or(server.election_timeout_min_ms)
                .unwrap_or(500),
            election_timeout_max_ms: self
                .election_timeout_max_ms
                .or(server.election_timeout_max_ms)
                .unwrap_or(1_000),
            heartbeat_interval_ms: self
                .heartbeat_interval_ms
                .or(server.heartbeat_interval_ms)
                .unwrap_or(100),
            read_consistency: self
                .read_consistency
                .or(server.read_consistency)
                .unwrap_or(ReadConsistency::Linearizable),
            raft_snapshot_entries: self
                .raft_snapshot_entries
                .or(server.raft_snapshot_entries)
                .unwrap_or(100_000),
        };
        if cluster.raft_snapshot_entries == 0 {
            return Err("raft_snapshot_entries must be at least 1".into());
        }
        if cluster.cluster_size == 0 {
            return Err("cluster_size must be at least 1".into());
        }
        if cluster.heartbeat_interval_ms == 0
            || cluster.election_timeout_min_ms <= cluster.heartbeat_interval_ms
            || cluster.election_timeout_max_ms <= cluster.election_timeout_min_ms
        {
            return Err(format!(
                "cluster timeouts must be heartbeat_interval_ms < election_timeout_min_ms < \
                 election_timeout_max_ms; they are {} < {} < {}",
                cluster.heartbeat_interval_ms,
                cluster.election_timeout_min_ms,
                cluster.election_timeout_max_ms
            ));
        }
        Ok(Settings {
            listen: self.listen.or(server.listen).unwrap_or(default_listen),
            mode: self.mode.or(server.mode).unwrap_or(Mode::Single),
            log_format: self
                .log_format
                .or(server.log_format)
                .unwrap_or(LogFormat::Text),
            stores,
            template,
            network,
            cluster,
        })
    }
}

fn read_config_file(path: &Path) -> Result<ConfigFile, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|error| format!("cannot read config file {}: {error}", path.display()))?;
    let error = |error: toml::de::Error| format!("config file {}: {error}", path.display());
    // Server keys and tunables are separated first, so that a misspelt key is an error
    // (serde cannot deny unknown fields across a flattened struct).
    let mut table: toml::Table = toml::from_str(&text).map_err(error)?;
    let mut server = toml::Table::new();
    for key in SERVER_KEYS {
        if let Some(value) = table.remove(key) {
            server.insert(key.to_string(), value);
        }
    }
    let server: ServerKeys = server.try_into().map_err(error)?;
    let tunables: FileTunables = table.try_into().map_err(error)?;
    Ok(ConfigFile { server, tunables })
}

pub(crate) async fn serve(settings: Settings) -> Result<(), String> {
    let metrics = install_metrics()?;
    let stop = shutdown_signal()?;
    let data_dir = settings.template.data_dir.clone();
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .map_err(|error| format!("cannot listen on {}: {error}", settings.listen))?;
    let local = listener
        .local_addr()
        .map_err(|error| format!("cannot read the listen address: {error}"))?;
    let mut template = settings.template;
    // Cluster mode: the peer port comes up before the stores, so that their Raft groups can
    // reach each other while they start; it stops after them.
    let (peers, peers_stop) = tokio::sync::oneshot::channel::<()>();
    let mut peer_server = None;
    if settings.mode == Mode::Cluster {
        let (cluster, service, serving) = start_peer_port(
            &settings.cluster,
            &data_dir,
            local,
            &settings.network,
            peers_stop,
        )
        .await?;
        template.cluster = Some(cluster);
        peer_server = Some((service, serving));
    }
    let node = Arc::new(
        Node::start(template, &settings.stores)
            .await
            .map_err(|error| error.to_string())?,
    );
    if let Some((service, _)) = &peer_server {
        service.attach(node.clone());
    }
    // Tests and scripts read the bound port from this line (`listen=`).
    tracing::info!(listen = %local, data_dir = %data_dir.display(), stores = ?settings.stores, mode = ?settings.mode, "exesdb serving");
    let served = exesdb_server::serve(node, listener, settings.network, Some(metrics), stop)
        .await
        .map_err(|error| error.to_string());
    let _ = peers.send(());
    if let Some((_, serving)) = peer_server {
        let _ = serving.await;
    }
    served
}

/// Binds the peer port, reads the cluster secret and the node's id, and starts serving peer
/// calls (answered `unavailable` until the node is attached).
async fn start_peer_port(
    settings: &ClusterSettings,
    data_dir: &Path,
    client_addr: SocketAddr,
    network: &NetworkSettings,
    stop: tokio::sync::oneshot::Receiver<()>,
) -> Result<
    (
        exesdb::ClusterConfig,
        exesdb_server::PeerService,
        tokio::task::JoinHandle<()>,
    ),
    String,
> {
    let secret = match &settings.cluster_secret_file {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|error| {
                format!(
                    "cannot read the cluster secret file {}: {error}",
                    path.display()
                )
            })?;
            let secret = text.trim().to_string();
            if secret.is_empty() {
                return Err(format!(
                    "the cluster secret file {} is empty",
                    path.display()
                ));
            }
            Some(secret)
        }
        None => None,
    };
    let peer_listener = tokio::net::TcpListener::bind(settings.peer_listen)
        .await
        .map_err(|error| {
            format!(
                "cannot listen for peers on {}: {error}",
                settings.peer_listen
            )
        })?;
    let peer_local = peer_listener
        .local_addr()
        .map_err(|error| format!("cannot read the peer listen address: {error}"))?;
    let node_id = exesdb::node_id(data_dir).map_err(|error| error.to_string())?;
    let transport = Arc::new(exesdb_server::GrpcPeerTransport::new(
        secret.clone(),
        peer_local,
    ));
    let service = exesdb_server::PeerService::new(secret);
    let serving = tokio::spawn(exesdb_server::serve_peers(
        service.clone(),
        peer_listener,
        network.clone(),
        async move {
            let _ = stop.await;
        },
    ));
    let peer_advertise = settings
        .peer_advertise
        .clone()
        .unwrap_or_else(|| peer_local.to_string());
    // Not `listen=`: scripts read the client port from the line that says that.
    tracing::info!(peer = %peer_local, node_id, cluster = settings.cluster_name, "peer port open");
    let mut cluster = exesdb::ClusterConfig::new(
        node_id,
        settings.cluster_name.clone(),
        settings.cluster_size,
        peer_advertise,
        client_addr.to_string(),
        transport,
    );
    cluster.seeds = settings.seeds.clone();
    cluster.election_timeout_min_ms = settings.election_timeout_min_ms;
    cluster.election_timeout_max_ms = settings.election_timeout_max_ms;
    cluster.heartbeat_interval_ms = settings.heartbeat_interval_ms;
    cluster.snapshot_every_entries = settings.raft_snapshot_entries;
    cluster.read_consistency = match settings.read_consistency {
        ReadConsistency::Linearizable => exesdb::ReadConsistency::Linearizable,
        ReadConsistency::Stale => exesdb::ReadConsistency::Stale,
    };
    Ok((cluster, service, serving))
}

fn install_metrics() -> Result<MetricsRenderer, String> {
    use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
    let latency = [
        0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5, 1.0,
    ];
    let batch = [
        1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0,
    ];
    let recorder = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full("exesdb_append_latency_seconds".into()),
            &latency,
        )
        .and_then(|builder| {
            builder
                .set_buckets_for_metric(Matcher::Full("exesdb_commit_batch_events".into()), &batch)
        })
        .map_err(|error| format!("cannot configure metrics: {error}"))?
        .build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder)
        .map_err(|error| format!("cannot install the metrics recorder: {error}"))?;
    Ok(Arc::new(move || handle.render()))
}

/// Watches SIGINT and SIGTERM from this call on, not from the first poll: a signal that arrives
/// while the server is still starting (but already answering) must stop it gracefully, not kill
/// it with the default action.
fn shutdown_signal() -> Result<impl Future<Output = ()>, String> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let watch = |kind: SignalKind, name: &str| {
            signal(kind).map_err(|error| format!("cannot watch {name}: {error}"))
        };
        let mut interrupt = watch(SignalKind::interrupt(), "SIGINT")?;
        let mut terminate = watch(SignalKind::terminate(), "SIGTERM")?;
        Ok(async move {
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
            }
            stopping();
        })
    }
    #[cfg(not(unix))]
    {
        let interrupt = tokio::signal::ctrl_c();
        Ok(async move {
            let _ = interrupt.await;
            stopping();
        })
    }
}

fn stopping() {
    tracing::info!("stopping: finishing in-flight work, then stopping the tree in reverse order");
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Wrapper {
        #[command(flatten)]
        serve: ServeArgs,
    }

    #[test]
    fn flags_win_over_the_file_and_the_file_over_defaults() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("exesdb.toml");
        std::fs::write(
            &file,
            "listen = \"127.0.0.1:7000\"\nappend_events_max = 7\nread_events_max = 70\nstores = [\"a\", \"b\"]\n",
        )
        .expect("write");
        let args = Wrapper::try_parse_from([
            "x",
            "--config",
            file.to_str().expect("utf-8"),
            "--append-events-max",
            "9",
        ])
        .expect("parses");
        let settings = args.serve.settings().expect("settings");
        assert_eq!(settings.template.limits.append_events_max, 9, "flag wins");
        assert_eq!(
            settings.template.limits.read_events_max, 70,
            "file beats default"
        );
        assert_eq!(settings.listen, "127.0.0.1:7000".parse().expect("addr"));
        assert_eq!(settings.stores, vec!["a", "b"]);
        assert_eq!(settings.template.pools.writer_idle_ms, 10_000, "default");
    }

    #[test]
    fn network_settings_come_from_flags_and_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("exesdb.toml");
        std::fs::write(
            &file,
            "connections_max = 16\nhttp2_concurrent_streams_max = 8\n",
        )
        .expect("write");
        let path = file.to_str().expect("utf-8");
        let args = Wrapper::try_parse_from(["x", "--config", path, "--connections-max", "32"])
            .expect("parses");
        let network = args.serve.settings().expect("settings").network;
        assert_eq!(network.connections_max, 32, "flag wins");
        assert_eq!(
            network.http2_concurrent_streams_max, 8,
            "file beats default"
        );
        assert_eq!(network.connection_first_bytes_ms, 10_000, "default");
        let args = Wrapper::try_parse_from(["x", "--connections-max", "0"]).expect("parses");
        let error = args.serve.settings().expect_err("no connection at all");
        assert!(error.contains("connections_max"), "{error}");
    }

    #[test]
    fn renamed_settings_keep_their_old_names() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("exesdb.toml");
        std::fs::write(
            &file,
            "max_restarts = 7\nhttp2_max_concurrent_streams = 9\n",
        )
        .expect("write");
        let path = file.to_str().expect("utf-8");
        let settings = Wrapper::try_parse_from(["x", "--config", path])
            .expect("parses")
            .serve
            .settings()
            .expect("settings");
        assert_eq!(settings.template.intensity.restarts_max, 7, "old file key");
        assert_eq!(
            settings.network.http2_concurrent_streams_max, 9,
            "old file key"
        );
        let settings = Wrapper::try_parse_from(["x", "--max-restarts", "5"])
            .expect("the old flag parses")
            .serve
            .settings()
            .expect("settings");
        assert_eq!(settings.template.intensity.restarts_max, 5, "old flag");
    }

    #[test]
    fn unknown_keys_in_the_file_are_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("exesdb.toml");
        std::fs::write(&file, "apend_events_max = 7\n").expect("write");
        let args = Wrapper::try_parse_from(["x", "--config", file.to_str().expect("utf-8")])
            .expect("parses");
        let error = args.serve.settings().expect_err("typo");
        assert!(error.contains("apend_events_max"), "{error}");
    }
}
