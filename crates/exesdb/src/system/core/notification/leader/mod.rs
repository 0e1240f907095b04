//! `ExESDB.LeaderSystem` [S] (:rest_for_one): `LeaderTracker` → `LeaderWorker`. rest_for_one
//! because the worker's duties depend on what the tracker says about leadership.

pub(crate) mod tracker;
pub(crate) mod worker;
