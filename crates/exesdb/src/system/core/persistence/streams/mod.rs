//! `ExESDB.Streams` [S] (:one_for_one): `StreamsWriters` [PS] and `StreamsReaders` [PS],
//! independent pools of per-stream workers; a failing reader pool never restarts writers.

pub(crate) mod reader;
pub(crate) mod writer;
