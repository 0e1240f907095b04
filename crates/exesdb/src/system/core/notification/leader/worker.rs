//! `ExESDB.LeaderWorker` [GS]: does the leader's duties when this node leads: it loads every
//! stored persistent subscription (from its checkpoint) so that `EmitterSystem`, started after
//! it, runs an emitter for each. On every node, leader or not, it also runs the emitters'
//! waker, which turns each commit notice (and each subscriber's read) into the next step of
//! the emitters parked waiting for it.

use std::sync::{Arc, Mutex};

use tokio::task::AbortHandle;

use crate::supervision::service::Service;
use crate::system::context::StoreContext;
use crate::system::core::notification::emitter::{EmitterWork, wake_parked_emitters};

/// The leader's duties.
pub(crate) struct LeaderWorker {
    emitters: Arc<EmitterWork>,
    /// The waker of this incarnation; a restart after a kill (no `stop`) ends the old one.
    waker: Mutex<Option<AbortHandle>>,
}

impl LeaderWorker {
    pub(crate) fn new(emitters: Arc<EmitterWork>) -> Self {
        LeaderWorker {
            emitters,
            waker: Mutex::new(None),
        }
    }

    fn end_waker(&self) {
        let waker = self
            .waker
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        if let Some(waker) = waker {
            waker.abort();
        }
    }
}

impl Service for LeaderWorker {
    fn start(&self, context: &StoreContext) -> Result<(), String> {
        self.end_waker();
        if context.is_leader() {
            let loaded = context
                .persistent
                .load(context)
                .map_err(|error| format!("cannot load persistent subscriptions: {error}"))?;
            tracing::info!(store = context.store_id(), loaded, "leader duties active");
        }
        // Every node's emitters serve its transient subscriptions, leader or not.
        let waker = tokio::spawn(wake_parked_emitters(self.emitters.clone()));
        *self
            .waker
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(waker.abort_handle());
        Ok(())
    }

    fn stop(&self, _context: &StoreContext) {
        self.end_waker();
    }
}
