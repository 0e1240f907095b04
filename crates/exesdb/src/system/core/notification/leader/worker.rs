//! `ExESDB.LeaderWorker` [GS]: does the leader's duties when this node leads. Today that is
//! taking stock of the stored subscriptions; starting an emitter for each one under
//! `EmitterPools` arrives with subscriptions (issue 4).

use crate::supervision::service::Service;
use crate::system::context::StoreContext;

/// The leader's duties.
pub struct LeaderWorker;

impl Service for LeaderWorker {
    fn start(&self, context: &StoreContext) -> Result<(), String> {
        if context.is_leader() {
            let stored = context.storage.subscriptions.approximate_len();
            tracing::info!(
                store = context.store_id(),
                subscriptions = stored,
                "leader duties active"
            );
        }
        Ok(())
    }

    fn stop(&self, _context: &StoreContext) {}
}
