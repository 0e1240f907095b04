//! `ExESDB.PersistenceSystem` [S] (:one_for_one): `Streams`, `Snapshots`, `Subscriptions`:
//! independent data components, so one failing never restarts the others.

pub mod snapshots;
pub mod streams;
pub mod subscriptions;
