//! Subscriptions: what a subscriber selects, where it starts, and the live state an emitter
//! works from. The state lives here, outside the emitter process, so that a restarted emitter
//! resumes from the last delivered position: nothing lost, nothing twice.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::mpsc;

use super::wakeups::{EmitterWakeups, Park, ParkedOn};
use exesdb_types::{ALL_STREAM, RecordedEvent, Selector, SubscriptionMessage};

/// The bytes of events buffered for one subscriber, at most `subscriber_buffer_bytes_max`:
/// the emitter takes an event's size before it sends the event, and the subscriber gives it
/// back when it reads the event. (The channel itself bounds the count.) An event larger than
/// the whole budget counts as the whole budget, so it still gets through, alone. A plain
/// counter: nobody waits on it (an emitter without room parks, and the read wakes it).
#[derive(Debug)]
pub(crate) struct BufferedBytes {
    available: AtomicU64,
    max: u64,
}

impl BufferedBytes {
    pub(crate) fn new(max: u64) -> Self {
        let max = max.max(1);
        BufferedBytes {
            available: AtomicU64::new(max),
            max,
        }
    }

    pub(crate) fn charge(&self, event: &RecordedEvent) -> u64 {
        event.size_bytes().clamp(1, self.max)
    }

    /// Bytes that can be buffered now.
    pub(crate) fn room(&self) -> u64 {
        self.available.load(Ordering::Acquire)
    }

    /// Takes the event's bytes if there is room for them.
    pub(crate) fn try_take(&self, event: &RecordedEvent) -> bool {
        let charge = self.charge(event);
        self.available
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |available| {
                available.checked_sub(charge)
            })
            .is_ok()
    }

    /// Gives back the bytes of an event that was read (or not sent after all).
    pub(crate) fn give_back(&self, event: &RecordedEvent) {
        self.available
            .fetch_add(self.charge(event), Ordering::AcqRel);
    }
}

/// The live state of one subscription, shared by its emitter (and any emitter restarted in
/// its place) and its handle.
pub(crate) struct SubscriptionState {
    pub id: String,
    pub selector: Selector,
    /// Events numbered below this are not delivered (a by-stream start from an event number
    /// that the stream has not reached yet).
    pub event_number_floor: u64,
    /// The next position to scan.
    pub position: AtomicU64,
    /// A by-stream subscription's next event number (one past the last delivered): where a
    /// scan of the stream's index starts.
    pub stream_next_number: AtomicU64,
    /// The store's committed mark when the subscription started: once the position reaches it,
    /// every event stored then has been delivered, and the subscriber gets `CaughtUp`, even if
    /// writers keep the mark moving ahead of it.
    pub caught_up_at: u64,
    pub caught_up_sent: AtomicBool,
    /// Held for each step: a restarted emitter waits for the step of the one it replaces
    /// (which may still be scanning off the runtime when it is killed), so that two steps never
    /// deliver from the same position.
    pub stepping: tokio::sync::Mutex<()>,
    pub sender: mpsc::Sender<SubscriptionMessage>,
    /// The bytes of the events in `sender`'s channel.
    pub buffered: Arc<BufferedBytes>,
    /// Where the emitter waits when it has nothing to do.
    pub park: Arc<Park>,
    /// The buffer bytes the emitter waits for when parked on room (the next event's).
    pub room_wanted: AtomicU64,
}

impl SubscriptionState {
    /// Whether the subscriber receives `event`.
    pub(crate) fn wants(&self, event: &RecordedEvent) -> bool {
        event.event_number >= self.event_number_floor && self.selector.matches(event)
    }

    pub(crate) fn next_position(&self) -> u64 {
        self.position.load(Ordering::Acquire)
    }

    pub(crate) fn set_position(&self, position: u64) {
        self.position.store(position, Ordering::Release);
    }

    /// Notes that the event at `position`, number `event_number` of its stream, was handed
    /// to the subscriber.
    pub(crate) fn delivered(&self, position: u64, event_number: u64) {
        self.set_position(position + 1);
        self.stream_next_number
            .store(event_number + 1, Ordering::Release);
    }

    /// The stream a by-stream subscription follows (not `$all`): its catch-up reads that
    /// stream's index.
    pub(crate) fn indexed_stream(&self) -> Option<&str> {
        match &self.selector {
            Selector::ByStream(stream_id) if stream_id != ALL_STREAM => Some(stream_id),
            _ => None,
        }
    }

    pub(crate) fn caught_up(&self) -> bool {
        self.caught_up_sent.load(Ordering::Acquire)
    }

    pub(crate) fn mark_caught_up(&self) {
        self.caught_up_sent.store(true, Ordering::Release);
    }

    /// Whether what a parked emitter waits for has come (or the subscriber has gone).
    pub(crate) fn wait_is_over(&self, on: ParkedOn, committed: u64) -> bool {
        self.sender.is_closed()
            || match on {
                ParkedOn::Commit => committed > self.next_position(),
                ParkedOn::Room => {
                    self.sender.capacity() > 0
                        && self.buffered.room() >= self.room_wanted.load(Ordering::SeqCst)
                }
            }
    }
}

/// The subscriptions of one store, by id.
#[derive(Default)]
pub(crate) struct SubscriptionRegistry {
    entries: Mutex<HashMap<String, Arc<SubscriptionState>>>,
    wakeups: Arc<EmitterWakeups>,
}

impl SubscriptionRegistry {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Arc<SubscriptionState>>> {
        // Each critical section is one map operation.
        self.entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn insert(&self, state: Arc<SubscriptionState>) {
        self.lock().insert(state.id.clone(), state);
    }

    pub(crate) fn get(&self, id: &str) -> Option<Arc<SubscriptionState>> {
        self.lock().get(id).cloned()
    }

    pub(crate) fn remove(&self, id: &str) {
        self.lock().remove(id);
        self.wakeups.forget(id);
    }

    /// The wake-ups of these subscriptions' emitters.
    pub(crate) fn wakeups(&self) -> &Arc<EmitterWakeups> {
        &self.wakeups
    }

    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }

    /// The ids of every subscription.
    pub(crate) fn ids(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }

    /// Ends every subscription: their subscribers see the end of their streams.
    pub(crate) fn clear(&self) {
        self.lock().clear();
    }
}

/// The subscriber's end: messages in position order. Dropping it ends the subscription.
#[derive(Debug)]
pub struct Subscription {
    pub(crate) receiver: mpsc::Receiver<SubscriptionMessage>,
    pub(crate) buffered: Arc<BufferedBytes>,
    pub(crate) park: Arc<Park>,
    pub(crate) id: String,
}

impl Drop for Subscription {
    /// Releases the subscription now: its parked emitter wakes, finds no one, and ends it.
    fn drop(&mut self) {
        self.receiver.close();
        self.park.subscriber_left();
    }
}

impl Subscription {
    /// The next message; `None` when the store stopped the subscription (it is stopping).
    pub async fn next(&mut self) -> Option<SubscriptionMessage> {
        let message = self.receiver.recv().await;
        self.read(message)
    }

    fn read(&self, message: Option<SubscriptionMessage>) -> Option<SubscriptionMessage> {
        if let Some(SubscriptionMessage::Event(event)) = &message {
            self.buffered.give_back(event);
        }
        if message.is_some() {
            self.park.room_made();
        }
        message
    }

    /// The subscription's id (its emitter's key).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The next message if one is waiting, without waiting.
    pub fn try_next(&mut self) -> Option<SubscriptionMessage> {
        let message = self.receiver.try_recv().ok();
        self.read(message)
    }

    /// Messages waiting to be read (at most `subscriber_buffer_events_max`).
    pub fn receiver_len(&self) -> usize {
        self.receiver.len()
    }
}
