//! `ExESDB.StoreCluster` [GS]: the store's view of its replica set. In single mode the set is
//! this node alone, fixed at start; cluster mode (a later issue) fills it from Raft membership.

use crate::supervision::service::Service;
use crate::system::context::StoreContext;

/// The single-mode cluster view: nothing to join, nothing to watch.
pub(crate) struct StoreCluster;

impl Service for StoreCluster {
    fn start(&self, context: &StoreContext) -> Result<(), String> {
        tracing::debug!(
            store = context.store_id(),
            "single mode: this node is the whole replica set"
        );
        Ok(())
    }

    fn stop(&self, _context: &StoreContext) {}
}
