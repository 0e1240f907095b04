//! One module per system under test. Each starts its system in the run's directory, runs the
//! loads of `crate::load` against it, reads everything back, and stops it.

pub(crate) mod exesdb_embedded;
pub(crate) mod exesdb_server;
pub(crate) mod nats;
pub(crate) mod postgres;
pub(crate) mod sierradb;
pub(crate) mod sqlite;
#[cfg(feature = "umadb")]
pub(crate) mod umadb;
