//! `ExESDB.StoreRegistry` [GS]: lists this store among the stores the node hosts while it runs.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use crate::supervision::service::Service;
use crate::system::context::StoreContext;

/// The stores hosted by one node. Systems started with clones of one value see each other.
#[derive(Debug, Clone, Default)]
pub struct NodeStores(Arc<Mutex<BTreeSet<String>>>);

impl NodeStores {
    /// The store ids registered now, sorted.
    pub fn list(&self) -> Vec<String> {
        self.lock().iter().cloned().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeSet<String>> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The registry service.
pub(crate) struct StoreRegistry;

impl Service for StoreRegistry {
    fn start(&self, context: &StoreContext) -> Result<(), String> {
        context
            .config
            .node_stores
            .lock()
            .insert(context.store_id().to_string());
        Ok(())
    }

    fn stop(&self, context: &StoreContext) {
        context.config.node_stores.lock().remove(context.store_id());
    }
}
