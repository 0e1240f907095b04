//! `ExESDB.EmitterSystem` [S] (:one_for_one) with `ExESDB.EmitterPools` [PS]: one emitter per
//! subscription, under the partition its id hashes to.
//!
//! An emitter delivers by reading storage, always: from the subscription's position up to the
//! store's "committed up to" mark, in bounded pages. Catching up and following live commits are
//! the same loop, so the switch between them can neither lose nor repeat an event; once the
//! position reaches the mark the store had when the subscription started (every event stored
//! then is delivered), the subscriber gets `CaughtUp`. A
//! subscriber that does not read fills its bounded buffer (`subscriber_buffer_events_max`
//! events, `subscriber_buffer_bytes_max` bytes); the emitter then just stops advancing (its
//! position stays in the subscription state) and waits for room, and a step scans no more
//! events or bytes than there is room for, so memory stays bounded by the buffer and
//! writers never wait for it. Each step is one message to the emitter, handled in
//! bounded time, so emitters stop promptly and a restarted one resumes from the position.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc::error::SendTimeoutError;

use super::subscription::{SubscriptionRegistry, SubscriptionState};
use exesdb_types::Strategy;

use crate::supervision::ChildSpec;
use crate::supervision::pool::{KeyedWork, WorkerPool};
use crate::system::context::StoreContext;
use crate::system::lock_ignoring_poison;
use crate::system::wiring::Wiring;
use exesdb_types::SubscriptionMessage;

/// How long one emitter step waits for a subscriber's room or for new commits.
const STEP_WAIT: Duration = Duration::from_millis(50);

/// One step of an emitter.
pub(crate) enum EmitterRequest {
    Pump,
}

/// The work of emitters.
pub(crate) struct EmitterWork {
    pub context: Arc<StoreContext>,
    pub subscriptions: Arc<SubscriptionRegistry>,
    /// The emitters' own pool, for the next step: set once the pool exists, cleared when the
    /// System stops (the pool holds this work, so the link must be broken by hand).
    pub pool: Mutex<Option<WorkerPool<EmitterWork>>>,
    /// Records scanned in one step.
    pub scan_events_max: u64,
}

impl KeyedWork for EmitterWork {
    type Request = EmitterRequest;
    const WORKER_NAME: &'static str = "ExESDB.Emitter";

    async fn handle(&self, key: &str, _request: EmitterRequest) {
        if let Some(name) = key.strip_prefix(PERSISTENT_PREFIX) {
            let Some(group) = self.context.persistent.get(name) else {
                return; // removed: no next step, and the emitter idles out
            };
            group.step_taken();
            self.step_persistent(name).await;
            if group.claim_step() {
                self.schedule(key).await;
            }
            return;
        }
        let Some(subscription) = self.subscriptions.get(key) else {
            return; // ended: no next step, and the emitter idles out
        };
        if subscription.sender.is_closed() {
            self.subscriptions.remove(key);
            return;
        }
        let stepping = subscription.stepping.lock().await;
        let more = self.step(&subscription).await;
        drop(stepping);
        if more {
            self.schedule(key).await;
        } else {
            self.subscriptions.remove(key);
        }
    }

    fn resume(&self) -> Vec<(String, EmitterRequest)> {
        let persistent = self
            .context
            .persistent
            .names()
            .into_iter()
            .map(persistent_key);
        self.subscriptions
            .ids()
            .into_iter()
            .chain(persistent)
            .map(|id| (id, EmitterRequest::Pump))
            .collect()
    }
}

/// Emitter keys of persistent subscriptions start with this (transient ones are UUIDs).
const PERSISTENT_PREFIX: &str = "persistent/";

/// The emitter key of a persistent subscription.
pub(crate) fn persistent_key(name: String) -> String {
    format!("{PERSISTENT_PREFIX}{name}")
}

impl EmitterWork {
    /// Queues the next step of the emitter of `key`.
    async fn schedule(&self, key: &str) {
        let pool = self
            .pool
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        if let Some(pool) = pool
            && let Err(error) = pool.dispatch(key, EmitterRequest::Pump).await
        {
            tracing::warn!(%error, emitter = key, "cannot schedule the next step");
        }
    }

    /// One step of a persistent subscription's emitter.
    async fn step_persistent(&self, name: &str) {
        let Some(group) = self.context.persistent.get(name) else {
            return;
        };
        let from = group.read_position();
        match group.step(&self.context, self.scan_events_max).await {
            Ok(true) => {}
            Ok(false) => {
                let mut commits = self.context.committed.subscribe();
                let _ = tokio::time::timeout(
                    STEP_WAIT,
                    commits.wait_for(|committed| *committed > from),
                )
                .await;
            }
            Err(error) => {
                tracing::warn!(%error, subscription = name, "persistent step failed; retrying");
                tokio::time::sleep(STEP_WAIT).await;
            }
        }
    }

    /// One bounded step; false when the subscriber is gone.
    async fn step(&self, subscription: &Arc<SubscriptionState>) -> bool {
        let committed = *self.context.committed.borrow();
        let from = subscription.next_position();
        if from >= committed {
            return self.wait_for_commits(subscription, from).await;
        }
        // Past every event stored when the subscription started, while writers keep adding:
        // `CaughtUp` now, as promised, not only once the subscriber overtakes them.
        if from >= subscription.caught_up_at && !subscription.caught_up() {
            match self.send_caught_up(subscription).await {
                Some(true) => {}
                Some(false) => return true,
                None => return false,
            }
        }
        // The matching events of a step are held in memory until sent, so a step scans no
        // more records than the subscriber has room for: a subscriber that stopped reading
        // then costs its buffer, not a scan's worth of events more at every retry (found by
        // `crates/exesdb-cli/tests/it/flood.rs`: 256 MiB more for 64 KiB events). Only this
        // emitter sends on the channel, so every event of the step fits.
        let room = subscription.sender.capacity();
        if room == 0 {
            return match tokio::time::timeout(STEP_WAIT, subscription.sender.reserve()).await {
                Ok(Ok(_)) | Err(_) => true, // room now, or retry later
                Ok(Err(_)) => false,        // the subscriber is gone
            };
        }
        let scan_max = self
            .scan_events_max
            .min(u64::try_from(room).unwrap_or(u64::MAX));
        // The scan reads storage, which can wait for the disk: off the runtime's own threads.
        let context = self.context.clone();
        let scanning = subscription.clone();
        let scanned = crate::system::blocking(move || {
            context.storage.engine().and_then(|engine| {
                engine.scan_log(
                    from,
                    committed,
                    scan_max,
                    Some(scanning.buffered.room().max(1)),
                    |event| scanning.wants(event),
                )
            })
        })
        .await;
        let (events, next) = match scanned {
            Ok(scanned) => scanned,
            Err(error) => {
                tracing::error!(%error, "emitter cannot read storage; retrying");
                tokio::time::sleep(STEP_WAIT).await;
                return true;
            }
        };
        for event in events {
            let position = event.position;
            // The buffer's bytes are full: this event is not delivered; the next step starts
            // from it once the subscriber has read enough.
            if !subscription.buffered.try_take(&event) {
                let _ =
                    tokio::time::timeout(STEP_WAIT, subscription.buffered.wait_for_room(&event))
                        .await;
                return true;
            }
            match subscription
                .sender
                .send_timeout(SubscriptionMessage::Event(event), STEP_WAIT)
                .await
            {
                Ok(()) => subscription.set_position(position + 1),
                // Full: this event is not delivered; the next step starts from it.
                Err(SendTimeoutError::Timeout(message)) => {
                    if let SubscriptionMessage::Event(event) = &message {
                        subscription.buffered.give_back(event);
                    }
                    return true;
                }
                Err(SendTimeoutError::Closed(_)) => return false,
            }
        }
        subscription.set_position(next);
        true
    }

    /// Sends `CaughtUp`: `Some(true)` when sent, `Some(false)` when the subscriber has no
    /// room yet (the next step tries again), `None` when it is gone.
    async fn send_caught_up(&self, subscription: &SubscriptionState) -> Option<bool> {
        match subscription
            .sender
            .send_timeout(SubscriptionMessage::CaughtUp, STEP_WAIT)
            .await
        {
            Ok(()) => {
                subscription.mark_caught_up();
                Some(true)
            }
            Err(SendTimeoutError::Timeout(_)) => Some(false),
            Err(SendTimeoutError::Closed(_)) => None,
        }
    }

    /// At the committed mark: say `CaughtUp` once, then wait a little for new commits.
    async fn wait_for_commits(&self, subscription: &SubscriptionState, from: u64) -> bool {
        if !subscription.caught_up() {
            match self.send_caught_up(subscription).await {
                Some(true) => {}
                Some(false) => return true,
                None => return false,
            }
        }
        let mut commits = self.context.committed.subscribe();
        let _ =
            tokio::time::timeout(STEP_WAIT, commits.wait_for(|committed| *committed > from)).await;
        !subscription.sender.is_closed()
    }
}

/// One emitter failing never disturbs another subscription's.
const STRATEGY: Strategy = Strategy::OneForOne;

/// `ExESDB.EmitterSystem` with its `ExESDB.EmitterPools`, and the pool's handle.
pub(crate) fn emitter_system(wiring: &Wiring) -> (WorkerPool<EmitterWork>, ChildSpec) {
    let pools = &wiring.context.config.pools;
    let (emitters, emitter_pools) = wiring.pool(
        "ExESDB.EmitterPools",
        EmitterWork {
            context: wiring.context.clone(),
            subscriptions: wiring.subscriptions.clone(),
            pool: Mutex::new(None),
            scan_events_max: pools.emitter_scan_events_max,
        },
        pools.emitter_partitions,
        pools.reader_idle_ms,
    );
    // An emitter queues its own next step; the link is broken again when the System stops.
    *lock_ignoring_poison(&emitters.work().pool) = Some(emitters.clone());
    let spec = wiring.supervisor("ExESDB.EmitterSystem", STRATEGY, vec![emitter_pools]);
    (emitters, spec)
}
