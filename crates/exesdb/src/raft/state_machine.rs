//! The store's state machine as Raft drives it: committed entries are applied by the Store's
//! own [`StateMachine`] in one storage batch, with the applied state (last applied log id and
//! membership) in that same batch. Snapshots are the whole store: built from one point-in-time
//! view into a checksummed file (`storage::cluster`), and installed by replacing the data.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use futures_util::{Stream, StreamExt};
use openraft::storage::{EntryResponder, RaftSnapshotBuilder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend};
use tokio::sync::watch;

use super::{
    ApplyReply, LogId, Replicated, SnapshotMeta, StoredMembership, TypeConfig, decode, encode,
    storage_io,
};
use crate::config::Limits;
use crate::storage::cluster::read_snapshot_header;
use crate::storage::{Storage, StorageError};
use crate::system::core::store::state_machine::StateMachine;

/// The snapshot this node built or installed last, in the snapshot directory.
const CURRENT_SNAPSHOT: &str = "current.snap";

type Snapshot = openraft::alias::SnapshotOf<TypeConfig, SnapshotFile>;

/// A snapshot's file, open: the handle keeps the bytes it names even if a newer snapshot
/// replaces the file at `path` meanwhile.
#[derive(Debug)]
pub(crate) struct SnapshotFile {
    pub(crate) file: File,
    pub(crate) path: PathBuf,
}

/// The last applied log id and the membership as of it, as stored with the data.
type AppliedState = (Option<LogId>, StoredMembership);

struct MachineState {
    machine: StateMachine,
    applied: AppliedState,
}

struct Shared {
    storage: Arc<Storage>,
    snapshot_dir: PathBuf,
    limits: Limits,
    head_cache_entries_max: usize,
    state: Mutex<MachineState>,
    /// The "committed up to position P" mark subscribers wait on.
    committed: watch::Sender<u64>,
}

/// The store's state machine under Raft (a handle: clones share it).
#[derive(Clone)]
pub(crate) struct ReplicatedStateMachine {
    shared: Arc<Shared>,
}

impl ReplicatedStateMachine {
    /// Opens the state machine over the store's storage; snapshot files go in `snapshot_dir`.
    /// An install that a crash cut short is cleared first: the data is then empty, and Raft
    /// brings it back from the log or a snapshot.
    pub(crate) fn open(
        storage: Arc<Storage>,
        snapshot_dir: PathBuf,
        limits: Limits,
        head_cache_entries_max: usize,
        committed: watch::Sender<u64>,
    ) -> io::Result<Self> {
        std::fs::create_dir_all(&snapshot_dir)?;
        let engine = storage.engine().map_err(storage_io)?;
        if engine.raft_install_interrupted().map_err(storage_io)? {
            tracing::warn!("a snapshot install was interrupted; clearing its partial data");
            engine.clear_interrupted_install().map_err(storage_io)?;
        }
        let applied = read_applied(engine.raft_applied().map_err(storage_io)?)?;
        drop(engine);
        let machine = StateMachine::recover(&storage, limits.clone(), head_cache_entries_max)
            .map_err(storage_io)?;
        committed.send_replace(machine.next_position());
        Ok(ReplicatedStateMachine {
            shared: Arc::new(Shared {
                storage,
                snapshot_dir,
                limits,
                head_cache_entries_max,
                state: Mutex::new(MachineState { machine, applied }),
                committed,
            }),
        })
    }

    /// Where a snapshot received from the leader is written before it is installed.
    #[allow(dead_code)]
    pub(crate) fn receiving_path(&self, name: &str) -> PathBuf {
        self.shared
            .snapshot_dir
            .join(format!("receiving-{name}.snap"))
    }

    /// The storage the machine applies to.
    pub(crate) fn storage(&self) -> &Arc<Storage> {
        &self.shared.storage
    }

    /// The size of the snapshot this node holds, 0 when it holds none.
    pub(crate) fn snapshot_bytes(&self) -> u64 {
        std::fs::metadata(self.current_path()).map_or(0, |metadata| metadata.len())
    }

    fn current_path(&self) -> PathBuf {
        self.shared.snapshot_dir.join(CURRENT_SNAPSHOT)
    }

    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Shared) -> io::Result<T> + Send + 'static,
    ) -> io::Result<T> {
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || work(&shared))
            .await
            .map_err(io::Error::other)?
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, MachineState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn read_applied(stored: Option<Vec<u8>>) -> io::Result<AppliedState> {
    match stored {
        Some(bytes) => decode(&bytes, "applied state"),
        None => Ok((None, StoredMembership::default())),
    }
}

/// Applies committed entries as one batch; returns each entry's reply, in order.
fn apply_entries(
    shared: &Shared,
    entries: Vec<openraft::alias::EntryOf<TypeConfig>>,
) -> io::Result<Vec<ApplyReply>> {
    let mut state = shared.lock();
    let MachineState { machine, applied } = &mut *state;
    let mut next_applied = applied.clone();
    let mut transaction = machine
        .begin_replicated(&shared.storage)
        .map_err(storage_io)?;
    let mut replies = Vec::with_capacity(entries.len());
    for entry in entries {
        let log_id = entry.log_id;
        match entry.payload {
            EntryPayload::Normal(Replicated(command)) => {
                replies.push(ApplyReply::Command(transaction.apply(&command)));
            }
            EntryPayload::Blank => replies.push(ApplyReply::Internal),
            EntryPayload::Membership(membership) => {
                next_applied.1 = StoredMembership::new(Some(log_id), membership);
                replies.push(ApplyReply::Internal);
            }
        }
        next_applied.0 = Some(log_id);
    }
    transaction.set_raft_applied(&encode(&next_applied)?);
    let (next_position, _) = transaction.commit().map_err(storage_io)?;
    *applied = next_applied;
    drop(state);
    shared.committed.send_if_modified(|committed| {
        let advanced = *committed != next_position;
        *committed = next_position;
        advanced
    });
    Ok(replies)
}

impl RaftStateMachine<TypeConfig> for ReplicatedStateMachine {
    type SnapshotData = SnapshotFile;
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> io::Result<AppliedState> {
        Ok(self.shared.lock().applied.clone())
    }

    async fn apply<Strm>(&mut self, entries: Strm) -> io::Result<()>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + OptionalSend,
    {
        let items: Vec<EntryResponder<TypeConfig>> = entries
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<io::Result<_>>()?;
        let (entries, responders): (Vec<_>, Vec<_>) = items.into_iter().unzip();
        let replies = self
            .blocking(move |shared| apply_entries(shared, entries))
            .await?;
        for (responder, reply) in responders.into_iter().zip(replies) {
            if let Some(responder) = responder {
                responder.send(reply);
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            machine: self.clone(),
        }
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        mut snapshot: SnapshotFile,
    ) -> io::Result<()> {
        let applied: AppliedState = (meta.last_log_id, meta.last_membership.clone());
        let current = self.current_path();
        self.blocking(move |shared| {
            let encoded = encode(&applied)?;
            let mut state = shared.lock();
            let engine = shared.storage.engine().map_err(storage_io)?;
            engine
                .install_store_snapshot(&mut snapshot.file, &snapshot.path, &encoded)
                .map_err(storage_io)?;
            drop(engine);
            // A snapshot received into this directory becomes the current one; one from
            // elsewhere (a test's other node) is copied, not taken away from its owner.
            if snapshot.path.parent() == Some(shared.snapshot_dir.as_path()) {
                if snapshot.path != current {
                    std::fs::rename(&snapshot.path, &current)?;
                }
            } else {
                std::fs::copy(&snapshot.path, &current)?;
                File::open(&current)?.sync_all()?;
            }
            File::open(&shared.snapshot_dir)?.sync_all()?;
            let machine = StateMachine::recover(
                &shared.storage,
                shared.limits.clone(),
                shared.head_cache_entries_max,
            )
            .map_err(storage_io)?;
            let next_position = machine.next_position();
            *state = MachineState { machine, applied };
            drop(state);
            shared.committed.send_replace(next_position);
            Ok(())
        })
        .await
    }

    async fn get_current_snapshot(&mut self) -> io::Result<Option<Snapshot>> {
        let path = self.current_path();
        self.blocking(move |_| open_snapshot(&path)).await
    }
}

/// The snapshot at `path`, if there is one.
fn open_snapshot(path: &Path) -> io::Result<Option<Snapshot>> {
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(error),
    };
    let header = read_snapshot_header(&mut file, path).map_err(storage_io)?;
    let meta: SnapshotMeta = decode(&header, "snapshot header")?;
    Ok(Some(Snapshot {
        meta,
        snapshot: SnapshotFile {
            file,
            path: path.to_path_buf(),
        },
    }))
}

/// Builds a snapshot of the whole store in the background.
pub(crate) struct SnapshotBuilder {
    machine: ReplicatedStateMachine,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    type SnapshotData = SnapshotFile;

    async fn build_snapshot(&mut self) -> io::Result<Snapshot> {
        let path = self.machine.current_path();
        self.machine
            .blocking(move |shared| {
                let engine = shared.storage.engine().map_err(storage_io)?;
                let written = engine.write_store_snapshot(&path, |applied| {
                    let (last_log_id, last_membership) =
                        read_applied(applied).map_err(|error| error.to_string())?;
                    encode(&SnapshotMeta {
                        last_log_id,
                        last_membership,
                    })
                    .map_err(|error| error.to_string())
                });
                let bytes = written.map_err(storage_io)?;
                metrics::gauge!("exesdb_raft_snapshot_bytes", "store" => shared.storage.path().display().to_string())
                    .set(bytes as f64);
                open_snapshot(&path)?.ok_or_else(|| {
                    io::Error::other(StorageError::Snapshot(format!(
                        "{} vanished after it was written",
                        path.display()
                    )))
                })
            })
            .await
    }
}

/// The replies of [`apply_entries`] (the responders openraft passes cannot be made outside it).
#[cfg(test)]
pub(super) async fn apply_entries_for_test(
    machine: &ReplicatedStateMachine,
    entries: Vec<openraft::alias::EntryOf<TypeConfig>>,
) -> io::Result<Vec<ApplyReply>> {
    machine
        .blocking(move |shared| apply_entries(shared, entries))
        .await
}
