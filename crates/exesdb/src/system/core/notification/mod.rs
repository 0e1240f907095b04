//! `ExESDB.NotificationSystem` [S] (:rest_for_one): `LeaderSystem` → `EmitterSystem`. The
//! leader's worker loads the stored persistent subscriptions that the emitters then deliver,
//! so a restart of the leadership machinery restarts the emitters after it. Restart
//! intensity: the System's (`restarts_max` within `restart_period_ms`).

pub(crate) mod emitter;
pub(crate) mod leader;
pub(crate) mod persistent;
pub(crate) mod subscription;
pub(crate) mod tail;
pub(crate) mod wakeups;

use exesdb_types::Strategy;

use crate::supervision::ChildSpec;
use crate::supervision::pool::WorkerPool;
use crate::system::wiring::Wiring;
use emitter::EmitterWork;

/// Emitters depend on what the leader's worker loaded: they restart after it.
const STRATEGY: Strategy = Strategy::RestForOne;

/// `ExESDB.NotificationSystem` and the handle of the emitters' pool.
pub(crate) fn notification_system(wiring: &Wiring) -> (WorkerPool<EmitterWork>, ChildSpec) {
    let (emitters, emitter_system) = emitter::emitter_system(wiring);
    let spec = wiring.supervisor(
        "ExESDB.NotificationSystem",
        STRATEGY,
        vec![
            leader::leader_system(wiring, emitters.work().clone()),
            emitter_system,
        ],
    );
    (emitters, spec)
}
