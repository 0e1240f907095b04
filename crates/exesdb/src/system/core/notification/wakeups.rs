//! How an emitter with nothing to do waits without polling: it parks its subscription, and
//! the event it waits for schedules its next step. A subscriber at the end of the log waits
//! for a commit (the commit notice wakes it, through `LeaderWorker`); one whose buffer is full
//! waits for its subscriber to read (the read wakes it); either wakes when its subscriber goes
//! away, so the subscription is released at once.
//!
//! Every wait is "park, then look again": an emitter marks itself parked before it checks the
//! condition a last time, and whoever takes the mark (the waker, or the emitter itself when
//! the condition already holds) schedules the next step. So no wake-up is lost, and none
//! schedules a step twice.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

/// What a parked emitter waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum ParkedOn {
    /// A commit past the subscription's position.
    Commit = 1,
    /// Room in the subscriber's buffer.
    Room = 2,
}

const RUNNING: u8 = 0;

/// The parking place of one subscription, shared by its emitter and its subscriber.
pub(crate) struct Park {
    key: String,
    state: AtomicU8,
    wakeups: Arc<EmitterWakeups>,
}

impl std::fmt::Debug for Park {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Park")
            .field("key", &self.key)
            .field("state", &self.state.load(Ordering::Relaxed))
            .finish()
    }
}

impl Park {
    pub(crate) fn new(key: String, wakeups: Arc<EmitterWakeups>) -> Self {
        Park {
            key,
            state: AtomicU8::new(RUNNING),
            wakeups,
        }
    }

    /// Marks the subscription parked; its emitter then checks the condition once more.
    pub(crate) fn park(self: &Arc<Self>, on: ParkedOn) {
        self.state.store(on as u8, Ordering::SeqCst);
        if on == ParkedOn::Commit {
            let mut parked = self.wakeups.lock_on_commit();
            let first = parked.is_empty();
            parked.insert(self.key.clone(), self.clone());
            drop(parked);
            // The waker waits on commits only while someone is parked on one.
            if first {
                self.wakeups.signal.notify_one();
            }
        }
        std::sync::atomic::fence(Ordering::SeqCst);
    }

    /// Takes the parked mark: true for the one caller that must now schedule the next step.
    pub(crate) fn unpark(&self) -> bool {
        self.state.swap(RUNNING, Ordering::SeqCst) != RUNNING
    }

    /// Wakes the emitter if it waits for room (the subscriber just read). The fence pairs
    /// with the emitter's: either it sees the room this read made, or this sees it parked.
    pub(crate) fn room_made(&self) {
        std::sync::atomic::fence(Ordering::SeqCst);
        if self.state.load(Ordering::SeqCst) == ParkedOn::Room as u8 && self.unpark() {
            self.wakeups.ready(self.key.clone());
        }
    }

    /// Wakes the emitter whatever it waits for (the subscriber went away).
    pub(crate) fn subscriber_left(&self) {
        if self.unpark() {
            self.wakeups.ready(self.key.clone());
        }
    }
}

/// The emitters' wake-ups: subscriptions parked until the next commit, and those whose wait
/// is over and need a step.
#[derive(Default)]
pub(crate) struct EmitterWakeups {
    on_commit: Mutex<HashMap<String, Arc<Park>>>,
    ready: Mutex<Vec<String>>,
    signal: Notify,
    closed: AtomicBool,
}

impl EmitterWakeups {
    fn lock_on_commit(&self) -> MutexGuard<'_, HashMap<String, Arc<Park>>> {
        self.on_commit
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn ready(&self, key: String) {
        self.ready
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(key);
        self.signal.notify_one();
    }

    /// Forgets a subscription that ended.
    pub(crate) fn forget(&self, key: &str) {
        self.lock_on_commit().remove(key);
    }

    /// Whether any subscription is parked until the next commit.
    pub(crate) fn any_on_commit(&self) -> bool {
        !self.lock_on_commit().is_empty()
    }

    /// Takes every subscription parked until the next commit (a commit just happened).
    pub(crate) fn take_on_commit(&self) -> HashMap<String, Arc<Park>> {
        std::mem::take(&mut *self.lock_on_commit())
    }

    /// Takes the subscriptions whose wait is over.
    pub(crate) fn take_ready(&self) -> Vec<String> {
        std::mem::take(
            &mut *self
                .ready
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        )
    }

    /// Waits until a subscription's wait is over (or the wake-ups are closed).
    pub(crate) async fn signalled(&self) {
        self.signal.notified().await;
    }

    /// Ends the waker (the System is stopping).
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.signal.notify_one();
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }
}
