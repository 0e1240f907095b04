//! `ExESDB.LeaderSystem` [S] (:rest_for_one): `LeaderTracker` → `LeaderWorker`. rest_for_one
//! because the worker's duties depend on what the tracker says about leadership. Restart
//! intensity: the System's (`restarts_max` within `restart_period_ms`).

pub(crate) mod tracker;
pub(crate) mod worker;

use std::sync::Arc;

use exesdb_types::Strategy;

use crate::supervision::ChildSpec;
use crate::system::core::notification::emitter::EmitterWork;
use crate::system::wiring::Wiring;
use tracker::LeaderTracker;
use worker::LeaderWorker;

/// The worker depends on the tracker: a tracker restart restarts the worker after it.
const STRATEGY: Strategy = Strategy::RestForOne;

/// `ExESDB.LeaderSystem`.
pub(crate) fn leader_system(wiring: &Wiring, emitters: Arc<EmitterWork>) -> ChildSpec {
    wiring.supervisor(
        "ExESDB.LeaderSystem",
        STRATEGY,
        vec![
            wiring.service("ExESDB.LeaderTracker", Arc::new(LeaderTracker)),
            wiring.service("ExESDB.LeaderWorker", Arc::new(LeaderWorker::new(emitters))),
        ],
    )
}
