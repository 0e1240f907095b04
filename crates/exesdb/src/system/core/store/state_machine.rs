//! The Store as a deterministic state machine: `apply(command) -> outcome`.
//!
//! Every decision that changes data is made here, from the stored state and the command alone:
//! the expected-version check, event numbers, global positions, idempotent retries and limits.
//! Nothing here reads the clock or random numbers: event ids and timestamps arrive in the
//! command. Single mode applies commands in the Store's committer; cluster mode will apply the
//! same commands on every node after Raft has ordered them.

use std::collections::HashMap;

use uuid::Uuid;

use crate::config::Limits;
use crate::storage::codec::{EventRecord, SnapshotRecord};
use crate::storage::commit_guard::CommitMarker;
use crate::storage::{PointView, Storage, StorageError, WriteBatch};
use exesdb_types::StoreError;
use exesdb_types::{AppendResult, ExpectedVersion, validate_stream_id};
use exesdb_types::{EVENT_TYPE_BYTES_MAX, STREAM_ID_BYTES_MAX};

/// Content types are short labels; anything longer is a mistake.
const CONTENT_TYPE_BYTES_MAX: usize = 256;

/// A change to the store, ready to be applied. Ids and timestamps are already assigned.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) enum Command {
    /// Append events to a stream.
    Append(AppendCommand),
    /// Record (or replace) a snapshot.
    RecordSnapshot(SnapshotCommand),
    /// Delete a snapshot; deleting one that does not exist is not an error.
    DeleteSnapshot {
        source_uuid: String,
        stream_uuid: String,
        version: u64,
    },
    /// Store (or replace) a persistent subscription's definition.
    SaveSubscription { name: String, definition: Vec<u8> },
    /// Remove a persistent subscription: its definition, checkpoint and parked events.
    RemoveSubscription { name: String },
    /// Record that every event of a subscription before `position` is done.
    Checkpoint { name: String, position: u64 },
    /// Record that PubSub handed every event before `position` to the external bus.
    BusForwarded { position: u64 },
    /// Park an event of a subscription (or, with `parked` false, take it out of the park).
    Park {
        name: String,
        position: u64,
        parked: bool,
    },
    /// Several commands, applied in order as if one after the other; each has its own
    /// outcome (cluster mode proposes the commands that queued during a commit as one Raft
    /// entry). A batch holds no batch.
    Batch(Vec<Command>),
}

impl Command {
    /// About how many bytes the command carries: its payloads, not the encoding's framing.
    pub(crate) fn payload_bytes(&self) -> usize {
        match self {
            Command::Append(append) => append
                .events
                .iter()
                .map(|event| event.data.len() + event.metadata.len() + event.event_type.len())
                .sum(),
            Command::RecordSnapshot(snapshot) => snapshot.data.len() + snapshot.metadata.len(),
            Command::SaveSubscription { definition, .. } => definition.len(),
            Command::Batch(commands) => commands.iter().map(Command::payload_bytes).sum(),
            Command::DeleteSnapshot { .. }
            | Command::RemoveSubscription { .. }
            | Command::Checkpoint { .. }
            | Command::BusForwarded { .. }
            | Command::Park { .. } => 0,
        }
    }
}

/// An append, with every event's id and the time of acceptance fixed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AppendCommand {
    /// The stream appended to.
    pub stream_id: String,
    /// The version the stream must be at.
    pub expected: ExpectedVersion,
    /// The events, ids fixed.
    pub events: Vec<PreparedEvent>,
    /// The time every event of the append is recorded with, µs since the Unix epoch.
    pub created_micros: i64,
}

/// An event whose id is fixed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PreparedEvent {
    /// The event's id, the client's or generated.
    pub event_id: Uuid,
    /// Whether the client chose the id (a retry may repeat it) or the store generated it.
    pub client_event_id: bool,
    /// Its type.
    pub event_type: String,
    /// The payload.
    pub data: Vec<u8>,
    /// The writer's metadata.
    pub metadata: Vec<u8>,
    /// How `data` is encoded.
    pub data_content_type: String,
    /// How `metadata` is encoded.
    pub metadata_content_type: String,
}

/// A snapshot to record.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct SnapshotCommand {
    pub source_uuid: String,
    pub stream_uuid: String,
    pub version: u64,
    pub data: Vec<u8>,
    pub metadata: Vec<u8>,
    pub created_micros: i64,
}

/// What applying a command did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) enum Outcome {
    /// Events were appended, or a retry found them already there (nothing written).
    Appended(AppendResult),
    /// The snapshot was written.
    SnapshotRecorded,
    /// The snapshot is gone.
    SnapshotDeleted,
    /// A subscription's definition, checkpoint or parked set changed, or PubSub's position.
    SubscriptionChanged,
    /// A batch's commands were applied: the outcome of each, in order.
    Batch(Vec<Result<Outcome, StoreError>>),
}

/// State derived from the log, kept between batches: the next position and a bounded cache of
/// stream versions (memory does not grow with the number of streams stored).
pub(crate) struct StateMachine {
    next_position: u64,
    /// The sequence number of the last committed batch (its commit marker's).
    commit_sequence: u64,
    heads: HeadCache,
    limits: Limits,
}

impl StateMachine {
    /// Derives the state from what storage holds.
    pub(crate) fn recover(
        storage: &Storage,
        limits: Limits,
        head_cache_entries_max: usize,
    ) -> Result<Self, StorageError> {
        let engine = storage.engine()?;
        Ok(StateMachine {
            next_position: engine.next_position()?,
            commit_sequence: engine.last_commit()?.map_or(0, |marker| marker.sequence),
            heads: HeadCache::new(head_cache_entries_max),
            limits,
        })
    }

    /// The position the next appended event gets.
    pub(crate) fn next_position(&self) -> u64 {
        self.next_position
    }

    /// Starts a batch of commands that will be written as one storage batch.
    /// `unavailable` while the engine is being reopened.
    pub(crate) fn begin<'a>(
        &'a mut self,
        storage: &Storage,
    ) -> Result<Transaction<'a>, StorageError> {
        self.begin_with(storage, true)
    }

    /// [`Self::begin`] for cluster mode's apply: the batch is not synced on its own, since the
    /// Raft log already holds its commands durably ([`Engine::unsynced_write_batch`]).
    ///
    /// [`Engine::unsynced_write_batch`]: crate::storage::Engine
    pub(crate) fn begin_replicated<'a>(
        &'a mut self,
        storage: &Storage,
    ) -> Result<Transaction<'a>, StorageError> {
        self.begin_with(storage, false)
    }

    fn begin_with<'a>(
        &'a mut self,
        storage: &Storage,
        synced: bool,
    ) -> Result<Transaction<'a>, StorageError> {
        let engine = storage.engine()?;
        let batch = if synced {
            engine.write_batch()
        } else {
            engine.unsynced_write_batch()
        };
        Ok(Transaction {
            next_position: self.next_position,
            machine: self,
            view: engine.point_view(),
            batch,
            heads: HashMap::new(),
            appended: HashMap::new(),
            event_ids: HashMap::new(),
        })
    }
}

/// Commands applied together; [`Transaction::commit`] writes them with one fsync, and only a
/// successful commit changes the machine's state.
pub(crate) struct Transaction<'a> {
    machine: &'a mut StateMachine,
    /// Everything committed before this batch; the batch's own effects are in the maps below.
    view: PointView,
    batch: WriteBatch,
    next_position: u64,
    heads: HashMap<String, u64>,
    /// Positions of the events this batch appended, by (stream, event number).
    appended: HashMap<(String, u64), u64>,
    event_ids: HashMap<(String, Uuid), u64>,
}

impl Transaction<'_> {
    /// Applies one command on top of the batch so far. A command that fails writes nothing.
    pub(crate) fn apply(&mut self, command: &Command) -> Result<Outcome, StoreError> {
        match command {
            Command::Append(append) => self.append(append).map(Outcome::Appended),
            Command::RecordSnapshot(snapshot) => {
                self.record_snapshot(snapshot)?;
                Ok(Outcome::SnapshotRecorded)
            }
            Command::SaveSubscription { name, definition } => {
                validate_subscription_name(name)?;
                self.batch.save_subscription(name, definition);
                Ok(Outcome::SubscriptionChanged)
            }
            Command::RemoveSubscription { name } => {
                validate_subscription_name(name)?;
                self.batch.remove_subscription(name)?;
                Ok(Outcome::SubscriptionChanged)
            }
            Command::Checkpoint { name, position } => {
                validate_subscription_name(name)?;
                self.batch.set_checkpoint(name, *position);
                Ok(Outcome::SubscriptionChanged)
            }
            Command::BusForwarded { position } => {
                self.batch.set_bus_position(*position);
                Ok(Outcome::SubscriptionChanged)
            }
            Command::Park {
                name,
                position,
                parked,
            } => {
                validate_subscription_name(name)?;
                if *parked {
                    self.batch.park(name, *position);
                } else {
                    self.batch.unpark(name, *position);
                }
                Ok(Outcome::SubscriptionChanged)
            }
            Command::DeleteSnapshot {
                source_uuid,
                stream_uuid,
                version,
            } => {
                validate_snapshot_key(source_uuid, stream_uuid)?;
                self.batch
                    .delete_snapshot(source_uuid, stream_uuid, *version);
                Ok(Outcome::SnapshotDeleted)
            }
            Command::Batch(commands) => {
                if commands
                    .iter()
                    .any(|command| matches!(command, Command::Batch(_)))
                {
                    return Err(StoreError::invalid(
                        "a batch of commands holds another batch",
                    ));
                }
                Ok(Outcome::Batch(
                    commands.iter().map(|command| self.apply(command)).collect(),
                ))
            }
        }
    }

    /// Records the Raft applied state (cluster mode) in this batch, with the data it describes.
    pub(crate) fn set_raft_applied(&mut self, applied: &[u8]) {
        self.batch.set_raft_applied(applied);
    }

    /// Writes the batch durably (fsync) and, on success, folds its effects into the machine.
    /// Returns the next position, and whether anything was written (an fsync happened).
    pub(crate) fn commit(self) -> Result<(u64, bool), StorageError> {
        let wrote = !self.batch.is_empty();
        if wrote {
            let marker = CommitMarker {
                sequence: self.machine.commit_sequence + 1,
                next_position: self.next_position,
            };
            self.batch.commit(marker)?;
            self.machine.commit_sequence = marker.sequence;
        }
        self.machine.next_position = self.next_position;
        for (stream_id, version) in self.heads {
            self.machine.heads.insert(stream_id, version);
        }
        Ok((self.next_position, wrote))
    }

    fn append(&mut self, command: &AppendCommand) -> Result<AppendResult, StoreError> {
        validate_append(command, &self.machine.limits)?;
        let stream_id = command.stream_id.as_str();
        let current = self.stream_version(stream_id)?;
        // Ids the store generated (UUID v7) are new by construction; only ids a client chose
        // can repeat, so only they cost an index lookup.
        let existing = command
            .events
            .iter()
            .map(|event| match event.client_event_id {
                true => self.event_number_of_id(stream_id, event.event_id),
                false => Ok(None),
            })
            .collect::<Result<Vec<_>, _>>()?;
        if existing.iter().all(Option::is_none) {
            check_expected(command.expected, current)?;
            return self.write_append(command, current);
        }
        let first = existing[0];
        let full_repeat = first.is_some_and(|first| {
            existing
                .iter()
                .enumerate()
                .all(|(i, number)| *number == Some(first + i as u64))
        });
        match first {
            Some(first) if full_repeat => {
                let at_expected_place = match command.expected {
                    ExpectedVersion::Any | ExpectedVersion::StreamExists => true,
                    ExpectedVersion::NoStream => first == 0,
                    ExpectedVersion::Exact(version) => first == version + 1,
                };
                if !at_expected_place {
                    return Err(wrong_expected_version(command.expected, current));
                }
                self.original_result(stream_id, first, command.events.len() as u64)
            }
            _ => Err(StoreError::IdempotencyConflict(format!(
                "some of the append's event ids are already recorded in {stream_id}, \
                 but not as one earlier append of exactly these events"
            ))),
        }
    }

    fn write_append(
        &mut self,
        command: &AppendCommand,
        current: Option<u64>,
    ) -> Result<AppendResult, StoreError> {
        let stream_id = command.stream_id.as_str();
        let first_event_number = current.map_or(0, |version| version + 1);
        let first_position = self.next_position;
        for (offset, event) in command.events.iter().enumerate() {
            let offset = offset as u64;
            let event_number = first_event_number + offset;
            let position = first_position + offset;
            let record = EventRecord {
                stream_id,
                event_number,
                event_id: event.event_id,
                created_micros: command.created_micros,
                event_type: &event.event_type,
                data_content_type: &event.data_content_type,
                metadata_content_type: &event.metadata_content_type,
                data: &event.data,
                metadata: &event.metadata,
            };
            // Only client-chosen ids can come back in a retry, so only they are indexed.
            self.batch
                .append_event(position, &record, event.client_event_id);
            if event.client_event_id {
                self.event_ids
                    .insert((stream_id.to_string(), event.event_id), event_number);
            }
            self.appended
                .insert((stream_id.to_string(), event_number), position);
        }
        let count = command.events.len() as u64;
        let last_event_number = first_event_number + count - 1;
        self.batch.set_stream_head(stream_id, last_event_number);
        self.heads.insert(stream_id.to_string(), last_event_number);
        self.next_position += count;
        Ok(AppendResult {
            first_event_number,
            last_event_number,
            first_position,
            last_position: first_position + count - 1,
        })
    }

    fn original_result(
        &self,
        stream_id: &str,
        first_event_number: u64,
        count: u64,
    ) -> Result<AppendResult, StoreError> {
        let last_event_number = first_event_number + count - 1;
        let position = |number| {
            self.position_of(stream_id, number)?.ok_or_else(|| {
                StoreError::unavailable(format!(
                    "stream index of {stream_id} lacks event {number} that its id index names"
                ))
            })
        };
        Ok(AppendResult {
            first_event_number,
            last_event_number,
            first_position: position(first_event_number)?,
            last_position: position(last_event_number)?,
        })
    }

    fn record_snapshot(&mut self, snapshot: &SnapshotCommand) -> Result<(), StoreError> {
        validate_snapshot_key(&snapshot.source_uuid, &snapshot.stream_uuid)?;
        let bytes = (snapshot.data.len() + snapshot.metadata.len()) as u64;
        let max = self.machine.limits.snapshot_bytes_max;
        if bytes > max {
            return Err(StoreError::limit("snapshot_bytes_max", max, bytes));
        }
        let record = SnapshotRecord {
            data: snapshot.data.clone(),
            metadata: snapshot.metadata.clone(),
            created_micros: snapshot.created_micros,
        };
        self.batch.record_snapshot(
            &snapshot.source_uuid,
            &snapshot.stream_uuid,
            snapshot.version,
            &record,
        );
        Ok(())
    }

    fn stream_version(&mut self, stream_id: &str) -> Result<Option<u64>, StoreError> {
        if let Some(version) = self.heads.get(stream_id) {
            return Ok(Some(*version));
        }
        if let Some(version) = self.machine.heads.get(stream_id) {
            return Ok(Some(version));
        }
        let stored = self.view.stream_version(stream_id)?;
        if let Some(version) = stored {
            self.machine.heads.insert(stream_id.to_string(), version);
        }
        Ok(stored)
    }

    fn event_number_of_id(
        &self,
        stream_id: &str,
        event_id: Uuid,
    ) -> Result<Option<u64>, StoreError> {
        if let Some(number) = self.event_ids.get(&(stream_id.to_string(), event_id)) {
            return Ok(Some(*number));
        }
        Ok(self.view.event_number_of_id(stream_id, event_id)?)
    }

    fn position_of(&self, stream_id: &str, event_number: u64) -> Result<Option<u64>, StoreError> {
        if let Some(position) = self.appended.get(&(stream_id.to_string(), event_number)) {
            return Ok(Some(*position));
        }
        Ok(self.view.position_of(stream_id, event_number)?)
    }
}

fn check_expected(expected: ExpectedVersion, current: Option<u64>) -> Result<(), StoreError> {
    let ok = match expected {
        ExpectedVersion::Any => true,
        ExpectedVersion::NoStream => current.is_none(),
        ExpectedVersion::StreamExists => current.is_some(),
        ExpectedVersion::Exact(version) => current == Some(version),
    };
    if ok {
        Ok(())
    } else {
        Err(wrong_expected_version(expected, current))
    }
}

fn wrong_expected_version(expected: ExpectedVersion, current: Option<u64>) -> StoreError {
    StoreError::WrongExpectedVersion {
        expected: expected.to_string(),
        current: current.map_or(-1, |version| version as i64),
    }
}

/// Checks an append against the contract and the limits; shared by every path into the store.
pub fn validate_append(command: &AppendCommand, limits: &Limits) -> Result<(), StoreError> {
    validate_stream_id(&command.stream_id, false)?;
    let count = command.events.len() as u64;
    if count == 0 {
        return Err(StoreError::invalid("an append needs at least one event"));
    }
    if count > limits.append_events_max {
        return Err(StoreError::limit(
            "append_events_max",
            limits.append_events_max,
            count,
        ));
    }
    let mut total_bytes = 0u64;
    let mut ids = std::collections::HashSet::with_capacity(command.events.len());
    for event in &command.events {
        if event.event_type.is_empty() || event.event_type.len() > EVENT_TYPE_BYTES_MAX {
            return Err(StoreError::invalid(format!(
                "event type must be 1 to {EVENT_TYPE_BYTES_MAX} bytes, found {}",
                event.event_type.len()
            )));
        }
        for content_type in [&event.data_content_type, &event.metadata_content_type] {
            if content_type.len() > CONTENT_TYPE_BYTES_MAX {
                return Err(StoreError::invalid(format!(
                    "content type is {} bytes; the most is {CONTENT_TYPE_BYTES_MAX}",
                    content_type.len()
                )));
            }
        }
        let bytes = (event.data.len() + event.metadata.len()) as u64;
        if bytes > limits.event_bytes_max {
            return Err(StoreError::limit(
                "event_bytes_max",
                limits.event_bytes_max,
                bytes,
            ));
        }
        total_bytes += bytes;
        if !ids.insert(event.event_id) {
            return Err(StoreError::invalid(format!(
                "event id {} appears twice in one append",
                event.event_id
            )));
        }
    }
    if total_bytes > limits.append_bytes_max {
        return Err(StoreError::limit(
            "append_bytes_max",
            limits.append_bytes_max,
            total_bytes,
        ));
    }
    Ok(())
}

/// Subscription names: 1..=256 bytes without control characters.
fn validate_subscription_name(name: &str) -> Result<(), StoreError> {
    if name.is_empty() || name.len() > 256 || name.chars().any(char::is_control) {
        return Err(StoreError::invalid(
            "a subscription name must be 1 to 256 bytes without control characters",
        ));
    }
    Ok(())
}

fn validate_snapshot_key(source_uuid: &str, stream_uuid: &str) -> Result<(), StoreError> {
    for (what, value) in [("source uuid", source_uuid), ("stream uuid", stream_uuid)] {
        if value.is_empty()
            || value.len() > STREAM_ID_BYTES_MAX
            || value.chars().any(char::is_control)
        {
            return Err(StoreError::invalid(format!(
                "snapshot {what} must be 1 to {STREAM_ID_BYTES_MAX} bytes without control characters"
            )));
        }
    }
    Ok(())
}

/// A bounded map of stream versions: two generations, the older dropped whole when the newer
/// fills up. Cheap, and memory stays within twice the half-capacity whatever is stored.
struct HeadCache {
    young: HashMap<String, u64>,
    old: HashMap<String, u64>,
    generation_entries_max: usize,
}

impl HeadCache {
    fn new(entries_max: usize) -> Self {
        HeadCache {
            young: HashMap::new(),
            old: HashMap::new(),
            generation_entries_max: (entries_max / 2).max(1),
        }
    }

    fn get(&mut self, stream_id: &str) -> Option<u64> {
        if let Some(version) = self.young.get(stream_id) {
            return Some(*version);
        }
        let version = self.old.remove(stream_id)?;
        self.insert(stream_id.to_string(), version);
        Some(version)
    }

    fn insert(&mut self, stream_id: String, version: u64) {
        if self.young.len() >= self.generation_entries_max && !self.young.contains_key(&stream_id) {
            self.old = std::mem::take(&mut self.young);
        }
        self.old.remove(&stream_id);
        self.young.insert(stream_id, version);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_cache_stays_bounded_and_keeps_recent_entries() {
        let mut cache = HeadCache::new(10);
        for i in 0..1_000u64 {
            cache.insert(format!("s{i}"), i);
        }
        assert!(cache.young.len() + cache.old.len() <= 10);
        assert_eq!(cache.get("s999"), Some(999));
        assert_eq!(cache.get("s0"), None);
    }
}
