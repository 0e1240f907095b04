//! The command's integration tests, one module per subject, linked into one test binary so
//! that a change relinks one executable rather than one per file. Each test starts real
//! `exesdb serve` processes on free loopback ports with data in temporary directories.
//! (`../disk_full.rs` stays a binary of its own: it needs root and the `root-tests` feature.)

mod common;

mod bench_smoke;
mod cli;
mod client_api;
mod cluster;
mod cluster_changes;
mod cluster_faults;
#[cfg(feature = "root-tests")]
mod cluster_partitions;
mod flood;
mod large_reads;
mod persistent;
mod reflection;
mod serve;
mod shutdown;
mod subscribe;
mod torture;
mod wire_bad_input;
