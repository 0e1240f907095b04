//! `ExESDB.EmitterSystem` [S] (:one_for_one) with `ExESDB.EmitterPools` [PS]: partitions
//! (dynamic supervisors) that will run one emitter per subscription. Until subscriptions exist
//! (issue 4) no request can reach an emitter, which the request type states: it has no values.

use std::convert::Infallible;

use crate::supervision::pool::KeyedWork;

/// The work of emitters: none yet.
pub struct EmitterWork;

impl KeyedWork for EmitterWork {
    type Request = Infallible;
    const WORKER_NAME: &'static str = "ExESDB.Emitter";

    async fn handle(&self, _key: &str, request: Infallible) {
        match request {}
    }
}
