//! Subscriptions: what a subscriber selects, where it starts, and the live state an emitter
//! works from. The state lives here, outside the emitter process, so that a restarted emitter
//! resumes from the last delivered position: nothing lost, nothing twice.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::mpsc;

use super::wakeups::{EmitterWakeups, Park, ParkedOn};
use crate::storage::Source;
use exesdb_types::{ALL_STREAM, IndexedStream, RecordedEvent, Selector, SubscriptionMessage};

/// What an emitter puts in its subscriber's channel: the events of one step, or `CaughtUp`.
/// A step's events go as one message, so a channel operation is paid per step, not per event.
#[derive(Debug)]
pub(crate) enum Delivery {
    Events(Vec<Arc<RecordedEvent>>),
    CaughtUp,
}

/// The events buffered for one subscriber (in its channel, or taken from it and not yet read),
/// at most `subscriber_buffer_events_max` of them holding at most `subscriber_buffer_bytes_max`
/// bytes: the emitter takes an event's share before it sends the event, and the subscriber
/// gives it back as it reads the event. An event larger than the whole byte budget counts as
/// the whole budget, so it still gets through, alone. Plain counters: nobody waits on them (an
/// emitter without room parks, and the subscriber's read wakes it).
#[derive(Debug)]
pub(crate) struct Buffered {
    events_available: AtomicU64,
    events_max: u64,
    bytes_available: AtomicU64,
    bytes_max: u64,
}

impl Buffered {
    pub(crate) fn new(events_max: usize, bytes_max: u64) -> Self {
        let events_max = (events_max as u64).max(1);
        let bytes_max = bytes_max.max(1);
        Buffered {
            events_available: AtomicU64::new(events_max),
            events_max,
            bytes_available: AtomicU64::new(bytes_max),
            bytes_max,
        }
    }

    pub(crate) fn charge(&self, event: &RecordedEvent) -> u64 {
        event.size_bytes().clamp(1, self.bytes_max)
    }

    /// Events that can be buffered now.
    pub(crate) fn events_room(&self) -> u64 {
        self.events_available.load(Ordering::Acquire)
    }

    /// Bytes that can be buffered now.
    pub(crate) fn bytes_room(&self) -> u64 {
        self.bytes_available.load(Ordering::Acquire)
    }

    /// Events buffered now.
    pub(crate) fn events(&self) -> u64 {
        self.events_max - self.events_room()
    }

    /// Takes the event's share (one event, its bytes) if there is room for it.
    pub(crate) fn try_take(&self, event: &RecordedEvent) -> bool {
        let take = |available: &AtomicU64, amount: u64| {
            available
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |left| {
                    left.checked_sub(amount)
                })
                .is_ok()
        };
        if !take(&self.events_available, 1) {
            return false;
        }
        if take(&self.bytes_available, self.charge(event)) {
            return true;
        }
        self.events_available.fetch_add(1, Ordering::AcqRel);
        false
    }

    /// Gives back the share of an event that was read (or not sent after all).
    pub(crate) fn give_back(&self, event: &RecordedEvent) {
        self.bytes_available
            .fetch_add(self.charge(event), Ordering::AcqRel);
        self.events_available.fetch_add(1, Ordering::AcqRel);
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
    /// Channel capacity: `subscriber_buffer_events_max` + 1 (a message holds at least one
    /// event, and `CaughtUp` comes once), so `buffered` is the bound that binds.
    pub sender: mpsc::Sender<Delivery>,
    /// The events handed to the subscriber and not yet read.
    pub buffered: Arc<Buffered>,
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

    /// Where this subscription's catch-up reads (see [`scan_source`]).
    pub(crate) fn scan_source(&self) -> Source<'_> {
        scan_source(
            &self.selector,
            Some(self.stream_next_number.load(Ordering::Acquire)),
        )
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
                    self.buffered.events_room() > 0
                        && self.buffered.bytes_room() >= self.room_wanted.load(Ordering::SeqCst)
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
    pub(crate) receiver: mpsc::Receiver<Delivery>,
    /// The rest of the last message's events, not yet read.
    pub(crate) pending: VecDeque<Arc<RecordedEvent>>,
    pub(crate) buffered: Arc<Buffered>,
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
        if let Some(event) = self.pending.pop_front() {
            return Some(self.hand_over(event));
        }
        let delivery = self.receiver.recv().await?;
        self.unpack(delivery)
    }

    /// The next message if one is waiting, without waiting.
    pub fn try_next(&mut self) -> Option<SubscriptionMessage> {
        if let Some(event) = self.pending.pop_front() {
            return Some(self.hand_over(event));
        }
        let delivery = self.receiver.try_recv().ok()?;
        self.unpack(delivery)
    }

    fn unpack(&mut self, delivery: Delivery) -> Option<SubscriptionMessage> {
        match delivery {
            Delivery::Events(events) => {
                self.pending = events.into();
                let first = self.pending.pop_front()?;
                Some(self.hand_over(first))
            }
            Delivery::CaughtUp => {
                self.park.room_made();
                Some(SubscriptionMessage::CaughtUp)
            }
        }
    }

    /// Gives the event's share of the buffer back; once a message is read to its end, an
    /// emitter waiting for room wakes.
    fn hand_over(&self, event: Arc<RecordedEvent>) -> SubscriptionMessage {
        self.buffered.give_back(&event);
        if self.pending.is_empty() {
            self.park.room_made();
        }
        SubscriptionMessage::Event(event)
    }

    /// The subscription's id (its emitter's key).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Events waiting to be read (at most `subscriber_buffer_events_max`).
    pub fn receiver_len(&self) -> usize {
        usize::try_from(self.buffered.events()).unwrap_or(usize::MAX)
    }
}

/// Where a scan for `selector` reads: the index that holds just its events when there is one,
/// so that catching up costs the size of what is selected, not of the log. A stream's index is
/// read from the event number given (without one, the log is read: the stream's index cannot
/// be entered at a position).
pub(crate) fn scan_source(selector: &Selector, stream_next_number: Option<u64>) -> Source<'_> {
    match selector {
        Selector::ByStream(stream_id) if stream_id == ALL_STREAM => Source::Log,
        Selector::ByStream(stream_id) => {
            match (IndexedStream::parse(stream_id), stream_next_number) {
                (Some(index), _) => Source::Index(index),
                (None, Some(first_number)) => Source::Stream {
                    stream_id,
                    first_number,
                },
                (None, None) => Source::Log,
            }
        }
        Selector::ByEventType(event_type) => Source::Index(IndexedStream::EventType(event_type)),
        Selector::ByEventPattern(_) | Selector::ByEventPayload(_) => Source::Log,
    }
}
