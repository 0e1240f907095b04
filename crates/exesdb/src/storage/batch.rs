//! The one way to change stored data: a typed batch of the store's changes, written with one
//! fsync. Keys and record encodings stay inside `storage/`; the state machine says what changed
//! (an event appended, a stream head moved, a subscription checkpointed), never where it goes.

use std::sync::Arc;

use fjall::{OwnedWriteBatch, PersistMode};

use super::codec::{self, ChunkWriter, EventRecord, SnapshotRecord};
use super::commit_guard::CommitMarker;
use super::{
    BUS_POSITION_KEY, COMMIT_MARKER_KEY, Engine, StorageError, event_id_key, indexes, parked_key,
    snapshot_key, stream_index_key,
};

/// Changes to apply together: all of them reach the disk, or none. Only the Store's committer
/// makes one ([`Engine::write_batch`]).
pub(crate) struct WriteBatch {
    engine: Arc<Engine>,
    batch: OwnedWriteBatch,
    /// The appended events' index entries, written at commit (one per index, not per event).
    postings: indexes::Postings,
    /// The log chunk being filled, and the position of its first record.
    chunk: ChunkWriter,
    chunk_first: u64,
}

impl Engine {
    /// A batch that fsyncs its journal (`SyncData`) when committed. Crate-private, so that
    /// only the committer (through `StateMachine::begin`) can write.
    pub(crate) fn write_batch(self: &Arc<Self>) -> WriteBatch {
        self.write_batch_with(Some(PersistMode::SyncData))
    }

    /// A batch written to the journal without an fsync of its own: cluster mode's apply, whose
    /// entries are already synced in the Raft log. The journal is one sequential file, so the
    /// next synced write (the next log append) makes it durable too; a crash before that loses
    /// only what the log still holds, and openraft applies it again.
    pub(crate) fn unsynced_write_batch(self: &Arc<Self>) -> WriteBatch {
        self.write_batch_with(None)
    }

    fn write_batch_with(self: &Arc<Self>, durability: Option<PersistMode>) -> WriteBatch {
        // `durability` consumes the batch and returns a new one: dropping the returned value
        // would silently lose the mode.
        let batch = self.db.batch().durability(durability);
        WriteBatch {
            engine: self.clone(),
            batch,
            postings: indexes::Postings::default(),
            chunk: ChunkWriter::default(),
            chunk_first: 0,
        }
    }
}

impl WriteBatch {
    /// Appends one event at `position`: its record in the log, its stream index entry, its
    /// entries in the indexes by type and by category, and, when `index_event_id` (the client
    /// chose the id, so a retry may repeat it), its event-id index entry.
    pub(crate) fn append_event(
        &mut self,
        position: u64,
        record: &EventRecord<'_>,
        index_event_id: bool,
    ) {
        if !self.chunk.is_empty()
            && (self.chunk.is_full() || position != self.chunk_first + self.chunk.len() as u64)
        {
            self.close_chunk();
        }
        if self.chunk.is_empty() {
            self.chunk_first = position;
        }
        self.chunk.push(record);
        let engine = &self.engine;
        self.batch.insert(
            &engine.stream_index,
            stream_index_key(record.stream_id, record.event_number),
            position.to_be_bytes(),
        );
        self.postings.add_record(record, position);
        if index_event_id {
            self.batch.insert(
                &engine.event_ids,
                event_id_key(record.stream_id, record.event_id),
                record.event_number.to_be_bytes(),
            );
        }
    }

    /// Puts the chunk being filled into the batch.
    fn close_chunk(&mut self) {
        if !self.chunk.is_empty() {
            self.batch.insert(
                &self.engine.log,
                self.chunk_first.to_be_bytes(),
                self.chunk.finish(),
            );
        }
    }

    /// Sets a stream's version (the number of its last event); a stream exists once it has one.
    pub(crate) fn set_stream_head(&mut self, stream_id: &str, version: u64) {
        self.batch.insert(
            &self.engine.stream_heads,
            stream_id.as_bytes(),
            version.to_be_bytes(),
        );
    }

    /// Records a snapshot, replacing one with the same key.
    pub(crate) fn record_snapshot(
        &mut self,
        source_uuid: &str,
        stream_uuid: &str,
        version: u64,
        record: &SnapshotRecord,
    ) {
        self.batch.insert(
            &self.engine.snapshots,
            snapshot_key(source_uuid, stream_uuid, version),
            record.encode(),
        );
    }

    /// Deletes a snapshot; one that does not exist is not an error.
    pub(crate) fn delete_snapshot(&mut self, source_uuid: &str, stream_uuid: &str, version: u64) {
        self.batch.remove(
            &self.engine.snapshots,
            snapshot_key(source_uuid, stream_uuid, version),
        );
    }

    /// Stores a persistent subscription's definition, replacing one under the same name.
    pub(crate) fn save_subscription(&mut self, name: &str, definition: &[u8]) {
        self.batch.insert(
            &self.engine.subscriptions,
            name.as_bytes(),
            codec::seal_blob(definition),
        );
    }

    /// Removes a persistent subscription's definition, checkpoint and parked events. The parked
    /// events are those committed before this batch: a `park` earlier in the same batch stays.
    pub(crate) fn remove_subscription(&mut self, name: &str) -> Result<(), StorageError> {
        let engine = self.engine.clone();
        self.batch.remove(&engine.subscriptions, name.as_bytes());
        self.batch.remove(&engine.checkpoints, name.as_bytes());
        for position in engine.parked_positions(name)? {
            self.batch
                .remove(&engine.parked, parked_key(name, position));
        }
        Ok(())
    }

    /// Records that PubSub handed every event before `position` to the external bus.
    pub(crate) fn set_bus_position(&mut self, position: u64) {
        self.batch.insert(
            &self.engine.checkpoints,
            BUS_POSITION_KEY,
            position.to_be_bytes(),
        );
    }

    /// Records that every event of a subscription before `position` is done.
    pub(crate) fn set_checkpoint(&mut self, name: &str, position: u64) {
        self.batch.insert(
            &self.engine.checkpoints,
            name.as_bytes(),
            position.to_be_bytes(),
        );
    }

    /// Parks the event at `position` for a subscription.
    pub(crate) fn park(&mut self, name: &str, position: u64) {
        self.batch
            .insert(&self.engine.parked, parked_key(name, position), []);
    }

    /// Takes the event at `position` out of a subscription's park.
    pub(crate) fn unpark(&mut self, name: &str, position: u64) {
        self.batch
            .remove(&self.engine.parked, parked_key(name, position));
    }

    /// Whether nothing was added (committing would write nothing and not fsync).
    /// Records the Raft applied state (cluster mode) in this batch, with the data it describes.
    pub(crate) fn set_raft_applied(&mut self, applied: &[u8]) {
        self.batch.insert(
            &self.engine.commits,
            super::cluster::RAFT_APPLIED_KEY,
            super::cluster::seal(applied),
        );
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.batch.is_empty() && self.chunk.is_empty()
    }

    /// Ends the batch with its commit marker (its last item, see [`super::commit_guard`]) and
    /// writes it with one fsync. An error leaves the engine refusing every later write, as
    /// fjall does: the committer must reopen the storage ([`super::Storage::reopen`]).
    pub(crate) fn commit(mut self, marker: CommitMarker) -> Result<(), StorageError> {
        self.close_chunk();
        let WriteBatch {
            engine,
            mut batch,
            postings,
            ..
        } = self;
        if batch.is_empty() {
            return Ok(());
        }
        for (key, value) in postings.into_entries() {
            batch.insert(&engine.indexes, key, value);
        }
        batch.insert(
            &engine.commits,
            COMMIT_MARKER_KEY,
            marker.encode().as_slice(),
        );
        #[cfg(feature = "fault-injection")]
        engine.faults.before_commit()?;
        batch.commit()?;
        Ok(())
    }

    /// Test-only: the log record of one event as a lone value, as format 2 and earlier wrote
    /// it, with its stream index entry.
    #[cfg(test)]
    pub(super) fn lone_record_for_test(&mut self, position: u64, record: &EventRecord<'_>) {
        self.batch
            .insert(&self.engine.log, position.to_be_bytes(), record.encode());
        self.index_entry_for_test(record.stream_id, record.event_number, position);
    }

    /// Test-only: a stream index entry that points wherever the test says, to show that reads
    /// check the record against the index.
    #[cfg(test)]
    pub(super) fn index_entry_for_test(
        &mut self,
        stream_id: &str,
        event_number: u64,
        position: u64,
    ) {
        self.batch.insert(
            &self.engine.stream_index,
            stream_index_key(stream_id, event_number),
            position.to_be_bytes(),
        );
    }
}
