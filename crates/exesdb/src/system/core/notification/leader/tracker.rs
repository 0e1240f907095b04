//! `ExESDB.LeaderTracker` [GS]: knows whether this node leads the store. In single mode it
//! always does; cluster mode will follow Raft leadership here.

use std::sync::atomic::Ordering;

use crate::supervision::service::Service;
use crate::system::context::StoreContext;

/// Single-mode leadership: leader from start to stop.
pub(crate) struct LeaderTracker;

impl Service for LeaderTracker {
    fn start(&self, context: &StoreContext) -> Result<(), String> {
        context.leader.store(true, Ordering::Release);
        Ok(())
    }

    fn stop(&self, context: &StoreContext) {
        context.leader.store(false, Ordering::Release);
    }
}
