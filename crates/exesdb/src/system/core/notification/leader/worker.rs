//! `ExESDB.LeaderWorker` [GS]: does the leader's duties when this node leads: it loads every
//! stored persistent subscription (from its checkpoint) so that `EmitterSystem`, started after
//! it, runs an emitter for each.

use crate::supervision::service::Service;
use crate::system::context::StoreContext;

/// The leader's duties.
pub(crate) struct LeaderWorker;

impl Service for LeaderWorker {
    fn start(&self, context: &StoreContext) -> Result<(), String> {
        if context.is_leader() {
            let loaded = context
                .persistent
                .load(context)
                .map_err(|error| format!("cannot load persistent subscriptions: {error}"))?;
            tracing::info!(store = context.store_id(), loaded, "leader duties active");
        }
        Ok(())
    }

    fn stop(&self, _context: &StoreContext) {}
}
