//! `ExESDB.System` [S] (:rest_for_one): one store's whole process tree, and [`System`], the
//! embedded API that drives it. The tree is built here, node for node as in
//! `spec/supervision-tree.md` (single mode); each supervisor's module says why its strategy.

pub(crate) mod context;
pub(crate) mod core;
pub(crate) mod gateway;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ractor::{Actor, ActorRef};
use tokio::sync::{Semaphore, oneshot};

use crate::config::SystemConfig;
use crate::error::StartError;
use crate::storage::{Storage, StoredSnapshot};
use crate::supervision::pool::{PoolSettings as WorkerPoolSettings, WorkerPool};
use crate::supervision::service::{Service, ServiceActor, ServiceArgs};
use crate::supervision::supervisor::{Supervisor, SupervisorArgs};
use crate::supervision::{ChildSpec, SupervisorSettings, TreeNode};
use context::{CommitStats, StoreContext};
use core::notification::emitter::{EmitterRequest, EmitterWork, persistent_key};
use core::notification::leader::{tracker::LeaderTracker, worker::LeaderWorker};
use core::notification::persistent::{PersistentConsumer, PersistentGroup};
use core::notification::subscription::{
    BufferedBytes, Subscription, SubscriptionRegistry, SubscriptionState,
};
use core::persistence::snapshots::{
    SnapshotRead, SnapshotWrite, SnapshotsReaderWork, SnapshotsWriterWork,
};
use core::persistence::streams::reader::{ReadRequest, StreamsReaderWork};
use core::persistence::streams::writer::{AppendRequest, StreamsWriterWork, now_micros};
use core::persistence::subscriptions::{SubscriptionsReader, SubscriptionsWriter};
use core::store::state_machine::{Command, Outcome, SnapshotCommand};
use core::store::store::Store;
use core::store::store_cluster::StoreCluster;
use core::store::store_registry::StoreRegistry;
use exesdb_types::{
    ALL_STREAM, AppendResult, Direction, ExpectedVersion, Kind, NewEvent, ReadAllRequest,
    RecordedEvent, Selector, Snapshot, SnapshotVersion, StartFrom, StoreError, Strategy,
    StreamInfo, SubscriptionDefinition, TreeSnapshot, validate_stream_id,
};
use gateway::pubsub::{PubSub, PubSubShared, topic_selector};
use gateway::{Gateway, GatewayWork};

/// The name of the root of the tree.
pub(crate) const ROOT_NAME: &str = "ExESDB.System";

fn snapshot_of(stored: StoredSnapshot) -> Snapshot {
    Snapshot {
        source_uuid: stored.source_uuid,
        stream_uuid: stored.stream_uuid,
        version: stored.version,
        data: stored.record.data,
        metadata: stored.record.metadata,
        created_micros: stored.record.created_micros,
    }
}

struct Pools {
    gateway_workers: WorkerPool<GatewayWork>,
    emitters: WorkerPool<EmitterWork>,
    streams_writers: WorkerPool<StreamsWriterWork>,
    streams_readers: WorkerPool<StreamsReaderWork>,
    snapshots_writers: WorkerPool<SnapshotsWriterWork>,
    snapshots_readers: WorkerPool<SnapshotsReaderWork>,
}

/// A running store: its supervision tree and the embedded API.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use exesdb::{ExpectedVersion, NewEvent, System, SystemConfig};
/// let system = System::start(SystemConfig::new("./data", "default")).await?;
/// let result = system
///     .append("order-1", ExpectedVersion::NoStream, vec![NewEvent::new("OrderPlaced", "{}")])
///     .await?;
/// assert_eq!(result.first_event_number, 0);
/// system.stop().await;
/// # Ok(()) }
/// ```
pub struct System {
    api: StoreApi,
    gateway: Gateway,
    root: ActorRef<()>,
    root_node: Arc<TreeNode>,
}

/// The store's API, the same one `System` offers (a `System` derefs to it). Cheap to clone:
/// the gateway's workers each hold one.
#[derive(Clone)]
pub struct StoreApi {
    context: Arc<StoreContext>,
    subscriptions: Arc<SubscriptionRegistry>,
    pools: Arc<Pools>,
    admission: Arc<Semaphore>,
    accepting: Arc<AtomicBool>,
}

impl std::ops::Deref for System {
    type Target = StoreApi;

    fn deref(&self) -> &StoreApi {
        &self.api
    }
}

impl System {
    /// Opens the store's data and starts its tree. Returns once every process is running.
    pub async fn start(config: SystemConfig) -> Result<System, StartError> {
        config.validate()?;
        let directory = config.store_dir();
        let storage_settings = config.storage.clone();
        let storage =
            tokio::task::spawn_blocking(move || Storage::open(&directory, &storage_settings))
                .await
                .map_err(|error| {
                    StartError::Tree(format!("opening storage panicked: {error}"))
                })??;
        let next_position = storage
            .engine()
            .and_then(|engine| engine.next_position())
            .map_err(|error| StartError::Corrupt(error.to_string()))?;
        let admission = Arc::new(Semaphore::new(config.commit.requests_in_flight_max));
        let context = Arc::new(StoreContext::new(config, Arc::new(storage), next_position));
        let subscriptions = Arc::new(SubscriptionRegistry::default());
        let pubsub = Arc::new(PubSubShared {
            api: std::sync::Mutex::new(None),
            bus: context.config.event_bus.clone(),
            forwarded: std::sync::atomic::AtomicU64::new(next_position),
            store_id: context.store_id().to_string(),
        });
        let (pools, root_spec) = build_tree(&context, &subscriptions, &pubsub);
        let root_node = root_spec.node.clone();
        let args = SupervisorArgs {
            node: root_node.clone(),
            strategy: Strategy::RestForOne,
            settings: supervisor_settings(&context),
            children: root_spec.children,
        };
        let (root, _) = Actor::spawn(None, Supervisor, args)
            .await
            .map_err(|error| StartError::Tree(error.to_string()))?;
        root_node.set_cell(Some(root.get_cell()));
        let api = StoreApi {
            context,
            subscriptions,
            pools: Arc::new(pools),
            admission,
            accepting: Arc::new(AtomicBool::new(true)),
        };
        *lock_ignoring_poison(&pubsub.api) = Some(api.clone());
        let pool_settings = &api.context.config.pools;
        let gateway = Gateway::new(
            api.clone(),
            api.pools.gateway_workers.clone(),
            pool_settings.gateway_workers,
            pool_settings.gateway_requests_in_flight_max,
        );
        Ok(System {
            api,
            gateway,
            root,
            root_node,
        })
    }

    /// Whether the tree is up and this node accepts writes for the store.
    pub fn accepts_writes(&self) -> bool {
        self.accepting.load(Ordering::Acquire)
            && self.root.get_status() == ractor::ActorStatus::Running
            && self.context.is_leader()
    }

    /// The way in for network requests: admission control and gateway workers.
    pub fn gateway(&self) -> &Gateway {
        &self.gateway
    }

    /// The live supervision tree.
    pub fn tree(&self) -> TreeSnapshot {
        self.root_node.snapshot()
    }

    /// Sets the gauges a metrics scrape reads: active workers, gateway requests in flight and
    /// each process's restart count.
    pub fn publish_gauges(&self) {
        let store = self.store_id().to_string();
        metrics::gauge!("exesdb_active_workers", "store" => store.clone())
            .set(self.active_workers() as f64);
        metrics::gauge!("exesdb_gateway_in_flight", "store" => store.clone())
            .set(self.gateway.in_flight() as f64);
        fn restarts(node: &TreeSnapshot, store: &str) {
            metrics::gauge!(
                "exesdb_supervisor_restarts",
                "store" => store.to_string(),
                "process" => node.name.clone()
            )
            .set(node.restarts as f64);
            for child in &node.children {
                restarts(child, store);
            }
        }
        restarts(&self.tree(), &store);
    }
}

impl StoreApi {
    /// The store's id.
    pub fn store_id(&self) -> &str {
        self.context.store_id()
    }

    /// Whether this node leads the store (always while running, in single mode).
    pub fn is_leader(&self) -> bool {
        self.context.is_leader()
    }

    /// Appends events to a stream, atomically, if its version is what `expected` says.
    /// Returns once the events are durable (fsync'd).
    pub async fn append(
        &self,
        stream_id: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult, StoreError> {
        validate_stream_id(stream_id, false)?;
        let started = std::time::Instant::now();
        let event_count = events.len() as u64;
        let _permit = self.admit().await?;
        let (reply, answer) = oneshot::channel();
        let request = AppendRequest {
            expected,
            events,
            reply,
        };
        self.pools
            .streams_writers
            .dispatch(stream_id, request)
            .await?;
        match await_reply(answer).await? {
            Outcome::Appended(result) => {
                let store = self.context.store_id().to_string();
                metrics::counter!("exesdb_appends_total", "store" => store.clone()).increment(1);
                metrics::counter!("exesdb_events_appended_total", "store" => store.clone())
                    .increment(event_count);
                metrics::histogram!("exesdb_append_latency_seconds", "store" => store)
                    .record(started.elapsed().as_secs_f64());
                Ok(result)
            }
            other => Err(unexpected(other)),
        }
    }

    /// Up to `count` events of a stream from event number `from` (`None`: the first event
    /// forward, the last backward). `stream_not_found` if the stream has no events.
    pub async fn read_stream(
        &self,
        stream_id: &str,
        from: Option<u64>,
        count: u64,
        direction: Direction,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.read_stream_page(stream_id, from, count, direction, None)
            .await
    }

    /// As [`StoreApi::read_stream`], and stops once the events hold `bytes_max` bytes
    /// ([`RecordedEvent::size_bytes`]; at least one event): fewer than `count` events then do
    /// not mean the end of the stream.
    pub async fn read_stream_page(
        &self,
        stream_id: &str,
        from: Option<u64>,
        count: u64,
        direction: Direction,
        bytes_max: Option<u64>,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        if stream_id == ALL_STREAM {
            let request = ReadAllRequest {
                from_position: from,
                count,
                direction,
                bytes_max,
                ..ReadAllRequest::default()
            };
            return self.read_all(request).await;
        }
        validate_stream_id(stream_id, false)?;
        self.check_read_count(count)?;
        self.count_read();
        let _permit = self.admit().await?;
        let (reply, answer) = oneshot::channel();
        let request = ReadRequest::Stream {
            from,
            count,
            direction,
            bytes_max,
            reply,
        };
        self.pools
            .streams_readers
            .dispatch(stream_id, request)
            .await?;
        await_reply(answer).await
    }

    /// Up to `request.count` events of `$all` that pass its filters, in position order.
    pub async fn read_all(
        &self,
        request: ReadAllRequest,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.check_read_count(request.count)?;
        self.count_read();
        if let Some(prefix) = &request.stream_prefix
            && prefix.chars().any(char::is_control)
        {
            return Err(StoreError::invalid(
                "stream prefix contains a control character",
            ));
        }
        let _permit = self.admit().await?;
        let (reply, answer) = oneshot::channel();
        self.pools
            .streams_readers
            .dispatch(ALL_STREAM, ReadRequest::All { request, reply })
            .await?;
        await_reply(answer).await
    }

    /// The number of the stream's last event; -1 when it has none.
    pub async fn stream_version(&self, stream_id: &str) -> Result<i64, StoreError> {
        validate_stream_id(stream_id, false)?;
        let _permit = self.admit().await?;
        let (reply, answer) = oneshot::channel();
        self.pools
            .streams_readers
            .dispatch(stream_id, ReadRequest::Version { reply })
            .await?;
        let version = await_reply(answer).await?;
        Ok(version.map_or(-1, |v| v as i64))
    }

    /// Up to `count` streams in id order, after `after` (for paging).
    pub async fn list_streams(
        &self,
        after: Option<&str>,
        count: u64,
    ) -> Result<Vec<StreamInfo>, StoreError> {
        self.check_read_count(count)?;
        let _permit = self.admit().await?;
        let (reply, answer) = oneshot::channel();
        let request = ReadRequest::ListStreams {
            after: after.map(str::to_string),
            count,
            reply,
        };
        self.pools
            .streams_readers
            .dispatch(ALL_STREAM, request)
            .await?;
        await_reply(answer).await
    }

    /// Records a snapshot (replacing one with the same key). Durable when this returns.
    pub async fn record_snapshot(
        &self,
        source_uuid: &str,
        stream_uuid: &str,
        version: u64,
        data: Vec<u8>,
        metadata: Vec<u8>,
    ) -> Result<(), StoreError> {
        let command = Command::RecordSnapshot(SnapshotCommand {
            source_uuid: source_uuid.to_string(),
            stream_uuid: stream_uuid.to_string(),
            version,
            data,
            metadata,
            created_micros: now_micros(),
        });
        self.write_snapshot(source_uuid, stream_uuid, command).await
    }

    /// Deletes a snapshot; deleting one that does not exist succeeds.
    pub async fn delete_snapshot(
        &self,
        source_uuid: &str,
        stream_uuid: &str,
        version: u64,
    ) -> Result<(), StoreError> {
        let command = Command::DeleteSnapshot {
            source_uuid: source_uuid.to_string(),
            stream_uuid: stream_uuid.to_string(),
            version,
        };
        self.write_snapshot(source_uuid, stream_uuid, command).await
    }

    /// Reads a snapshot; `snapshot_not_found` when none matches.
    pub async fn read_snapshot(
        &self,
        source_uuid: &str,
        stream_uuid: &str,
        version: SnapshotVersion,
    ) -> Result<Snapshot, StoreError> {
        let (version_value, exact) = match version {
            SnapshotVersion::Exact(v) => (v, true),
            SnapshotVersion::AtOrBelow(v) => (v, false),
            SnapshotVersion::Latest => (u64::MAX, false),
        };
        let _permit = self.admit().await?;
        let (reply, answer) = oneshot::channel();
        let request = SnapshotRead::Read {
            source_uuid: source_uuid.to_string(),
            stream_uuid: stream_uuid.to_string(),
            version: version_value,
            exact,
            reply,
        };
        self.pools
            .snapshots_readers
            .dispatch(&snapshot_worker_key(source_uuid, stream_uuid), request)
            .await?;
        await_reply(answer).await?.map(snapshot_of).ok_or_else(|| {
            StoreError::SnapshotNotFound(format!("{source_uuid}/{stream_uuid} at {version:?}"))
        })
    }

    /// Snapshots, optionally only of one source (and stream), in key order.
    pub async fn list_snapshots(
        &self,
        source_uuid: Option<&str>,
        stream_uuid: Option<&str>,
        count: u64,
    ) -> Result<Vec<Snapshot>, StoreError> {
        self.check_read_count(count)?;
        let _permit = self.admit().await?;
        let (reply, answer) = oneshot::channel();
        let request = SnapshotRead::List {
            source_uuid: source_uuid.map(str::to_string),
            stream_uuid: stream_uuid.map(str::to_string),
            count,
            reply,
        };
        self.pools
            .snapshots_readers
            .dispatch("$list", request)
            .await?;
        Ok(await_reply(answer)
            .await?
            .into_iter()
            .map(snapshot_of)
            .collect())
    }

    /// Subscribes to the events `selector` picks, from `start`: first those already stored
    /// (catch-up), then `CaughtUp`, then new ones as they commit, all in position order,
    /// none skipped, none twice. Dropping the [`Subscription`] ends it.
    pub async fn subscribe(
        &self,
        selector: Selector,
        start: StartFrom,
    ) -> Result<Subscription, StoreError> {
        selector.validate()?;
        if !self.accepting.load(Ordering::Acquire) {
            return Err(StoreError::unavailable("the store is stopping"));
        }
        let limits = &self.context.config.limits;
        let active = self.subscriptions.len();
        if active >= limits.subscriptions_max {
            return Err(StoreError::limit(
                "subscriptions_max",
                limits.subscriptions_max as u64,
                active as u64 + 1,
            ));
        }
        let position = match start {
            StartFrom::Beginning => 0,
            StartFrom::End => *self.context.committed.borrow(),
            StartFrom::Position(position) => position,
            StartFrom::EventNumber(number) => self.start_of_event(&selector, number)?,
        };
        let (sender, receiver) = tokio::sync::mpsc::channel(limits.subscriber_buffer_events_max);
        let event_number_floor = match start {
            StartFrom::EventNumber(number) => number,
            _ => 0,
        };
        let id = uuid::Uuid::now_v7().to_string();
        let buffered = Arc::new(BufferedBytes::new(limits.subscriber_buffer_bytes_max));
        self.subscriptions.insert(Arc::new(SubscriptionState {
            id: id.clone(),
            selector,
            event_number_floor,
            position: std::sync::atomic::AtomicU64::new(position),
            caught_up_sent: AtomicBool::new(false),
            sender,
            buffered: buffered.clone(),
        }));
        if let Err(error) = self
            .pools
            .emitters
            .dispatch(&id, EmitterRequest::Pump)
            .await
        {
            self.subscriptions.remove(&id);
            return Err(error);
        }
        Ok(Subscription {
            receiver,
            buffered,
            id,
        })
    }

    /// Where a subscription from event `number` of its stream starts scanning: at that event,
    /// or at the end when the stream has not reached it yet.
    fn start_of_event(&self, selector: &Selector, number: u64) -> Result<u64, StoreError> {
        let Selector::ByStream(stream_id) = selector else {
            return Err(StoreError::invalid(
                "starting from an event number needs a by-stream subscription",
            ));
        };
        if stream_id == ALL_STREAM {
            return Err(StoreError::invalid(
                "$all has positions, not event numbers: start from a position",
            ));
        }
        let committed = *self.context.committed.borrow();
        let view = self.context.storage.engine()?.point_view();
        Ok(view.position_of(stream_id, number)?.unwrap_or(committed))
    }

    /// Stores (or replaces) a persistent subscription and starts delivering it. A start at
    /// the end means the end as of now. Replacing one keeps its checkpoint and ends its
    /// consumers' streams (they reconnect to the new definition).
    pub async fn save_subscription(
        &self,
        mut definition: SubscriptionDefinition,
    ) -> Result<(), StoreError> {
        definition.validate()?;
        if definition.start == StartFrom::End {
            definition.start = StartFrom::Position(*self.context.committed.borrow());
        }
        let _permit = self.admit().await?;
        self.context
            .subscription_processes
            .save(definition.clone())
            .await?;
        let start = match definition.start {
            StartFrom::Position(position) => position,
            _ => 0,
        };
        let checkpoint = self
            .context
            .storage
            .engine()?
            .checkpoint(&definition.name)?
            .unwrap_or(start);
        let name = definition.name.clone();
        if let Some(old) = self.context.persistent.remove(&name) {
            old.close();
        }
        let group = Arc::new(PersistentGroup::new(definition, checkpoint));
        self.context.persistent.insert(group.clone());
        self.start_steps(&group, name).await
    }

    /// Queues a step of a group's emitter unless one is queued already.
    async fn start_steps(&self, group: &PersistentGroup, name: String) -> Result<(), StoreError> {
        if !group.claim_step() {
            return Ok(());
        }
        self.pools
            .emitters
            .dispatch(&persistent_key(name), EmitterRequest::Pump)
            .await
    }

    /// Removes a persistent subscription with its checkpoint and parked events; its consumers'
    /// streams end.
    pub async fn remove_subscription(&self, name: &str) -> Result<(), StoreError> {
        let _permit = self.admit().await?;
        self.context.subscription_processes.remove(name).await?;
        if let Some(group) = self.context.persistent.remove(name) {
            group.close();
        }
        Ok(())
    }

    /// The stored persistent subscriptions.
    pub async fn list_subscriptions(&self) -> Result<Vec<SubscriptionDefinition>, StoreError> {
        self.context.subscription_processes.list().await
    }

    /// A persistent subscription's stored checkpoint: every event before it is done (`None`
    /// until the first checkpoint is stored).
    pub fn subscription_checkpoint(&self, name: &str) -> Result<Option<u64>, StoreError> {
        Ok(self.context.storage.engine()?.checkpoint(name)?)
    }

    /// Joins a persistent subscription's consumer group.
    pub async fn connect_subscription(&self, name: &str) -> Result<PersistentConsumer, StoreError> {
        let group = self.context.persistent.get(name).ok_or_else(|| {
            StoreError::invalid(format!("no persistent subscription named {name:?}"))
        })?;
        let consumer = group.join(
            self.context.clone(),
            self.context.config.limits.subscriber_buffer_events_max,
        );
        self.start_steps(&group, name.to_string()).await?;
        Ok(consumer)
    }

    /// The events a persistent subscription parked, in position order.
    pub fn parked_events(&self, name: &str) -> Result<Vec<RecordedEvent>, StoreError> {
        let engine = self.context.storage.engine()?;
        let mut events = Vec::new();
        for position in engine.parked_positions(name)? {
            if let Some(event) = engine.event_at(position)? {
                events.push(event);
            }
        }
        Ok(events)
    }

    /// Delivers a subscription's parked events again, and takes them out of the park.
    pub async fn replay_parked(&self, name: &str) -> Result<usize, StoreError> {
        let group = self.context.persistent.get(name).ok_or_else(|| {
            StoreError::invalid(format!("no persistent subscription named {name:?}"))
        })?;
        let events = self.parked_events(name)?;
        for event in &events {
            self.commit(Command::Park {
                name: name.to_string(),
                position: event.position,
                parked: false,
            })
            .await?;
        }
        let count = events.len();
        group.requeue(events);
        Ok(count)
    }

    async fn commit(&self, command: Command) -> Result<Outcome, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.context.submit(command, reply).await;
        await_reply(answer).await
    }

    /// Listens to a native PubSub topic: `<store>:$all` (every event) or `<store>:<type>`
    /// (events of that type), from now on, in order, none skipped.
    pub async fn listen(&self, topic: &str) -> Result<Subscription, StoreError> {
        let name = topic
            .strip_prefix(self.context.store_id())
            .and_then(|rest| rest.strip_prefix(':'))
            .filter(|name| !name.is_empty())
            .ok_or_else(|| {
                StoreError::invalid(format!(
                    "topic {topic:?} is not {store}:$all or {store}:<event type>",
                    store = self.context.store_id()
                ))
            })?;
        self.subscribe(topic_selector(name), StartFrom::End).await
    }

    /// Ends every subscription's stream, transient and persistent (their consumers see the
    /// end); stored definitions and checkpoints stay. Used when the store stops.
    pub fn end_subscriptions(&self) {
        self.subscriptions.clear();
        for name in self.context.persistent.names() {
            if let Some(group) = self.context.persistent.get(&name) {
                group.close();
            }
        }
    }

    /// Subscriptions running now.
    pub fn subscription_count(&self) -> usize {
        self.subscriptions.len()
    }

    /// The stores hosted by this node (those started with the same `node_stores`).
    pub fn list_stores(&self) -> Vec<String> {
        self.context.config.node_stores.list()
    }

    /// Counters of the commit path since start: batches (fsyncs), commands, events.
    pub fn commit_stats(&self) -> CommitStats {
        self.context.commit_stats()
    }

    /// Workers of every pool (streams, snapshots, emitters, gateway) running now.
    pub fn active_workers(&self) -> usize {
        self.pools.streams_writers.active_workers()
            + self.pools.streams_readers.active_workers()
            + self.pools.snapshots_writers.active_workers()
            + self.pools.snapshots_readers.active_workers()
            + self.pools.emitters.active_workers()
            + self.pools.gateway_workers.active_workers()
    }
}

impl System {
    /// Stops cleanly: refuses new requests, lets those in flight finish (up to the shutdown
    /// timeout), then stops the tree in reverse start order. Everything acknowledged is durable.
    pub async fn stop(self) {
        self.shutdown().await;
    }

    /// [`System::stop`] for a System that is shared: stops the tree, leaves the handle, whose
    /// calls then answer `unavailable`.
    pub async fn shutdown(&self) {
        self.accepting.store(false, Ordering::Release);
        self.end_subscriptions();
        let all =
            u32::try_from(self.context.config.commit.requests_in_flight_max).unwrap_or(u32::MAX);
        let timeout = Duration::from_millis(self.context.config.shutdown_timeout_ms);
        let _ = tokio::time::timeout(timeout, self.admission.acquire_many(all)).await;
        self.admission.close();
        supervision_stop(&self.root, timeout).await;
        *lock_ignoring_poison(&self.pools.emitters.work().pool) = None;
    }

    /// Makes the named process of the tree fail, as a crash would (test builds only).
    #[cfg(feature = "fault-injection")]
    pub fn inject_fault(&self, process_name: &str) -> Result<(), StoreError> {
        let node = self
            .root_node
            .find(process_name)
            .ok_or_else(|| StoreError::invalid(format!("no process named {process_name}")))?;
        let cell = node
            .cell()
            .ok_or_else(|| StoreError::unavailable(format!("{process_name} is not running")))?;
        cell.kill();
        Ok(())
    }

    /// Arms a storage fault (test builds only): the commit it names fails the way fjall fails
    /// one, and the committer's recovery (answer `unavailable`, reopen the engine, go on) runs
    /// as after a real I/O error. See `storage/fault.rs`.
    #[cfg(feature = "fault-injection")]
    pub fn inject_storage_fault(&self, fault: crate::storage::fault::StorageFault) {
        self.context.storage.inject_fault(fault);
    }

    /// The actor id of the named process now (changes when it restarts).
    #[cfg(feature = "fault-injection")]
    pub fn process_id(&self, process_name: &str) -> Option<String> {
        let cell = self.root_node.find(process_name)?.cell()?;
        Some(cell.get_id().to_string())
    }
}

impl StoreApi {
    async fn admit(&self) -> Result<tokio::sync::SemaphorePermit<'_>, StoreError> {
        if !self.accepting.load(Ordering::Acquire) {
            return Err(StoreError::unavailable("the store is stopping"));
        }
        let wait = Duration::from_millis(self.context.config.commit.request_admission_wait_ms);
        match tokio::time::timeout(wait, self.admission.acquire()).await {
            Ok(Ok(permit)) => Ok(permit),
            Ok(Err(_)) => Err(StoreError::unavailable("the store is stopping")),
            Err(_) => Err(StoreError::unavailable(format!(
                "{} requests already in flight (requests_in_flight_max)",
                self.context.config.commit.requests_in_flight_max
            ))),
        }
    }

    /// The configuration the store runs with.
    pub fn config(&self) -> &SystemConfig {
        &self.context.config
    }

    fn count_read(&self) {
        metrics::counter!("exesdb_reads_total", "store" => self.context.store_id().to_string())
            .increment(1);
    }

    fn check_read_count(&self, count: u64) -> Result<(), StoreError> {
        let max = self.context.config.limits.read_events_max;
        if count == 0 {
            return Err(StoreError::invalid("count must be at least 1"));
        }
        if count > max {
            return Err(StoreError::limit("read_events_max", max, count));
        }
        Ok(())
    }

    async fn write_snapshot(
        &self,
        source_uuid: &str,
        stream_uuid: &str,
        command: Command,
    ) -> Result<(), StoreError> {
        let _permit = self.admit().await?;
        let (reply, answer) = oneshot::channel();
        self.pools
            .snapshots_writers
            .dispatch(
                &snapshot_worker_key(source_uuid, stream_uuid),
                SnapshotWrite { command, reply },
            )
            .await?;
        await_reply(answer).await.map(|_| ())
    }
}

impl Drop for System {
    /// A System dropped without [`System::stop`] still stops its tree (in the background:
    /// a destructor cannot wait). Everything acknowledged is already durable.
    fn drop(&mut self) {
        if self.root.get_status() == ractor::ActorStatus::Running {
            self.root.stop(Some("the System handle was dropped".into()));
        }
        self.subscriptions.clear();
        *lock_ignoring_poison(&self.pools.emitters.work().pool) = None;
    }
}

async fn supervision_stop(root: &ActorRef<()>, timeout: Duration) {
    // The root's post_stop stops its children in reverse order, each waiting for its own.
    let patience = timeout * 4;
    if root
        .stop_and_wait(Some("shutdown".into()), Some(patience))
        .await
        .is_err()
    {
        tracing::error!("the tree did not stop in time; killing it");
        root.kill();
    }
}

fn snapshot_worker_key(source_uuid: &str, stream_uuid: &str) -> String {
    format!("{source_uuid}/{stream_uuid}")
}

async fn await_reply<T>(answer: oneshot::Receiver<Result<T, StoreError>>) -> Result<T, StoreError> {
    answer.await.map_err(|_| {
        StoreError::unavailable(
            "the store stopped before answering; a write may or may not have happened \
             (retry it with the same event ids: the retry is idempotent)",
        )
    })?
}

fn unexpected(outcome: Outcome) -> StoreError {
    StoreError::unavailable(format!("unexpected outcome {outcome:?}"))
}

fn supervisor_settings(context: &StoreContext) -> SupervisorSettings {
    SupervisorSettings {
        intensity: context.config.intensity,
        shutdown_timeout: Duration::from_millis(context.config.shutdown_timeout_ms),
    }
}

struct BuiltTree {
    node: Arc<TreeNode>,
    children: Vec<ChildSpec>,
}

fn service(name: &str, context: &Arc<StoreContext>, service: Arc<dyn Service>) -> ChildSpec {
    let context = context.clone();
    ChildSpec::actor(TreeNode::new(name, Kind::GenServer, None), move || {
        (
            ServiceActor,
            ServiceArgs {
                service: service.clone(),
                context: context.clone(),
            },
        )
    })
}

/// A GenServer whose actor takes the store's context as its arguments.
fn process<A>(name: &str, context: &Arc<StoreContext>, actor: A) -> ChildSpec
where
    A: Actor<Arguments = Arc<StoreContext>> + Clone,
{
    let context = context.clone();
    ChildSpec::actor(TreeNode::new(name, Kind::GenServer, None), move || {
        (actor.clone(), context.clone())
    })
}

fn supervisor(
    name: &str,
    strategy: Strategy,
    settings: SupervisorSettings,
    children: Vec<ChildSpec>,
) -> ChildSpec {
    ChildSpec::supervisor(name, Kind::Supervisor, strategy, settings, children)
}

/// Builds the single-mode tree of the spec, node for node.
fn lock_ignoring_poison<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn build_tree(
    context: &Arc<StoreContext>,
    subscriptions: &Arc<SubscriptionRegistry>,
    pubsub: &Arc<PubSubShared>,
) -> (Pools, BuiltTree) {
    let pubsub_shared = pubsub.clone();
    let settings = supervisor_settings(context);
    let pools_config = &context.config.pools;
    let pool = |partitions: usize, idle_ms: u64| WorkerPoolSettings {
        partitions,
        workers_per_partition_max: pools_config.workers_per_partition_max,
        idle: Duration::from_millis(idle_ms),
    };
    let writer_pool = pool(
        pools_config.streams_writers_partitions,
        pools_config.writer_idle_ms,
    );
    let reader_pool = pool(
        pools_config.streams_readers_partitions,
        pools_config.reader_idle_ms,
    );
    let snapshot_writer_pool = pool(
        pools_config.snapshots_partitions,
        pools_config.writer_idle_ms,
    );
    let snapshot_reader_pool = pool(
        pools_config.snapshots_partitions,
        pools_config.reader_idle_ms,
    );
    let emitter_pool = pool(pools_config.emitter_partitions, pools_config.reader_idle_ms);
    let gateway_pool = pool(pools_config.gateway_partitions, pools_config.reader_idle_ms);

    let (streams_writers, streams_writers_spec) = WorkerPool::new(
        "ExESDB.StreamsWriters",
        StreamsWriterWork {
            context: context.clone(),
        },
        writer_pool,
        settings,
    );
    let (streams_readers, streams_readers_spec) = WorkerPool::new(
        "ExESDB.StreamsReaders",
        StreamsReaderWork {
            context: context.clone(),
        },
        reader_pool,
        settings,
    );
    let (snapshots_writers, snapshots_writers_spec) = WorkerPool::new(
        "ExESDB.SnapshotsWriters",
        SnapshotsWriterWork {
            context: context.clone(),
        },
        snapshot_writer_pool,
        settings,
    );
    let (snapshots_readers, snapshots_readers_spec) = WorkerPool::new(
        "ExESDB.SnapshotsReaders",
        SnapshotsReaderWork {
            context: context.clone(),
        },
        snapshot_reader_pool,
        settings,
    );
    let (emitters, emitter_pools_spec) = WorkerPool::new(
        "ExESDB.EmitterPools",
        EmitterWork {
            context: context.clone(),
            subscriptions: subscriptions.clone(),
            pool: std::sync::Mutex::new(None),
            scan_events_max: pools_config.emitter_scan_events_max,
        },
        emitter_pool,
        settings,
    );
    *lock_ignoring_poison(&emitters.work().pool) = Some(emitters.clone());
    let (gateway_workers, gateway_workers_spec) =
        WorkerPool::new("ExESDB.GatewayWorkers", GatewayWork, gateway_pool, settings);

    let persistence = supervisor(
        "ExESDB.PersistenceSystem",
        Strategy::OneForOne,
        settings,
        vec![
            supervisor(
                "ExESDB.Streams",
                Strategy::OneForOne,
                settings,
                vec![streams_writers_spec, streams_readers_spec],
            ),
            supervisor(
                "ExESDB.Snapshots",
                Strategy::OneForOne,
                settings,
                vec![snapshots_writers_spec, snapshots_readers_spec],
            ),
            supervisor(
                "ExESDB.Subscriptions",
                Strategy::OneForOne,
                settings,
                vec![
                    process("ExESDB.SubscriptionsReader", context, SubscriptionsReader),
                    process("ExESDB.SubscriptionsWriter", context, SubscriptionsWriter),
                ],
            ),
        ],
    );
    let notification = supervisor(
        "ExESDB.NotificationSystem",
        Strategy::RestForOne,
        settings,
        vec![
            supervisor(
                "ExESDB.LeaderSystem",
                Strategy::RestForOne,
                settings,
                vec![
                    service("ExESDB.LeaderTracker", context, Arc::new(LeaderTracker)),
                    service("ExESDB.LeaderWorker", context, Arc::new(LeaderWorker)),
                ],
            ),
            supervisor(
                "ExESDB.EmitterSystem",
                Strategy::OneForOne,
                settings,
                vec![emitter_pools_spec],
            ),
        ],
    );
    let store_context = context.clone();
    let store = ChildSpec::actor(
        TreeNode::new("ExESDB.Store", Kind::GenServer, None),
        move || (Store, store_context.clone()),
    );
    let store_system = supervisor(
        "ExESDB.StoreSystem",
        Strategy::RestForOne,
        settings,
        vec![
            store,
            service("ExESDB.StoreCluster", context, Arc::new(StoreCluster)),
            service("ExESDB.StoreRegistry", context, Arc::new(StoreRegistry)),
        ],
    );
    let core = supervisor(
        "ExESDB.CoreSystem",
        Strategy::OneForAll,
        settings,
        vec![persistence, notification, store_system],
    );
    let gateway = supervisor(
        "ExESDB.GatewaySystem",
        Strategy::OneForOne,
        settings,
        vec![
            gateway_workers_spec,
            ChildSpec::actor(
                TreeNode::new("ExESDB.PubSub", Kind::GenServer, None),
                move || (PubSub, pubsub_shared.clone()),
            ),
        ],
    );
    let root = TreeNode::new(ROOT_NAME, Kind::Supervisor, Some(Strategy::RestForOne));
    root.add_child(core.node.clone());
    root.add_child(gateway.node.clone());
    let pools = Pools {
        streams_writers,
        streams_readers,
        snapshots_writers,
        snapshots_readers,
        gateway_workers,
        emitters,
    };
    (
        pools,
        BuiltTree {
            node: root,
            children: vec![core, gateway],
        },
    )
}
