//! The Raft log, the vote and the committed log id, in the store's fjall database.
//!
//! `append` does what openraft asks of it: it returns once the entries are readable and
//! answers the callback once they are synced. The entries go to the store's log writer (one
//! thread, `exesdb-raft-log`), which writes every append queued behind the one it is syncing
//! in one batch with one fsync, then answers their callbacks in order. Until then, and for a
//! while after, they are read from [`Recent`], the newest entries kept in memory, so that
//! replicating and applying them reads neither the disk nor a decoder. Without this, openraft's
//! core waited out each fsync inside `append` and could neither replicate nor batch meanwhile.
//! Truncations and purges go through the same writer, so they happen after the appends
//! submitted before them; the vote and reads of old entries use blocking threads.

use std::collections::VecDeque;
use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

use openraft::OptionalSend;
use openraft::storage::{IOFlushed, LogState, RaftLogReader, RaftLogStorage};
use tokio::sync::{mpsc, oneshot};

use super::{Entry, LogId, TypeConfig, Vote, decode, encode, storage_io};
use crate::storage::{Engine, Storage, StorageError};

const VOTE_KEY: &str = "vote";
const COMMITTED_KEY: &str = "committed";
const PURGED_KEY: &str = "purged";

/// Writes waiting for the log writer, at most; `append` waits for room beyond that, which
/// also bounds the entries [`Recent`] must keep because they are not yet synced.
const LOG_WRITES_QUEUED_MAX: usize = 64;
/// About the most encoded bytes one synced batch of appends carries.
const LOG_BATCH_BYTES_MAX: usize = 8 * 1024 * 1024;
/// Synced entries stay in memory while the newest ones total less than this (by their encoded
/// size); older ones are read from the disk. Entries not yet synced always stay.
const RECENT_BYTES_MAX: usize = 32 * 1024 * 1024;

/// The store's Raft log (a handle: clones share the storage, the newest entries and the log
/// writer, which stops when the last clone is dropped).
#[derive(Clone)]
pub(crate) struct LogStore {
    storage: Arc<Storage>,
    recent: Arc<Mutex<Recent>>,
    writer: Arc<LogWriter>,
}

impl LogStore {
    pub(crate) fn new(storage: Arc<Storage>, store_id: &str) -> io::Result<Self> {
        Self::keeping(storage, store_id, RECENT_BYTES_MAX)
    }

    /// A log that keeps synced entries in memory up to `recent_bytes_max`.
    pub(super) fn keeping(
        storage: Arc<Storage>,
        store_id: &str,
        recent_bytes_max: usize,
    ) -> io::Result<Self> {
        let recent = Arc::new(Mutex::new(Recent::new(recent_bytes_max)));
        let writer = LogWriter::start(storage.clone(), recent.clone(), store_id)?;
        Ok(LogStore {
            storage,
            recent,
            writer: Arc::new(writer),
        })
    }

    fn recent(&self) -> MutexGuard<'_, Recent> {
        lock(&self.recent)
    }

    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Engine) -> io::Result<T> + Send + 'static,
    ) -> io::Result<T> {
        let storage = self.storage.clone();
        tokio::task::spawn_blocking(move || {
            let engine = storage.engine().map_err(storage_io)?;
            work(&engine)
        })
        .await
        .map_err(io::Error::other)?
    }

    /// Has the log writer do `write` after everything submitted before it, and waits for it.
    async fn write_in_order(
        &self,
        write: impl FnOnce(oneshot::Sender<io::Result<()>>) -> LogWrite,
    ) -> io::Result<()> {
        let (done, finished) = oneshot::channel();
        self.writer.submit(write(done)).await?;
        finished.await.map_err(|_| writer_gone())?
    }
}

fn lock(recent: &Mutex<Recent>) -> MutexGuard<'_, Recent> {
    recent
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn writer_gone() -> io::Error {
    io::Error::other("the Raft log writer has stopped")
}

/// The newest entries of the log, consecutive: every entry submitted and not yet synced, and
/// the newest synced ones up to `bytes_max` (by their encoded size).
struct Recent {
    entries: VecDeque<(Entry, usize)>,
    bytes: usize,
    bytes_max: usize,
    /// The last index the writer has synced, as far as the entries held now go.
    synced_through: Option<u64>,
    /// Bumped by each truncation: a sync of entries submitted before it says nothing about the
    /// entries that replaced them.
    generation: u64,
}

impl Recent {
    fn new(bytes_max: usize) -> Self {
        Recent {
            entries: VecDeque::new(),
            bytes: 0,
            bytes_max,
            synced_through: None,
            generation: 0,
        }
    }

    fn first_index(&self) -> Option<u64> {
        self.entries.front().map(|(entry, _)| entry.log_id.index)
    }

    fn last_log_id(&self) -> Option<LogId> {
        self.entries.back().map(|(entry, _)| entry.log_id)
    }

    fn push(&mut self, entry: Entry, size: usize) {
        let index = entry.log_id.index;
        // An append follows the last entry, or (the log having been purged past what is held)
        // starts afresh: openraft never leaves a hole.
        if self
            .last_log_id()
            .is_some_and(|last| last.index + 1 != index)
        {
            self.entries.clear();
            self.bytes = 0;
            self.synced_through = None;
            self.generation += 1;
        }
        self.bytes += size;
        self.entries.push_back((entry, size));
    }

    /// The held entries in `from..until`, from the first one held if `from` is before it.
    fn range(&self, from: u64, until: u64) -> Vec<Entry> {
        let Some(first) = self.first_index() else {
            return Vec::new();
        };
        let skip = usize::try_from(from.saturating_sub(first)).unwrap_or(usize::MAX);
        self.entries
            .iter()
            .skip(skip)
            .take_while(|(entry, _)| entry.log_id.index < until)
            .map(|(entry, _)| entry.clone())
            .collect()
    }

    fn truncate_from(&mut self, from: u64) {
        while let Some((entry, size)) = self.entries.back() {
            if entry.log_id.index < from {
                break;
            }
            self.bytes -= size;
            self.entries.pop_back();
        }
        self.synced_through = match from.checked_sub(1) {
            Some(kept) => self.synced_through.map(|synced| synced.min(kept)),
            None => None,
        };
        self.generation += 1;
    }

    fn purge_through(&mut self, through: u64) {
        while self
            .entries
            .front()
            .is_some_and(|(entry, _)| entry.log_id.index <= through)
        {
            self.pop_front();
        }
    }

    fn synced(&mut self, generation: u64, through: u64) {
        if generation == self.generation {
            self.synced_through = Some(self.synced_through.map_or(through, |s| s.max(through)));
        }
        while self.bytes > self.bytes_max
            && self
                .first_index()
                .zip(self.synced_through)
                .is_some_and(|(first, synced)| first <= synced)
        {
            self.pop_front();
        }
    }

    fn pop_front(&mut self) {
        if let Some((_, size)) = self.entries.pop_front() {
            self.bytes -= size;
        }
    }
}

/// What the log writer does, in the order submitted.
enum LogWrite {
    Append {
        entries: Vec<(u64, Vec<u8>)>,
        generation: u64,
        callback: IOFlushed<TypeConfig>,
    },
    TruncateFrom {
        from: u64,
        done: oneshot::Sender<io::Result<()>>,
    },
    Purge {
        through: u64,
        record: Vec<u8>,
        done: oneshot::Sender<io::Result<()>>,
    },
}

/// The store's log writer thread and its queue; dropping it lets the thread finish what is
/// queued and waits for it, so that the storage is released when the log is.
struct LogWriter {
    queue: Option<mpsc::Sender<LogWrite>>,
    thread: Option<JoinHandle<()>>,
}

impl LogWriter {
    fn start(
        storage: Arc<Storage>,
        recent: Arc<Mutex<Recent>>,
        store_id: &str,
    ) -> io::Result<Self> {
        let (queue, writes) = mpsc::channel(LOG_WRITES_QUEUED_MAX);
        let counters = SyncCounters {
            syncs: metrics::counter!("exesdb_raft_log_syncs_total", "store" => store_id.to_string()),
            entries: metrics::counter!(
                "exesdb_raft_log_entries_total",
                "store" => store_id.to_string()
            ),
        };
        let thread = std::thread::Builder::new()
            .name("exesdb-raft-log".to_string())
            .spawn(move || write_log(&storage, &recent, writes, &counters))?;
        Ok(LogWriter {
            queue: Some(queue),
            thread: Some(thread),
        })
    }

    async fn submit(&self, write: LogWrite) -> io::Result<()> {
        let queue = self.queue.as_ref().ok_or_else(writer_gone)?;
        queue.send(write).await.map_err(|_| writer_gone())
    }
}

impl Drop for LogWriter {
    fn drop(&mut self) {
        self.queue.take();
        if let Some(thread) = self.thread.take() {
            // At most the write in progress and those queued remain: their callbacks are
            // answered before the storage is let go.
            let _ = thread.join();
        }
    }
}

/// Counts the log's syncs and the entries they made durable, for this store.
struct SyncCounters {
    syncs: metrics::Counter,
    entries: metrics::Counter,
}

/// The log writer: takes the writes in order; appends queued together are written as one
/// synced batch, and their callbacks answered in order once it is durable.
fn write_log(
    storage: &Storage,
    recent: &Mutex<Recent>,
    mut writes: mpsc::Receiver<LogWrite>,
    counters: &SyncCounters,
) {
    let mut held: Option<LogWrite> = None;
    loop {
        let Some(write) = held.take().or_else(|| writes.blocking_recv()) else {
            return;
        };
        match write {
            LogWrite::Append {
                entries,
                generation,
                callback,
            } => {
                let mut batch = entries;
                let mut bytes: usize = batch.iter().map(|(_, encoded)| encoded.len()).sum();
                let mut answers = vec![(generation, last_index(&batch), callback)];
                while bytes < LOG_BATCH_BYTES_MAX {
                    match writes.try_recv() {
                        Ok(LogWrite::Append {
                            entries,
                            generation,
                            callback,
                        }) => {
                            bytes += entries
                                .iter()
                                .map(|(_, encoded)| encoded.len())
                                .sum::<usize>();
                            answers.push((generation, last_index(&entries), callback));
                            batch.extend(entries);
                        }
                        Ok(other) => {
                            held = Some(other);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                let written = storage
                    .engine()
                    .and_then(|engine| engine.raft_append(&batch))
                    .map_err(storage_io);
                if written.is_ok() && !batch.is_empty() {
                    counters.syncs.increment(1);
                    counters.entries.increment(batch.len() as u64);
                    let mut recent = lock(recent);
                    for (generation, last, _) in &answers {
                        if let Some(last) = last {
                            recent.synced(*generation, *last);
                        }
                    }
                }
                for (_, _, callback) in answers {
                    // An error stops openraft instead of leaving it waiting.
                    callback.io_completed(match &written {
                        Ok(()) => Ok(()),
                        Err(error) => Err(io::Error::new(error.kind(), error.to_string())),
                    });
                }
            }
            LogWrite::TruncateFrom { from, done } => {
                let truncated = storage
                    .engine()
                    .and_then(|engine| engine.raft_truncate_from(from))
                    .map_err(storage_io);
                let _ = done.send(truncated);
            }
            LogWrite::Purge {
                through,
                record,
                done,
            } => {
                let purged = storage
                    .engine()
                    .and_then(|engine| engine.raft_purge_through(through, PURGED_KEY, &record))
                    .map_err(storage_io);
                let _ = done.send(purged);
            }
        }
    }
}

fn last_index(entries: &[(u64, Vec<u8>)]) -> Option<u64> {
    entries.last().map(|(index, _)| *index)
}

fn read<T>(result: Result<T, StorageError>) -> io::Result<T> {
    result.map_err(storage_io)
}

fn decode_entries(entries: Vec<(u64, Vec<u8>)>) -> io::Result<Vec<Entry>> {
    entries
        .into_iter()
        .map(|(index, bytes)| {
            let entry: Entry = decode(&bytes, "Raft log entry")?;
            if entry.log_id.index != index {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "the Raft log entry at index {index} says it is {}",
                        entry.log_id.index
                    ),
                ));
            }
            Ok(entry)
        })
        .collect()
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> io::Result<Vec<Entry>> {
        let from = match range.start_bound() {
            Bound::Included(index) => *index,
            Bound::Excluded(index) => index.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let until = match range.end_bound() {
            Bound::Included(index) => index.saturating_add(1),
            Bound::Excluded(index) => *index,
            Bound::Unbounded => u64::MAX,
        };
        // The entries held in memory, and where the disk's part of the range ends.
        let (held, disk_until) = {
            let recent = self.recent();
            match recent.first_index() {
                Some(first) if from >= first => return Ok(recent.range(from, until)),
                Some(first) => (recent.range(first, until), until.min(first)),
                None => (Vec::new(), until),
            }
        };
        let stored = self
            .blocking(move |engine| read(engine.raft_entries(from, disk_until)))
            .await?;
        let mut entries = decode_entries(stored)?;
        // Joined only without a hole between them (the disk's part may end early: purged).
        let joins = match (entries.last(), held.first()) {
            (Some(last), Some(next)) => last.log_id.index + 1 == next.log_id.index,
            _ => true,
        };
        if joins {
            entries.extend(held);
        }
        Ok(entries)
    }

    async fn read_vote(&mut self) -> io::Result<Option<Vote>> {
        let stored = self
            .blocking(|engine| read(engine.raft_meta(VOTE_KEY)))
            .await?;
        stored.map(|bytes| decode(&bytes, "vote")).transpose()
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> io::Result<LogState<TypeConfig>> {
        let (purged, last) = self
            .blocking(|engine| {
                let purged = read(engine.raft_meta(PURGED_KEY))?;
                let last = read(engine.raft_last_entry())?;
                Ok((purged, last))
            })
            .await?;
        let last_purged_log_id: Option<LogId> = purged
            .map(|bytes| decode(&bytes, "last purged log id"))
            .transpose()?;
        // Entries submitted but not yet synced are part of the log already.
        let last_log_id = match (self.recent().last_log_id(), last) {
            (Some(held), _) => Some(held),
            (None, Some(last)) => decode_entries(vec![last])?.pop().map(|entry| entry.log_id),
            (None, None) => None,
        };
        Ok(LogState {
            last_log_id: last_log_id.or(last_purged_log_id),
            last_purged_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> io::Result<()> {
        let bytes = encode(vote)?;
        self.blocking(move |engine| read(engine.set_raft_meta(VOTE_KEY, &bytes, true)))
            .await
    }

    /// The committed log id is a hint that lets a restarted node apply sooner; losing the
    /// last one costs nothing but a wait for the leader, so it is not synced on its own (the
    /// next synced write carries it).
    async fn save_committed(&mut self, committed: Option<LogId>) -> io::Result<()> {
        let bytes = encode(&committed)?;
        self.blocking(move |engine| read(engine.set_raft_meta(COMMITTED_KEY, &bytes, false)))
            .await
    }

    async fn read_committed(&mut self) -> io::Result<Option<LogId>> {
        let stored = self
            .blocking(|engine| read(engine.raft_meta(COMMITTED_KEY)))
            .await?;
        match stored {
            Some(bytes) => decode(&bytes, "committed log id"),
            None => Ok(None),
        }
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<TypeConfig>) -> io::Result<()>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut held = Vec::new();
        let mut encoded = Vec::new();
        for entry in entries {
            match encode(&entry) {
                Ok(bytes) => {
                    encoded.push((entry.log_id.index, bytes));
                    held.push(entry);
                }
                Err(error) => {
                    // The callback learns of it too: an error stops openraft instead of
                    // leaving it waiting.
                    callback.io_completed(Err(io::Error::new(error.kind(), error.to_string())));
                    return Err(error);
                }
            }
        }
        let generation = {
            let mut recent = self.recent();
            for (entry, (_, bytes)) in held.into_iter().zip(&encoded) {
                recent.push(entry, bytes.len());
            }
            recent.generation
        };
        self.writer
            .submit(LogWrite::Append {
                entries: encoded,
                generation,
                callback,
            })
            .await
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> io::Result<()> {
        let from = last_log_id.map_or(0, |log_id| log_id.index + 1);
        self.recent().truncate_from(from);
        self.write_in_order(|done| LogWrite::TruncateFrom { from, done })
            .await
    }

    async fn purge(&mut self, log_id: LogId) -> io::Result<()> {
        let record = encode(&log_id)?;
        let through = log_id.index;
        self.recent().purge_through(through);
        self.write_in_order(|done| LogWrite::Purge {
            through,
            record,
            done,
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use openraft::EntryPayload;
    use openraft::testing::log_id;

    use super::*;

    fn blank(term: u64, index: u64) -> Entry {
        Entry {
            log_id: log_id::<TypeConfig>(term, 1, index),
            payload: EntryPayload::Blank,
        }
    }

    fn held(recent: &Recent) -> Vec<u64> {
        recent
            .entries
            .iter()
            .map(|(entry, _)| entry.log_id.index)
            .collect()
    }

    #[test]
    fn entries_not_yet_synced_stay_in_memory_past_the_bound_and_synced_ones_leave() {
        let mut recent = Recent::new(300);
        for index in 1..=10 {
            recent.push(blank(1, index), 100);
        }
        assert_eq!(held(&recent), (1..=10).collect::<Vec<_>>());
        recent.synced(recent.generation, 6);
        // Down to the bound, but never past what is synced.
        assert_eq!(held(&recent), (7..=10).collect::<Vec<_>>());
        recent.synced(recent.generation, 10);
        assert_eq!(held(&recent), vec![8, 9, 10]);
        assert_eq!(recent.bytes, 300);
    }

    #[test]
    fn a_sync_of_entries_a_truncation_replaced_does_not_count_for_their_replacements() {
        let mut recent = Recent::new(0);
        for index in 1..=10 {
            recent.push(blank(1, index), 100);
        }
        let before = recent.generation;
        recent.synced(before, 4);
        assert_eq!(held(&recent), (5..=10).collect::<Vec<_>>());
        recent.truncate_from(5);
        for index in 5..=7 {
            recent.push(blank(2, index), 100);
        }
        // The writer reports the old 1..=10 synced after the truncation was submitted.
        recent.synced(before, 10);
        assert_eq!(held(&recent), vec![5, 6, 7]);
        recent.synced(recent.generation, 7);
        assert!(held(&recent).is_empty());
    }

    #[test]
    fn a_range_starts_at_the_first_held_entry_and_stops_at_the_last() {
        let mut recent = Recent::new(usize::MAX);
        for index in 4..=8 {
            recent.push(blank(1, index), 1);
        }
        let indexes = |entries: Vec<Entry>| -> Vec<u64> {
            entries.iter().map(|entry| entry.log_id.index).collect()
        };
        assert_eq!(indexes(recent.range(5, 7)), vec![5, 6]);
        assert_eq!(indexes(recent.range(1, 6)), vec![4, 5]);
        assert_eq!(indexes(recent.range(7, u64::MAX)), vec![7, 8]);
        assert!(recent.range(9, 20).is_empty());
        // A purge past everything held, then an append further on, starts afresh.
        recent.purge_through(8);
        recent.push(blank(1, 20), 1);
        assert_eq!(held(&recent), vec![20]);
    }
}
