//! An ExESDB in Rust event store for [cqrs-es](https://docs.rs/cqrs-es/0.5): [`ExesdbEventRepository`]
//! implements cqrs-es 0.5's [`PersistedEventRepository`], over the gRPC client
//! ([`ExesdbEventRepository::new`]) or, with the `embedded` feature, over a store running in the
//! same program (`ExesdbEventRepository::embedded`). Give it to cqrs-es's
//! `PersistedEventStore` as you would a PostgreSQL repository.
//!
//! # The mapping
//!
//! - **Streams.** An aggregate instance is the stream `"{aggregate type}-{aggregate id}"`
//!   ([`stream_id`]). Its category (the id up to its first `-`) is the aggregate type, so the
//!   store's `$ce-{aggregate type}` stream holds every event of the type, in commit order:
//!   [`PersistedEventRepository::stream_all_events`] reads it. An aggregate type must not
//!   contain `-`, or its category would be only the part before it; it is refused.
//! - **Sequences.** cqrs-es numbers an aggregate's events from 1; the store numbers a stream's
//!   events from 0. Event number `n` is sequence `n + 1`.
//! - **Events.** The event type is the store's event type, the payload is the event's data
//!   (JSON), and the event's metadata (JSON) holds `aggregate_type`, `aggregate_id`,
//!   `event_version` and cqrs-es's own `metadata`.
//! - **Snapshots.** A snapshot is the store's snapshot with source `{aggregate type}`, stream
//!   `{aggregate id}` and version cqrs-es's snapshot version; its data is
//!   `{"aggregate": ..., "current_sequence": ...}`.
//!
//! # What it guarantees
//!
//! - **Optimistic concurrency.** [`PersistedEventRepository::persist`] appends a commit's
//!   events atomically with the exact expected version its first sequence implies. If another
//!   writer got there first, nothing is written and the answer is
//!   [`PersistenceError::OptimisticLockError`]: cqrs-es reloads and retries the command.
//! - **Durability.** The append returns once the events are fsync'd (and, in cluster mode,
//!   held by a majority).
//! - **Snapshots are not atomic with the events.** The snapshot is recorded after the events,
//!   and only if no snapshot of that version or a later one exists (else
//!   `OptimisticLockError`, and no event is written). If the process dies between the two,
//!   the events are stored and the snapshot is one behind; loading then replays the events
//!   after it, so nothing is lost. As in cqrs-es's PostgreSQL repository, a snapshot's
//!   `current_sequence` is the commit's last event.
//! - **Streams stream.** [`PersistedEventRepository::stream_events`] and `stream_all_events`
//!   read page by page into cqrs-es's bounded `ReplayStream`, so a replay of millions of
//!   events holds a buffer of them, not all of them.

use cqrs_es::Aggregate;
use cqrs_es::persist::{
    PersistedEventRepository, PersistenceError, ReplayFeed, ReplayStream, SerializedEvent,
    SerializedSnapshot,
};
use exesdb_client::{
    CATEGORY_STREAM_PREFIX, Client, ClientError, Direction, ExpectedVersion, NewEvent, ReadFrom,
    RecordedEvent, SnapshotVersion,
};
use serde_json::{Value, json};
use tokio_stream::StreamExt;

/// Events a replay stream holds before its reader takes them.
const REPLAY_BUFFER_EVENTS: usize = 1_024;
/// Events an embedded read takes per page.
#[cfg(feature = "embedded")]
const PAGE_EVENTS: u64 = 1_000;

/// A cqrs-es event repository kept in an ExESDB in Rust store.
#[derive(Clone)]
pub struct ExesdbEventRepository {
    backend: Backend,
}

#[derive(Clone)]
enum Backend {
    // Boxed: a client is ten times the size of a `StoreApi`.
    Client(Box<Client>),
    #[cfg(feature = "embedded")]
    Embedded(exesdb::StoreApi),
}

impl ExesdbEventRepository {
    /// A repository in the store `client` talks to (`Client::with_store` picks the store).
    pub fn new(client: Client) -> Self {
        ExesdbEventRepository {
            backend: Backend::Client(Box::new(client)),
        }
    }

    /// A repository in a store of this program (`System::api`).
    #[cfg(feature = "embedded")]
    pub fn embedded(api: exesdb::StoreApi) -> Self {
        ExesdbEventRepository {
            backend: Backend::Embedded(api),
        }
    }
}

/// The stream of an aggregate instance: `"{aggregate type}-{aggregate id}"`.
pub fn stream_id(aggregate_type: &str, aggregate_id: &str) -> String {
    format!("{aggregate_type}-{aggregate_id}")
}

/// What the store answered, reduced to what the repository needs from it.
#[derive(Debug)]
struct StoreFailure {
    code: &'static str,
    message: String,
}

impl From<ClientError> for StoreFailure {
    fn from(error: ClientError) -> Self {
        StoreFailure {
            code: error.code(),
            message: error.to_string(),
        }
    }
}

#[cfg(feature = "embedded")]
impl From<exesdb::StoreError> for StoreFailure {
    fn from(error: exesdb::StoreError) -> Self {
        StoreFailure {
            code: error.code(),
            message: error.to_string(),
        }
    }
}

impl From<StoreFailure> for PersistenceError {
    fn from(failure: StoreFailure) -> Self {
        let error = Box::new(StoreCallFailed(failure.message));
        match failure.code {
            "wrong_expected_version" => PersistenceError::OptimisticLockError,
            "connection_error" | "unavailable" | "not_leader" => {
                PersistenceError::ConnectionError(error)
            }
            _ => PersistenceError::UnknownError(error),
        }
    }
}

/// A store call that failed, in the store's words.
#[derive(Debug)]
struct StoreCallFailed(String);

impl std::fmt::Display for StoreCallFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exesdb: {}", self.0)
    }
}

impl std::error::Error for StoreCallFailed {}

fn unknown(message: String) -> PersistenceError {
    PersistenceError::UnknownError(Box::new(StoreCallFailed(message)))
}

/// The aggregate type, checked to be a category of its own.
fn aggregate_type<A: Aggregate>() -> Result<&'static str, PersistenceError> {
    let aggregate_type = A::TYPE;
    if aggregate_type.is_empty() || aggregate_type.contains('-') {
        return Err(unknown(format!(
            "aggregate type {aggregate_type:?} must be non-empty and hold no '-': it is the \
             category of its streams"
        )));
    }
    Ok(aggregate_type)
}

/// The event to append for a cqrs-es event.
fn new_event(event: &SerializedEvent) -> Result<NewEvent, PersistenceError> {
    let data = serde_json::to_vec(&event.payload)?;
    let metadata = serde_json::to_vec(&json!({
        "aggregate_type": event.aggregate_type,
        "aggregate_id": event.aggregate_id,
        "event_version": event.event_version,
        "metadata": event.metadata,
    }))?;
    Ok(NewEvent::new(event.event_type.clone(), data).with_metadata(metadata, "application/json"))
}

/// The cqrs-es event a stored event is.
fn serialized_event(event: &RecordedEvent) -> Result<SerializedEvent, PersistenceError> {
    let metadata: Value = serde_json::from_slice(&event.metadata)?;
    let text = |field: &str| {
        metadata
            .get(field)
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| {
                PersistenceError::DeserializationError(Box::new(StoreCallFailed(format!(
                    "event {} of {} has no {field} in its metadata: it was not written by \
                     exesdb-cqrs",
                    event.event_number, event.stream_id
                ))))
            })
    };
    Ok(SerializedEvent {
        aggregate_id: text("aggregate_id")?,
        sequence: sequence_of(event.event_number)?,
        aggregate_type: text("aggregate_type")?,
        event_type: event.event_type.clone(),
        event_version: text("event_version")?,
        payload: serde_json::from_slice(&event.data)?,
        metadata: metadata.get("metadata").cloned().unwrap_or(Value::Null),
    })
}

fn sequence_of(event_number: u64) -> Result<usize, PersistenceError> {
    usize::try_from(event_number)
        .ok()
        .and_then(|n| n.checked_add(1))
        .ok_or_else(|| {
            unknown(format!(
                "event number {event_number} does not fit a sequence"
            ))
        })
}

/// The expected version of the stream before the event of `sequence`.
fn expected_before(sequence: usize) -> Result<ExpectedVersion, PersistenceError> {
    match sequence {
        0 => Err(unknown("cqrs-es sequences start at 1".into())),
        1 => Ok(ExpectedVersion::NoStream),
        n => Ok(ExpectedVersion::Exact(n as u64 - 2)),
    }
}

impl Backend {
    async fn append(
        &self,
        stream_id: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<(), StoreFailure> {
        match self {
            Backend::Client(client) => {
                client.append(stream_id, expected, events).await?;
            }
            #[cfg(feature = "embedded")]
            Backend::Embedded(api) => {
                api.append(stream_id, expected, events).await?;
            }
        }
        Ok(())
    }

    /// The number of the stream's last event; -1 when it has none.
    async fn stream_version(&self, stream_id: &str) -> Result<i64, StoreFailure> {
        Ok(match self {
            Backend::Client(client) => client.stream_version(stream_id).await?,
            #[cfg(feature = "embedded")]
            Backend::Embedded(api) => api.stream_version(stream_id).await?,
        })
    }

    /// The stream's events from event number `from` on (empty for a stream with none).
    async fn read_from(
        &self,
        stream_id: &str,
        from: u64,
    ) -> Result<Vec<RecordedEvent>, StoreFailure> {
        let mut events = Vec::new();
        let (sender, mut receiver) = tokio::sync::mpsc::channel(REPLAY_BUFFER_EVENTS);
        let reader = self.clone().feed(stream_id.to_string(), from, sender);
        let collect = async {
            while let Some(event) = receiver.recv().await {
                events.push(event?);
            }
            Ok::<_, StoreFailure>(())
        };
        let ((), collected) = tokio::join!(reader, collect);
        collected.map(|()| events)
    }

    /// Sends the events of `stream_id` from `from` on (an event number, or a position for a
    /// `$ce-` stream) into `sender`, page by page, until the end or until the receiver is gone.
    async fn feed(
        self,
        stream_id: String,
        from: u64,
        sender: tokio::sync::mpsc::Sender<Result<RecordedEvent, StoreFailure>>,
    ) {
        match self {
            Backend::Client(client) => {
                let mut events = std::pin::pin!(client.read_stream(
                    &stream_id,
                    ReadFrom::At(from),
                    None,
                    Direction::Forward
                ));
                while let Some(event) = events.next().await {
                    let event = match event {
                        Err(error) if error.code() == "stream_not_found" => return,
                        other => other.map_err(StoreFailure::from),
                    };
                    let failed = event.is_err();
                    if sender.send(event).await.is_err() || failed {
                        return;
                    }
                }
            }
            #[cfg(feature = "embedded")]
            Backend::Embedded(api) => {
                let by_position = stream_id.starts_with(CATEGORY_STREAM_PREFIX);
                let mut from = from;
                loop {
                    let page = match api
                        .read_stream(&stream_id, Some(from), PAGE_EVENTS, Direction::Forward)
                        .await
                    {
                        Ok(page) => page,
                        Err(error) if error.code() == "stream_not_found" => return,
                        Err(error) => {
                            let _ = sender.send(Err(error.into())).await;
                            return;
                        }
                    };
                    let Some(last) = page.last() else { return };
                    let next = if by_position {
                        last.position + 1
                    } else {
                        last.event_number + 1
                    };
                    let full = page.len() as u64 == PAGE_EVENTS;
                    for event in page {
                        if sender.send(Ok(event)).await.is_err() {
                            return;
                        }
                    }
                    if !full {
                        return;
                    }
                    from = next;
                }
            }
        }
    }

    async fn latest_snapshot(
        &self,
        source: &str,
        stream: &str,
    ) -> Result<Option<(u64, Vec<u8>)>, StoreFailure> {
        let version = SnapshotVersion::AtOrBelow(u64::MAX);
        let found = match self {
            Backend::Client(client) => client
                .read_snapshot(source, stream, version)
                .await
                .map_err(StoreFailure::from),
            #[cfg(feature = "embedded")]
            Backend::Embedded(api) => api
                .read_snapshot(source, stream, version)
                .await
                .map_err(StoreFailure::from),
        };
        match found {
            Ok(snapshot) => Ok(Some((snapshot.version, snapshot.data))),
            Err(failure) if failure.code == "snapshot_not_found" => Ok(None),
            Err(failure) => Err(failure),
        }
    }

    async fn record_snapshot(
        &self,
        source: &str,
        stream: &str,
        version: u64,
        data: Vec<u8>,
    ) -> Result<(), StoreFailure> {
        match self {
            Backend::Client(client) => {
                client
                    .record_snapshot(source, stream, version, data, Vec::new())
                    .await?;
            }
            #[cfg(feature = "embedded")]
            Backend::Embedded(api) => {
                api.record_snapshot(source, stream, version, data, Vec::new())
                    .await?;
            }
        }
        Ok(())
    }

    /// A replay stream fed with the events of `stream_id` from `from` on.
    fn replay(&self, stream_id: String, from: u64) -> ReplayStream {
        let (feed, stream) = ReplayStream::new(REPLAY_BUFFER_EVENTS);
        let (sender, receiver) = tokio::sync::mpsc::channel(REPLAY_BUFFER_EVENTS);
        tokio::spawn(self.clone().feed(stream_id, from, sender));
        tokio::spawn(forward(receiver, feed));
        stream
    }
}

/// Hands the store's events to cqrs-es's replay feed as its events, until either side ends.
async fn forward(
    mut events: tokio::sync::mpsc::Receiver<Result<RecordedEvent, StoreFailure>>,
    mut feed: ReplayFeed,
) {
    while let Some(event) = events.recv().await {
        let event = event
            .map_err(PersistenceError::from)
            .and_then(|event| serialized_event(&event));
        let failed = event.is_err();
        if feed.push(event).await.is_err() || failed {
            return;
        }
    }
}

impl PersistedEventRepository for ExesdbEventRepository {
    async fn get_events<A: Aggregate>(
        &self,
        aggregate_id: &str,
    ) -> Result<Vec<SerializedEvent>, PersistenceError> {
        self.get_last_events::<A>(aggregate_id, 0).await
    }

    async fn get_last_events<A: Aggregate>(
        &self,
        aggregate_id: &str,
        last_sequence: usize,
    ) -> Result<Vec<SerializedEvent>, PersistenceError> {
        let stream = stream_id(aggregate_type::<A>()?, aggregate_id);
        // The events after sequence `last_sequence`: from event number `last_sequence` on.
        let events = self
            .backend
            .read_from(&stream, last_sequence as u64)
            .await?;
        events.iter().map(serialized_event).collect()
    }

    async fn get_snapshot<A: Aggregate>(
        &self,
        aggregate_id: &str,
    ) -> Result<Option<SerializedSnapshot>, PersistenceError> {
        let source = aggregate_type::<A>()?;
        let Some((version, data)) = self.backend.latest_snapshot(source, aggregate_id).await?
        else {
            return Ok(None);
        };
        let stored: Value = serde_json::from_slice(&data)?;
        let current_sequence = stored
            .get("current_sequence")
            .and_then(Value::as_u64)
            .and_then(|n| usize::try_from(n).ok())
            .ok_or_else(|| {
                unknown(format!(
                    "snapshot {version} of {aggregate_id} has no sequence"
                ))
            })?;
        Ok(Some(SerializedSnapshot {
            aggregate_id: aggregate_id.to_string(),
            aggregate: stored.get("aggregate").cloned().unwrap_or(Value::Null),
            current_sequence,
            current_snapshot: usize::try_from(version)
                .map_err(|_| unknown(format!("snapshot version {version} is too large")))?,
        }))
    }

    async fn persist<A: Aggregate>(
        &self,
        events: &[SerializedEvent],
        snapshot_update: Option<(String, Value, usize)>,
    ) -> Result<(), PersistenceError> {
        let aggregate_type = aggregate_type::<A>()?;
        // A stale snapshot refuses the whole commit, before any event is written.
        if let Some((aggregate_id, _, version)) = &snapshot_update
            && let Some((latest, _)) = self
                .backend
                .latest_snapshot(aggregate_type, aggregate_id)
                .await?
            && latest >= *version as u64
        {
            return Err(PersistenceError::OptimisticLockError);
        }
        let mut current_sequence = None;
        if let Some(first) = events.first() {
            if events
                .iter()
                .any(|event| event.aggregate_id != first.aggregate_id)
            {
                return Err(unknown(
                    "one commit's events must belong to one aggregate instance".into(),
                ));
            }
            let appended = events
                .iter()
                .map(new_event)
                .collect::<Result<Vec<_>, _>>()?;
            let stream = stream_id(aggregate_type, &first.aggregate_id);
            self.backend
                .append(&stream, expected_before(first.sequence)?, appended)
                .await?;
            current_sequence = events.last().map(|event| event.sequence);
        }
        if let Some((aggregate_id, aggregate, version)) = snapshot_update {
            let current_sequence = match current_sequence {
                Some(sequence) => sequence,
                // A snapshot with no new events reflects what the stream holds.
                None => {
                    let stream = stream_id(aggregate_type, &aggregate_id);
                    let version = self.backend.stream_version(&stream).await?;
                    usize::try_from(version + 1).unwrap_or(0)
                }
            };
            let data = serde_json::to_vec(&json!({
                "aggregate": aggregate,
                "current_sequence": current_sequence,
            }))?;
            self.backend
                .record_snapshot(aggregate_type, &aggregate_id, version as u64, data)
                .await?;
        }
        Ok(())
    }

    async fn stream_events<A: Aggregate>(
        &self,
        aggregate_id: &str,
    ) -> Result<ReplayStream, PersistenceError> {
        let stream = stream_id(aggregate_type::<A>()?, aggregate_id);
        Ok(self.backend.replay(stream, 0))
    }

    async fn stream_all_events<A: Aggregate>(&self) -> Result<ReplayStream, PersistenceError> {
        let category = format!("{CATEGORY_STREAM_PREFIX}{}", aggregate_type::<A>()?);
        Ok(self.backend.replay(category, 0))
    }
}
