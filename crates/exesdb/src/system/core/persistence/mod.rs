//! `ExESDB.PersistenceSystem` [S] (:one_for_one): `Streams`, `Snapshots`, `Subscriptions`:
//! independent data components, so one failing never restarts the others.

pub(crate) mod snapshots;
pub(crate) mod streams;
pub(crate) mod subscriptions;
