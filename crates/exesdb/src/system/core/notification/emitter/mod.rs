//! `ExESDB.EmitterSystem` [S] (:one_for_one) with `ExESDB.EmitterPools` [PS]: one emitter per
//! subscription, under the partition its id hashes to.
//!
//! An emitter delivers from the subscription's position up to the store's "committed up to"
//! mark, in bounded pages: from the commit tail (the recent events, decoded once and shared)
//! when the position is in it, else from storage (the log, or one stream's index). Catching
//! up and following live commits are the same loop, so the switch between them can neither
//! lose nor repeat an event; once the position reaches the mark the store had when the
//! subscription started (every event stored then is delivered), the subscriber gets
//! `CaughtUp`. A subscriber that does not read fills its bounded buffer
//! (`subscriber_buffer_events_max` events, `subscriber_buffer_bytes_max` bytes); a step takes
//! no more than there is room for, so memory stays bounded by the buffer and writers never
//! wait for it. Each step is one message to the emitter, handled in bounded time, so emitters
//! stop promptly and a restarted one resumes from the position. An emitter with nothing to do
//! (at the mark, or with a full buffer) parks instead of stepping: see `wakeups.rs`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::mpsc::error::TrySendError;

use super::subscription::{Delivery, SubscriptionRegistry, SubscriptionState};
use super::wakeups::{EmitterWakeups, Park, ParkedOn};
use crate::storage::{Scan, StorageError};
use exesdb_types::{RecordedEvent, Strategy};

use crate::supervision::ChildSpec;
use crate::supervision::pool::{KeyedWork, WorkerPool};
use crate::system::context::StoreContext;
use crate::system::lock_ignoring_poison;
use crate::system::wiring::Wiring;

/// How long a persistent subscription's step waits for new commits.
const STEP_WAIT: Duration = Duration::from_millis(50);

/// The least time between two rounds of waking the emitters parked on commits: at most this
/// much is added to a live event's delivery, and however fast commits come, a parked
/// subscriber is woken at most once an interval.
const WAKE_ROUND_INTERVAL: Duration = Duration::from_millis(1);

/// How long an emitter waits before it tries storage again after a failed read.
const STORAGE_RETRY_WAIT: Duration = Duration::from_millis(50);

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
    /// Steps taken by transient subscriptions' emitters (idle ones take none).
    pub steps: AtomicU64,
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
            if self.step_persistent(name).await {
                // Idle: parked until a commit, with the same last look as a transient one.
                let park = Arc::new(Park::new(
                    key.to_string(),
                    self.subscriptions.wakeups().clone(),
                ));
                park.park(ParkedOn::Commit);
                let committed = *self.context.committed.borrow();
                if group.is_idle(committed) || !park.unpark() {
                    return;
                }
            }
            if group.claim_step() {
                self.schedule(key).await;
            }
            return;
        }
        let Some(subscription) = self.subscriptions.get(key) else {
            return; // ended: no next step, and the emitter idles out
        };
        // Contended only while a killed emitter's last scan finishes: the wait is the rare path.
        let stepping = match subscription.stepping.try_lock() {
            Ok(stepping) => stepping,
            Err(_) => subscription.stepping.lock().await,
        };
        // A step runs now: an earlier parked mark is stale, and this step looks afresh.
        subscription.park.unpark();
        self.steps.fetch_add(1, Ordering::Relaxed);
        let next = match subscription.sender.is_closed() {
            true => Next::End,
            false => self.step(&subscription).await,
        };
        drop(stepping);
        match next {
            Next::Again => self.schedule(key).await,
            Next::Park(on) => {
                subscription.park.park(on);
                let committed = *self.context.committed.borrow();
                if subscription.wait_is_over(on, committed) && subscription.park.unpark() {
                    self.schedule(key).await;
                }
            }
            Next::End => self.subscriptions.remove(key),
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
    /// Breaks the link to the pool and ends the waker: the System is stopping.
    pub(crate) fn detach(&self) {
        *lock_ignoring_poison(&self.pool) = None;
        self.subscriptions.wakeups().close();
    }

    /// Queues the next step of the emitter of `key`.
    pub(crate) async fn schedule(&self, key: &str) {
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

    /// One step of a persistent subscription's emitter; true when the group is idle (it then
    /// parks rather than steps).
    async fn step_persistent(&self, name: &str) -> bool {
        let Some(group) = self.context.persistent.get(name) else {
            return false;
        };
        let from = group.read_position();
        match group.step(&self.context, self.scan_events_max).await {
            Ok(true) => {}
            Ok(false) if group.is_idle(*self.context.committed.borrow()) => return true,
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
        false
    }

    /// One bounded step, and what the emitter does next.
    async fn step(&self, subscription: &Arc<SubscriptionState>) -> Next {
        let committed = *self.context.committed.borrow();
        let from = subscription.next_position();
        // Past every event stored when the subscription started (even while writers keep
        // adding): `CaughtUp` now, as promised, not only once the subscriber overtakes them.
        if from >= subscription.caught_up_at.min(committed) && !subscription.caught_up() {
            match subscription.sender.try_send(Delivery::CaughtUp) {
                Ok(()) => subscription.mark_caught_up(),
                Err(TrySendError::Full(_)) => return park_on_room(subscription, 0),
                Err(TrySendError::Closed(_)) => return Next::End,
            }
        }
        if from >= committed {
            return Next::Park(ParkedOn::Commit);
        }
        // The matching events of a step are held in memory until sent, so a step scans no
        // more records than the subscriber has room for: a subscriber that stopped reading
        // then costs its buffer, not a scan's worth of events more at every retry (found by
        // `crates/exesdb-cli/tests/it/flood.rs`: 256 MiB more for 64 KiB events). Only this
        // emitter sends on the channel, so every event of the step fits.
        let room = subscription.buffered.events_room();
        if room == 0 {
            return park_on_room(subscription, 0);
        }
        let bytes_room = subscription.buffered.bytes_room().max(1);
        let scan = Scan {
            from,
            until: committed,
            count_max: self.scan_events_max.min(room),
            bytes_max: Some(bytes_room),
        };
        // Live subscribers share the events the committer just decoded; one that is further
        // behind reads storage.
        let tail =
            self.context
                .tail
                .read(scan.from, scan.until, scan.count_max, bytes_room, |event| {
                    subscription.wants(event)
                });
        let (events, next) = match tail {
            Some(read) => (read.events, read.next),
            None => match self.scan_storage(subscription, scan).await {
                Ok(scanned) => scanned,
                Err(error) => {
                    tracing::error!(%error, "emitter cannot read storage; retrying");
                    tokio::time::sleep(STORAGE_RETRY_WAIT).await;
                    return Next::Again;
                }
            },
        };
        // The events that fit go to the subscriber as one message.
        let mut batch = Vec::with_capacity(events.len());
        let mut wanted = None;
        for event in events {
            if !subscription.buffered.try_take(&event) {
                wanted = Some(subscription.buffered.charge(&event));
                break;
            }
            batch.push(event);
        }
        let last = batch
            .last()
            .map(|event| (event.position, event.event_number));
        if let Some((position, event_number)) = last {
            match subscription.sender.try_send(Delivery::Events(batch)) {
                Ok(()) => subscription.delivered(position, event_number),
                // Not while the budget holds (the channel has a slot per event); if it ever
                // is full, the events go back and the emitter waits for room.
                Err(TrySendError::Full(delivery)) => {
                    if let Delivery::Events(batch) = &delivery {
                        for event in batch {
                            subscription.buffered.give_back(event);
                        }
                    }
                    return park_on_room(subscription, 0);
                }
                Err(TrySendError::Closed(_)) => return Next::End,
            }
        }
        // The buffer is full before this event: the next step starts from it once the
        // subscriber has read enough.
        if let Some(wanted) = wanted {
            return park_on_room(subscription, wanted);
        }
        subscription.set_position(next);
        // At the mark it read, `CaughtUp` sent: park now rather than take a step only to find
        // nothing (the park looks at the mark once more, so a commit since is not missed).
        match next >= committed && subscription.caught_up() {
            true => Next::Park(ParkedOn::Commit),
            false => Next::Again,
        }
    }

    /// Reads the log for a subscriber behind the commit tail. The scan can wait for the disk:
    /// off the runtime's own threads.
    async fn scan_storage(
        &self,
        subscription: &Arc<SubscriptionState>,
        scan: Scan,
    ) -> Result<(Vec<Arc<RecordedEvent>>, u64), StorageError> {
        let context = self.context.clone();
        let scanning = subscription.clone();
        crate::system::blocking(move || {
            let engine = context.storage.engine()?;
            let wants = |event: &RecordedEvent| scanning.wants(event);
            let (events, next) = engine.scan(scanning.scan_source(), scan, wants)?;
            Ok((events.into_iter().map(Arc::new).collect(), next))
        })
        .await
    }
}

/// What an emitter does after a step.
enum Next {
    /// Takes another step at once.
    Again,
    /// Waits, taking no steps, until what it waits for schedules the next.
    Park(ParkedOn),
    /// The subscriber is gone: the subscription ends.
    End,
}

/// Parks until the subscriber has read enough for `bytes` more (0: for one more message).
fn park_on_room(subscription: &SubscriptionState, bytes: u64) -> Next {
    subscription
        .room_wanted
        .store(bytes, std::sync::atomic::Ordering::SeqCst);
    Next::Park(ParkedOn::Room)
}

/// Wakes the emitters whose wait is over: those parked at the end of the log when a commit
/// lands, and those woken by their subscriber (room made, or gone). Runs under
/// `LeaderWorker`, whose duty delivering is, until the wake-ups close.
pub(crate) async fn wake_parked_emitters(work: Arc<EmitterWork>) {
    let wakeups = work.subscriptions.wakeups().clone();
    let mut commits = work.context.committed.subscribe();
    let mut last_round = tokio::time::Instant::now();
    while !wakeups.is_closed() {
        // With no one parked on a commit the waker does not wait on commits at all, so a
        // store without subscribers pays no wake-up per commit; the first to park signals.
        // (Its receiver then still holds the commits since, so the first wait may return at
        // once: one round for nothing, never a missed one.)
        if !wakeups.any_on_commit() {
            wakeups.signalled().await;
            wake_ready(&work, &wakeups).await;
            continue;
        }
        tokio::select! {
            changed = commits.changed() => {
                if changed.is_err() {
                    return;
                }
                // Under a high commit rate, the commits of one round's interval wake each
                // subscriber once, and it takes their events in one step.
                tokio::time::sleep_until(last_round + WAKE_ROUND_INTERVAL).await;
                last_round = tokio::time::Instant::now();
                for (key, park) in wakeups.take_on_commit() {
                    if park.unpark() {
                        work.schedule(&key).await;
                    }
                }
            }
            () = wakeups.signalled() => wake_ready(&work, &wakeups).await,
        }
    }
}

/// Schedules the emitters whose subscribers made room or left.
async fn wake_ready(work: &EmitterWork, wakeups: &EmitterWakeups) {
    for key in wakeups.take_ready() {
        work.schedule(&key).await;
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
            steps: AtomicU64::new(0),
        },
        pools.emitter_partitions,
        pools.reader_idle_ms,
    );
    // An emitter queues its own next step; the link is broken again when the System stops.
    *lock_ignoring_poison(&emitters.work().pool) = Some(emitters.clone());
    let spec = wiring.supervisor("ExESDB.EmitterSystem", STRATEGY, vec![emitter_pools]);
    (emitters, spec)
}
