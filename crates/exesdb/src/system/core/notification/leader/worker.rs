//! `ExESDB.LeaderWorker` [GS]: does the leader's duties when this node leads: it loads every
//! stored persistent subscription (from its checkpoint) so that `EmitterSystem`, started after
//! it, runs an emitter for each. On every node, leader or not, it also runs the emitters'
//! waker, which turns each commit notice (and each subscriber's read) into the next step of
//! the emitters parked waiting for it.
//!
//! In cluster mode leadership moves: the worker follows it, loading the groups when this node
//! gains it and stopping them when it loses it, so that only the leader delivers a group.

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
    /// Cluster mode: the task that follows leadership, likewise.
    duties: Mutex<Option<AbortHandle>>,
}

impl LeaderWorker {
    pub(crate) fn new(emitters: Arc<EmitterWork>) -> Self {
        LeaderWorker {
            emitters,
            waker: Mutex::new(None),
            duties: Mutex::new(None),
        }
    }

    fn end_tasks(&self) {
        for slot in [&self.waker, &self.duties] {
            let task = slot
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .take();
            if let Some(task) = task {
                task.abort();
            }
        }
    }
}

impl Service for LeaderWorker {
    fn start(&self, context: &StoreContext) -> Result<(), String> {
        self.end_tasks();
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
        if context.config.cluster.is_some() {
            let duties = tokio::spawn(follow_leadership(self.emitters.context.clone()));
            *self
                .duties
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(duties.abort_handle());
        }
        Ok(())
    }

    fn stop(&self, _context: &StoreContext) {
        self.end_tasks();
    }
}

/// Takes up the leader's duties when this node gains the leadership, and drops them when it
/// loses it.
async fn follow_leadership(context: Arc<StoreContext>) {
    let mut leadership = context.leadership();
    let mut leading = false;
    loop {
        let now = *leadership.borrow_and_update();
        if now && !leading {
            let loading = context.clone();
            let loaded =
                tokio::task::spawn_blocking(move || loading.persistent.load(&loading)).await;
            match loaded {
                Ok(Ok(loaded)) => {
                    tracing::info!(store = context.store_id(), loaded, "leader duties active");
                }
                Ok(Err(error)) => tracing::error!(
                    store = context.store_id(),
                    %error,
                    "cannot load persistent subscriptions"
                ),
                Err(error) => tracing::error!(store = context.store_id(), %error, "loading failed"),
            }
        } else if !now && leading {
            let stopped = context.persistent.unload();
            tracing::info!(
                store = context.store_id(),
                stopped,
                "leader duties stopped: another node leads"
            );
        }
        leading = now;
        if leadership.changed().await.is_err() {
            return;
        }
    }
}
