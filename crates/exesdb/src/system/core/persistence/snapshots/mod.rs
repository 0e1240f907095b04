//! `ExESDB.Snapshots` [S] (:one_for_one): `SnapshotsWriters` [PS] and `SnapshotsReaders` [PS],
//! workers shared by the (source uuid, stream uuid) keys, a key always the same worker. Writes
//! go through the Store's committer like appends (durable before the reply); reads go to
//! storage.
//! Restart intensity: the System's (`restarts_max` within `restart_period_ms`).

use std::sync::Arc;

use tokio::sync::oneshot;

use crate::storage::StoredSnapshot;
use exesdb_types::Strategy;

use crate::supervision::ChildSpec;
use crate::supervision::pool::{KeyedWork, WorkerPool};
use crate::system::context::StoreContext;
use crate::system::core::store::state_machine::{Command, Outcome};
use crate::system::wiring::Wiring;
use exesdb_types::StoreError;

/// A snapshot write (record or delete) on its way to the committer.
pub(crate) struct SnapshotWrite {
    pub command: Command,
    pub reply: oneshot::Sender<Result<Outcome, StoreError>>,
}

/// What snapshot writers do.
pub(crate) struct SnapshotsWriterWork {
    pub context: Arc<StoreContext>,
}

impl KeyedWork for SnapshotsWriterWork {
    type Request = SnapshotWrite;
    const WORKER_NAME: &'static str = "ExESDB.SnapshotsWriter";
    const SHARED_WORKERS: bool = true;

    async fn handle(&self, _key: &str, request: SnapshotWrite) {
        self.context.submit(request.command, request.reply).await;
    }
}

/// A snapshot read.
pub(crate) enum SnapshotRead {
    Read {
        source_uuid: String,
        stream_uuid: String,
        version: u64,
        exact: bool,
        reply: oneshot::Sender<Result<Option<StoredSnapshot>, StoreError>>,
    },
    List {
        source_uuid: Option<String>,
        stream_uuid: Option<String>,
        count: u64,
        reply: oneshot::Sender<Result<Vec<StoredSnapshot>, StoreError>>,
    },
}

/// What snapshot readers do.
pub(crate) struct SnapshotsReaderWork {
    pub context: Arc<StoreContext>,
}

impl KeyedWork for SnapshotsReaderWork {
    type Request = SnapshotRead;
    const WORKER_NAME: &'static str = "ExESDB.SnapshotsReader";
    const SHARED_WORKERS: bool = true;

    async fn handle(&self, _key: &str, request: SnapshotRead) {
        // As stream reads: storage work never holds up the runtime's other tasks.
        let context = self.context.clone();
        crate::system::blocking(move || read(&context, request)).await;
    }
}

/// Runs one snapshot read against storage and answers it.
fn read(context: &StoreContext, request: SnapshotRead) {
    let storage = &context.storage;
    match request {
        SnapshotRead::Read {
            source_uuid,
            stream_uuid,
            version,
            exact,
            reply,
        } => {
            let result = storage
                .engine()
                .and_then(|engine| engine.read_snapshot(&source_uuid, &stream_uuid, version, exact))
                .map_err(StoreError::from);
            let _ = reply.send(result);
        }
        SnapshotRead::List {
            source_uuid,
            stream_uuid,
            count,
            reply,
        } => {
            let result = storage
                .engine()
                .and_then(|engine| {
                    engine.list_snapshots(source_uuid.as_deref(), stream_uuid.as_deref(), count)
                })
                .map_err(StoreError::from);
            let _ = reply.send(result);
        }
    }
}

/// Writers and readers are independent pools: one failing never restarts the other.
const STRATEGY: Strategy = Strategy::OneForOne;

/// `ExESDB.Snapshots` and the handles of its two pools.
pub(crate) fn snapshots(
    wiring: &Wiring,
) -> (
    WorkerPool<SnapshotsWriterWork>,
    WorkerPool<SnapshotsReaderWork>,
    ChildSpec,
) {
    let pools = &wiring.context.config.pools;
    let (writers, writers_spec) = wiring.pool(
        "ExESDB.SnapshotsWriters",
        SnapshotsWriterWork {
            context: wiring.context.clone(),
        },
        pools.snapshots_partitions,
        pools.writer_idle_ms,
    );
    let (readers, readers_spec) = wiring.pool(
        "ExESDB.SnapshotsReaders",
        SnapshotsReaderWork {
            context: wiring.context.clone(),
        },
        pools.snapshots_partitions,
        pools.reader_idle_ms,
    );
    let spec = wiring.supervisor(
        "ExESDB.Snapshots",
        STRATEGY,
        vec![writers_spec, readers_spec],
    );
    (writers, readers, spec)
}
