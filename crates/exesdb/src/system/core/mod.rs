//! `ExESDB.CoreSystem` [S] (:one_for_all): `PersistenceSystem`, `NotificationSystem`,
//! `StoreSystem`. Tightly coupled (workers submit to the Store, emitters follow its commits),
//! so any of them failing restarts all three from a consistent start.

pub(crate) mod notification;
pub(crate) mod persistence;
pub(crate) mod store;
