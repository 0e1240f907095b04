//! `ExESDB.CoreSystem` [S] (:one_for_all): `PersistenceSystem`, `NotificationSystem`,
//! `StoreSystem`. Tightly coupled (workers submit to the Store, emitters follow its commits),
//! so any of them failing restarts all three from a consistent start. Restart intensity: the
//! System's (`restarts_max` within `restart_period_ms`).

pub(crate) mod notification;
pub(crate) mod persistence;
pub(crate) mod store;

use exesdb_types::Strategy;

use crate::supervision::ChildSpec;
use crate::supervision::pool::WorkerPool;
use crate::system::wiring::Wiring;
use notification::emitter::EmitterWork;
use persistence::PersistencePools;

/// Tightly coupled: any child failing restarts all three.
const STRATEGY: Strategy = Strategy::OneForAll;

/// `ExESDB.CoreSystem` and the handles of the pools under it.
pub(crate) fn core_system(
    wiring: &Wiring,
) -> (PersistencePools, WorkerPool<EmitterWork>, ChildSpec) {
    let (persistence_pools, persistence) = persistence::persistence_system(wiring);
    let (emitters, notification) = notification::notification_system(wiring);
    let spec = wiring.supervisor(
        "ExESDB.CoreSystem",
        STRATEGY,
        vec![persistence, notification, store::store_system(wiring)],
    );
    (persistence_pools, emitters, spec)
}
