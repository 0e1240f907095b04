//! One module per system under test. Each starts its system in the run's directory, runs the
//! loads of `crate::load` against it, reads everything back, and stops it.

pub mod exesdb_embedded;
pub mod exesdb_server;
pub mod nats;
pub mod postgres;
pub mod sqlite;
