//! [`StoreApi`]: the embedded API of one store, the calls an application (or the gateway, for
//! the network) makes. Each call is admitted (at most `requests_in_flight_max` at once), then
//! routed to the pool whose workers own it: appends to `StreamsWriters`, reads to
//! `StreamsReaders`, snapshots to their pools, subscriptions to `EmitterPools`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc, oneshot};

use super::context::{CommitStats, StoreContext};
use super::core::notification::emitter::{EmitterRequest, EmitterWork, persistent_key};
use super::core::notification::persistent::{PersistentConsumer, PersistentGroup};
use super::core::notification::subscription::{
    Buffered, Subscription, SubscriptionRegistry, SubscriptionState,
};
use super::core::notification::wakeups::Park;
use super::core::persistence::snapshots::{
    SnapshotRead, SnapshotWrite, SnapshotsReaderWork, SnapshotsWriterWork,
};
use super::core::persistence::streams::reader::{ReadRequest, StreamsReaderWork};
use super::core::persistence::streams::writer::{AppendRequest, StreamsWriterWork, now_micros};
use super::core::store::state_machine::{Command, Outcome, SnapshotCommand};
use super::gateway::GatewayWork;
use super::gateway::pubsub::topic_selector;
use super::hops::{AppendHops, Hop, HopCounters};
use crate::config::SystemConfig;
use crate::storage::EventPage;
use crate::storage::StoredSnapshot;
use crate::supervision::pool::WorkerPool;
use exesdb_types::{
    ALL_STREAM, AppendResult, Direction, ExpectedVersion, IndexedStream, NewEvent, ReadAllRequest,
    RecordedEvent, Selector, Snapshot, SnapshotVersion, StartFrom, StoreError, StreamInfo,
    SubscriptionDefinition, validate_readable_stream_id, validate_stream_id,
};

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

pub(super) struct Pools {
    pub(super) gateway_workers: WorkerPool<GatewayWork>,
    pub(super) emitters: WorkerPool<EmitterWork>,
    pub(super) streams_writers: WorkerPool<StreamsWriterWork>,
    pub(super) streams_readers: WorkerPool<StreamsReaderWork>,
    pub(super) snapshots_writers: WorkerPool<SnapshotsWriterWork>,
    pub(super) snapshots_readers: WorkerPool<SnapshotsReaderWork>,
    /// Turns of the reads that belong to no stream, spread over the stream readers.
    pub(super) read_turn: AtomicU64,
}

/// The pages of [`StoreApi::read_all_pages`], in order. Dropping it stops the read.
pub struct AllPages {
    pages: mpsc::Receiver<Result<EventPage, StoreError>>,
    reader: tokio::task::JoinHandle<()>,
}

impl AllPages {
    /// The next page; `None` after the last one, or after an error.
    pub async fn next(&mut self) -> Option<Result<EventPage, StoreError>> {
        self.pages.recv().await
    }
}

impl Drop for AllPages {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// The store's API: [`System::api`](super::System::api) gives it. Cheap to clone: the
/// gateway's workers each hold one, and an application may keep clones for its tasks.
#[derive(Clone)]
pub struct StoreApi {
    pub(super) context: Arc<StoreContext>,
    pub(super) subscriptions: Arc<SubscriptionRegistry>,
    pub(super) pools: Arc<Pools>,
    pub(super) admission: Arc<Semaphore>,
    pub(super) accepting: Arc<AtomicBool>,
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
        let admitted = std::time::Instant::now();
        let hops = &self.context.hops;
        hops.add(Hop::Admission, started, admitted);
        let (reply, answer) = oneshot::channel();
        let request = AppendRequest {
            expected,
            events,
            reply,
            admitted,
        };
        self.pools
            .streams_writers
            .dispatch(stream_id, request)
            .await?;
        let answer = await_reply(answer).await;
        hops.count_append(admitted, std::time::Instant::now());
        match answer? {
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
    ///
    /// An index stream, `$et-<type>` or `$ce-<category>`, reads the events of that type or
    /// category in global order, each with its own stream and number; for these `from` is a
    /// position (inclusive), as for `$all`.
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
        validate_readable_stream_id(stream_id)?;
        self.check_read_count(count)?;
        self.count_read();
        let _permit = self.admit().await?;
        self.linearize().await?;
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
        Ok(self.read_all_page(request).await?.to_events())
    }

    /// [`Self::read_all`], with the events left where they were read: a page lends them
    /// ([`EventPage::iter`]) instead of copying each field of each. The faster way to read a
    /// lot of the store.
    pub async fn read_all_page(&self, request: ReadAllRequest) -> Result<EventPage, StoreError> {
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
        self.linearize().await?;
        let (reply, answer) = oneshot::channel();
        self.pools
            .streams_readers
            .dispatch(&self.spread_key(), ReadRequest::All { request, reply })
            .await?;
        await_reply(answer).await
    }

    /// `$all` from `request.from_position` on, in pages of up to `request.count` events (and
    /// `request.bytes_max`), until the end of what is committed when the last page is read.
    /// Each page is read while the caller handles the one before: a reader catching up uses
    /// both of the storage's and its own time at once. At most one page waits, read ahead.
    pub async fn read_all_pages(&self, request: ReadAllRequest) -> AllPages {
        let (sender, pages) = mpsc::channel(1);
        let api = self.clone();
        let reader = tokio::spawn(async move {
            let mut request = request;
            loop {
                let page = match api.read_all_page(request.clone()).await {
                    Ok(page) => page,
                    Err(error) => {
                        let _ = sender.send(Err(error)).await;
                        return;
                    }
                };
                let bytes: u64 = page.iter().map(|event| event.size_bytes()).sum();
                let full = page.len() as u64 == request.count
                    || request.bytes_max.is_some_and(|max| bytes >= max);
                let next = page
                    .last()
                    .filter(|_| full)
                    .and_then(|last| match request.direction {
                        Direction::Forward => last.position.checked_add(1),
                        Direction::Backward => last.position.checked_sub(1),
                    });
                if sender.send(Ok(page)).await.is_err() {
                    return; // the reader went away
                }
                match next {
                    Some(from) => request.from_position = Some(from),
                    None => return,
                }
            }
        });
        AllPages { pages, reader }
    }

    /// The number of the stream's last event; -1 when it has none.
    pub async fn stream_version(&self, stream_id: &str) -> Result<i64, StoreError> {
        if IndexedStream::parse(stream_id).is_some() {
            return Err(StoreError::invalid(format!(
                "{stream_id} is an index stream: it has positions, not a version of its own"
            )));
        }
        validate_stream_id(stream_id, false)?;
        let _permit = self.admit().await?;
        self.linearize().await?;
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
        self.linearize().await?;
        let (reply, answer) = oneshot::channel();
        let request = ReadRequest::ListStreams {
            after: after.map(str::to_string),
            count,
            reply,
        };
        self.pools
            .streams_readers
            .dispatch(&self.spread_key(), request)
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
        self.linearize().await?;
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
        self.linearize().await?;
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
            StartFrom::EventNumber(number) => self.start_of_event(&selector, number).await?,
        };
        let (sender, receiver) =
            tokio::sync::mpsc::channel(limits.subscriber_buffer_events_max.saturating_add(1));
        let event_number_floor = match start {
            StartFrom::EventNumber(number) => number,
            _ => 0,
        };
        let id = uuid::Uuid::now_v7().to_string();
        let buffered = Arc::new(Buffered::new(
            limits.subscriber_buffer_events_max,
            limits.subscriber_buffer_bytes_max,
        ));
        let park = Arc::new(Park::new(id.clone(), self.subscriptions.wakeups().clone()));
        self.subscriptions.insert(Arc::new(SubscriptionState {
            id: id.clone(),
            selector,
            event_number_floor,
            position: AtomicU64::new(position),
            stream_next_number: AtomicU64::new(event_number_floor),
            caught_up_at: *self.context.committed.borrow(),
            caught_up_sent: AtomicBool::new(false),
            stepping: tokio::sync::Mutex::new(()),
            sender,
            buffered: buffered.clone(),
            park: park.clone(),
            room_wanted: AtomicU64::new(0),
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
            pending: std::collections::VecDeque::new(),
            buffered,
            park,
            id,
        })
    }

    /// Where a subscription from event `number` of its stream starts scanning: at that event,
    /// or at the end when the stream has not reached it yet.
    async fn start_of_event(&self, selector: &Selector, number: u64) -> Result<u64, StoreError> {
        let Selector::ByStream(stream_id) = selector else {
            return Err(StoreError::invalid(
                "starting from an event number needs a by-stream subscription",
            ));
        };
        if stream_id == ALL_STREAM || IndexedStream::parse(stream_id).is_some() {
            return Err(StoreError::invalid(format!(
                "{stream_id} has positions, not event numbers: start from a position"
            )));
        }
        let committed = *self.context.committed.borrow();
        let engine = self.context.storage.engine()?;
        let stream_id = stream_id.clone();
        // A point read, but of storage: off the runtime's own threads.
        let position =
            super::blocking(move || engine.point_view().position_of(&stream_id, number)).await?;
        Ok(position.unwrap_or(committed))
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
        let engine = self.context.storage.engine()?;
        let stored_name = definition.name.clone();
        let checkpoint = super::blocking(move || engine.checkpoint(&stored_name))
            .await?
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

    /// Cluster mode, linearizable reads (the default): waits until this node has applied
    /// every write acknowledged before the read began. Nothing to wait for in single mode.
    async fn linearize(&self) -> Result<(), StoreError> {
        match &self.context.config.cluster {
            Some(cluster) if cluster.read_consistency == crate::ReadConsistency::Linearizable => {
                match self.context.raft_group() {
                    // Boxed: the barrier's future is deep, and every read's future would
                    // carry it inline (a crate embedding the store hit the compiler's layout
                    // depth limit).
                    Some(group) => Box::pin(group.read_barrier()).await,
                    None => Err(StoreError::unavailable(
                        "the store's Raft group is not running on this node",
                    )),
                }
            }
            _ => Ok(()),
        }
    }

    /// Joins a persistent subscription's consumer group.
    pub async fn connect_subscription(&self, name: &str) -> Result<PersistentConsumer, StoreError> {
        // Cluster mode: one node delivers a group, the leader, so two nodes never hand out
        // the same events at once.
        if self.context.config.cluster.is_some() && !self.context.is_leader() {
            let leader = super::cluster::status(&self.context)
                .and_then(|status| status.leader_client_addr)
                .map_or_else(
                    || "no leader is known yet; retry shortly".to_string(),
                    |addr| format!("connect to the leader, at {addr}"),
                );
            return Err(StoreError::unavailable(format!(
                "persistent subscriptions are delivered by the store's leader: {leader}"
            )));
        }
        if self.context.config.cluster.is_some() && self.context.persistent.get(name).is_none() {
            // A new leader loads the groups as it takes over; a consumer that comes first
            // loads them itself rather than hear of no such subscription.
            let context = self.context.clone();
            super::blocking(move || context.persistent.load(&context)).await?;
        }
        let group = self.context.persistent.get(name).ok_or_else(|| {
            StoreError::SubscriptionNotFound(format!("no persistent subscription named {name:?}"))
        })?;
        let consumer = group.join(
            self.context.clone(),
            self.context.config.limits.subscriber_buffer_events_max,
        );
        self.start_steps(&group, name.to_string()).await?;
        Ok(consumer)
    }

    /// The events a persistent subscription parked, in position order;
    /// `subscription_not_found` for a name no subscription has.
    pub fn parked_events(&self, name: &str) -> Result<Vec<RecordedEvent>, StoreError> {
        if self.context.persistent.get(name).is_none() {
            return Err(StoreError::SubscriptionNotFound(format!(
                "no persistent subscription named {name:?}"
            )));
        }
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
            StoreError::SubscriptionNotFound(format!("no persistent subscription named {name:?}"))
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
        // The group may be parked, idle: it has work again.
        self.start_steps(&group, name.to_string()).await?;
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

    /// Where appends have spent their time so far, hop by hop.
    pub fn append_hops(&self) -> AppendHops {
        self.context.hops.snapshot()
    }

    pub(crate) fn hops(&self) -> &HopCounters {
        &self.context.hops
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

    /// Steps the emitters of transient subscriptions have taken since the store started. A
    /// step delivers a page of events (or finds the subscriber without room); a subscription
    /// with nothing to deliver takes none.
    pub fn emitter_steps(&self) -> u64 {
        self.pools
            .emitters
            .work()
            .steps
            .load(std::sync::atomic::Ordering::Relaxed)
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

    /// The routing key of a read that belongs to no stream (`$all`, the stream list): each
    /// call takes the next of a rotating set, so that concurrent such reads reach different
    /// readers instead of queueing behind one.
    fn spread_key(&self) -> String {
        let pools = &self.context.config.pools;
        let readers = pools.streams_readers_partitions * pools.stream_workers_per_partition_max;
        let turn = self.pools.read_turn.fetch_add(1, Ordering::Relaxed) % readers.max(1) as u64;
        format!("{ALL_STREAM}#{turn}")
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
