//! The Raft log, the vote and the committed log id, in the store's fjall database. Each call
//! runs on a blocking thread (fjall reads and fsyncs block); `append` answers openraft's
//! callback only once the entries are synced.

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use openraft::OptionalSend;
use openraft::storage::{IOFlushed, LogState, RaftLogReader, RaftLogStorage};

use super::{Entry, LogId, TypeConfig, Vote, decode, encode, storage_io};
use crate::storage::{Engine, Storage, StorageError};

const VOTE_KEY: &str = "vote";
const COMMITTED_KEY: &str = "committed";
const PURGED_KEY: &str = "purged";

/// The store's Raft log (a handle: clones share the storage).
#[derive(Clone)]
pub(crate) struct LogStore {
    storage: Arc<Storage>,
    /// Counts the log's syncs and the entries they made durable, for this store.
    syncs: metrics::Counter,
    entries: metrics::Counter,
}

impl LogStore {
    pub(crate) fn new(storage: Arc<Storage>, store_id: &str) -> Self {
        LogStore {
            storage,
            syncs: metrics::counter!("exesdb_raft_log_syncs_total", "store" => store_id.to_string()),
            entries: metrics::counter!(
                "exesdb_raft_log_entries_total",
                "store" => store_id.to_string()
            ),
        }
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
        let entries = self
            .blocking(move |engine| read(engine.raft_entries(from, until)))
            .await?;
        decode_entries(entries)
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
        let last_log_id = match last {
            Some(last) => decode_entries(vec![last])?.pop().map(|entry| entry.log_id),
            None => None,
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
        let encoded = entries
            .into_iter()
            .map(|entry| Ok((entry.log_id.index, encode(&entry)?)))
            .collect::<io::Result<Vec<_>>>();
        let result = match encoded {
            Ok(encoded) => {
                let count = encoded.len() as u64;
                let appended = self
                    .blocking(move |engine| read(engine.raft_append(&encoded)))
                    .await;
                if appended.is_ok() && count > 0 {
                    self.syncs.increment(1);
                    self.entries.increment(count);
                }
                appended
            }
            Err(error) => Err(error),
        };
        // The callback learns the outcome either way: an error stops openraft instead of
        // leaving it waiting.
        match result {
            Ok(()) => {
                callback.io_completed(Ok(()));
                Ok(())
            }
            Err(error) => {
                callback.io_completed(Err(io::Error::new(error.kind(), error.to_string())));
                Err(error)
            }
        }
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> io::Result<()> {
        let from = last_log_id.map_or(0, |log_id| log_id.index + 1);
        self.blocking(move |engine| read(engine.raft_truncate_from(from)))
            .await
    }

    async fn purge(&mut self, log_id: LogId) -> io::Result<()> {
        let bytes = encode(&log_id)?;
        let through = log_id.index;
        self.blocking(move |engine| read(engine.raft_purge_through(through, PURGED_KEY, &bytes)))
            .await
    }
}
