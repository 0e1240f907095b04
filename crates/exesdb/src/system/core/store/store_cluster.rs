//! `ExESDB.StoreCluster` [GS]: the store's view of its replica set. In single mode the set is
//! this node alone, fixed at start. In cluster mode the set is the Raft group's membership,
//! which `System::cluster_status` reads from the group itself; this process holds nothing more
//! yet.

use crate::supervision::service::Service;
use crate::system::context::StoreContext;

/// The single-mode cluster view: nothing to join, nothing to watch.
pub(crate) struct StoreCluster;

impl Service for StoreCluster {
    fn start(&self, context: &StoreContext) -> Result<(), String> {
        match &context.config.cluster {
            None => tracing::debug!(
                store = context.store_id(),
                "single mode: this node is the whole replica set"
            ),
            Some(cluster) => tracing::debug!(
                store = context.store_id(),
                node_id = cluster.node_id,
                "cluster mode: the replica set is the Raft group's membership"
            ),
        }
        Ok(())
    }

    fn stop(&self, _context: &StoreContext) {}
}
