//! The engine's integration tests, one module per subject, linked into one test binary so that
//! a change relinks one executable rather than one per file. Each module starts its own
//! `System` on real storage in a temporary directory. (`../idle_subscriber.rs` stays a binary
//! of its own: it measures its process's memory.)

mod common;

mod append_semantics;
mod concurrency;
mod crash;
mod fault_injection;
mod fuzz_decoding;
mod gateway;
mod indexes;
mod persistent;
mod pubsub;
mod storage_damage;
mod storage_faults;
mod subscriptions;
mod supervision;
