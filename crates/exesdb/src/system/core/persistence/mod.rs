//! `ExESDB.PersistenceSystem` [S] (:one_for_one): `Streams`, `Snapshots`, `Subscriptions`:
//! independent data components, so one failing never restarts the others. Restart intensity:
//! the System's (`restarts_max` within `restart_period_ms`).

pub(crate) mod snapshots;
pub(crate) mod streams;
pub(crate) mod subscriptions;

use exesdb_types::Strategy;

use crate::supervision::ChildSpec;
use crate::supervision::pool::WorkerPool;
use crate::system::wiring::Wiring;
use snapshots::{SnapshotsReaderWork, SnapshotsWriterWork};
use streams::reader::StreamsReaderWork;
use streams::writer::StreamsWriterWork;

/// Independent data components: one failing never restarts the others.
const STRATEGY: Strategy = Strategy::OneForOne;

/// The pools of the persistence layer, through which the API reaches its workers.
pub(crate) struct PersistencePools {
    pub(crate) streams_writers: WorkerPool<StreamsWriterWork>,
    pub(crate) streams_readers: WorkerPool<StreamsReaderWork>,
    pub(crate) snapshots_writers: WorkerPool<SnapshotsWriterWork>,
    pub(crate) snapshots_readers: WorkerPool<SnapshotsReaderWork>,
}

/// `ExESDB.PersistenceSystem` and the handles of its pools.
pub(crate) fn persistence_system(wiring: &Wiring) -> (PersistencePools, ChildSpec) {
    let (streams_writers, streams_readers, streams) = streams::streams(wiring);
    let (snapshots_writers, snapshots_readers, snapshots) = snapshots::snapshots(wiring);
    let spec = wiring.supervisor(
        "ExESDB.PersistenceSystem",
        STRATEGY,
        vec![streams, snapshots, subscriptions::subscriptions(wiring)],
    );
    let pools = PersistencePools {
        streams_writers,
        streams_readers,
        snapshots_writers,
        snapshots_readers,
    };
    (pools, spec)
}
