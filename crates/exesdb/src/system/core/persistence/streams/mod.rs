//! `ExESDB.Streams` [S] (:one_for_one): `StreamsWriters` [PS] and `StreamsReaders` [PS],
//! independent pools of per-stream workers; a failing reader pool never restarts writers.
//! Restart intensity: the System's (`restarts_max` within `restart_period_ms`).

pub(crate) mod reader;
pub(crate) mod writer;

use exesdb_types::Strategy;

use crate::supervision::ChildSpec;
use crate::supervision::pool::WorkerPool;
use crate::system::wiring::Wiring;
use reader::StreamsReaderWork;
use writer::StreamsWriterWork;

/// Writers and readers are independent pools: one failing never restarts the other.
const STRATEGY: Strategy = Strategy::OneForOne;

/// `ExESDB.Streams` and the handles of its two pools.
pub(crate) fn streams(
    wiring: &Wiring,
) -> (
    WorkerPool<StreamsWriterWork>,
    WorkerPool<StreamsReaderWork>,
    ChildSpec,
) {
    let pools = &wiring.context.config.pools;
    let (writers, writers_spec) = wiring.pool(
        "ExESDB.StreamsWriters",
        StreamsWriterWork {
            context: wiring.context.clone(),
        },
        pools.streams_writers_partitions,
        pools.writer_idle_ms,
    );
    let (readers, readers_spec) = wiring.pool(
        "ExESDB.StreamsReaders",
        StreamsReaderWork {
            context: wiring.context.clone(),
        },
        pools.streams_readers_partitions,
        pools.reader_idle_ms,
    );
    let spec = wiring.supervisor("ExESDB.Streams", STRATEGY, vec![writers_spec, readers_spec]);
    (writers, readers, spec)
}
