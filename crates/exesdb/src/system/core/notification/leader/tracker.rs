//! `ExESDB.LeaderTracker` [GS]: knows whether this node leads the store. In single mode it
//! always does. In cluster mode it starts as a follower, and the flag follows Raft's view of
//! the leader from then on (the Store's Raft group sets it, `core/store/store.rs`).

use crate::supervision::service::Service;
use crate::system::context::StoreContext;

/// Leadership: from start to stop in single mode; as Raft says in cluster mode.
pub(crate) struct LeaderTracker;

impl Service for LeaderTracker {
    fn start(&self, context: &StoreContext) -> Result<(), String> {
        context.set_leader(context.config.cluster.is_none());
        Ok(())
    }

    fn stop(&self, context: &StoreContext) {
        context.set_leader(false);
    }
}
