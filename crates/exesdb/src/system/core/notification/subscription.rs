//! Subscriptions: what a subscriber selects, where it starts, and the live state an emitter
//! works from. The state lives here, outside the emitter process, so that a restarted emitter
//! resumes from the last delivered position: nothing lost, nothing twice.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::Value;
use tokio::sync::mpsc;

use crate::error::StoreError;
use crate::event::{ALL_STREAM, RecordedEvent};

/// Which events a subscription receives (the original's four kinds).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", content = "value", rename_all = "snake_case")]
pub enum Selector {
    /// One stream's events, or every event for `$all`.
    ByStream(String),
    /// Events of one type.
    ByEventType(String),
    /// Events whose recorded fields contain this JSON object (a subset match over
    /// `stream_id`, `event_type`, `event_number`, `position`, `event_id`, `data`, `metadata`).
    ByEventPattern(Value),
    /// Events whose JSON data contains this JSON object (a subset match).
    ByEventPayload(Value),
}

impl Selector {
    /// Checks the selector itself (a pattern must be a JSON object, ...).
    pub fn validate(&self) -> Result<(), StoreError> {
        match self {
            Selector::ByStream(stream) if stream == ALL_STREAM => Ok(()),
            Selector::ByStream(stream) => crate::event::validate_stream_id(stream, false),
            Selector::ByEventType(event_type) if event_type.is_empty() => Err(StoreError::invalid(
                "the event type to subscribe to is empty",
            )),
            Selector::ByEventType(_) => Ok(()),
            Selector::ByEventPattern(pattern) | Selector::ByEventPayload(pattern) => {
                if pattern.is_object() {
                    Ok(())
                } else {
                    Err(StoreError::invalid("a pattern must be a JSON object"))
                }
            }
        }
    }

    /// Whether `event` is selected.
    pub fn matches(&self, event: &RecordedEvent) -> bool {
        match self {
            Selector::ByStream(stream) => stream == ALL_STREAM || *stream == event.stream_id,
            Selector::ByEventType(event_type) => *event_type == event.event_type,
            Selector::ByEventPayload(pattern) => {
                json_of(&event.data).is_some_and(|data| contains(&data, pattern))
            }
            Selector::ByEventPattern(pattern) => contains(&event_fields(event), pattern),
        }
    }
}

fn json_of(bytes: &[u8]) -> Option<Value> {
    serde_json::from_slice(bytes).ok()
}

fn event_fields(event: &RecordedEvent) -> Value {
    serde_json::json!({
        "stream_id": event.stream_id,
        "event_type": event.event_type,
        "event_number": event.event_number,
        "position": event.position,
        "event_id": event.event_id.to_string(),
        "data": json_of(&event.data).unwrap_or(Value::Null),
        "metadata": json_of(&event.metadata).unwrap_or(Value::Null),
    })
}

/// Whether `value` contains `pattern`: every key of a pattern object is in the value with a
/// containing value; anything else must be equal.
pub fn contains(value: &Value, pattern: &Value) -> bool {
    match (value, pattern) {
        (Value::Object(value), Value::Object(pattern)) => pattern
            .iter()
            .all(|(key, expected)| value.get(key).is_some_and(|v| contains(v, expected))),
        _ => value == pattern,
    }
}

/// Where a subscription starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "from", content = "value", rename_all = "snake_case")]
pub enum StartFrom {
    /// The first event of the store.
    Beginning,
    /// Only events committed after the subscription starts.
    End,
    /// This global position (inclusive).
    Position(u64),
    /// This event number of the stream a `ByStream` selector names (inclusive).
    EventNumber(u64),
}

/// What a subscriber receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubscriptionMessage {
    /// An event, in position order.
    Event(RecordedEvent),
    /// Every event committed before this point has been delivered; what follows is live.
    CaughtUp,
}

/// The bytes of events buffered for one subscriber, at most `subscriber_buffer_bytes_max`:
/// the emitter takes an event's size before it sends the event, and the subscriber gives it
/// back when it reads the event. (The channel itself bounds the count.) An event larger than
/// the whole budget counts as the whole budget, so it still gets through, alone.
#[derive(Debug)]
pub struct BufferedBytes {
    permits: tokio::sync::Semaphore,
    max: u32,
}

impl BufferedBytes {
    pub fn new(max: u64) -> Self {
        let max = u32::try_from(max).unwrap_or(u32::MAX).max(1);
        BufferedBytes {
            permits: tokio::sync::Semaphore::new(max as usize),
            max,
        }
    }

    fn charge(&self, event: &RecordedEvent) -> u32 {
        u32::try_from(event.size_bytes())
            .unwrap_or(u32::MAX)
            .clamp(1, self.max)
    }

    /// Bytes that can be buffered now.
    pub fn room(&self) -> u64 {
        self.permits.available_permits() as u64
    }

    /// Takes the event's bytes if there is room for them.
    pub fn try_take(&self, event: &RecordedEvent) -> bool {
        match self.permits.try_acquire_many(self.charge(event)) {
            Ok(permit) => {
                permit.forget();
                true
            }
            Err(_) => false,
        }
    }

    /// Waits until there is room for the event's bytes (without taking them).
    pub async fn wait_for_room(&self, event: &RecordedEvent) {
        let _ = self.permits.acquire_many(self.charge(event)).await;
    }

    /// Gives back the bytes of an event that was read (or not sent after all).
    pub fn give_back(&self, event: &RecordedEvent) {
        self.permits.add_permits(self.charge(event) as usize);
    }
}

/// The live state of one subscription, shared by its emitter (and any emitter restarted in
/// its place) and its handle.
pub struct SubscriptionState {
    pub id: String,
    pub selector: Selector,
    /// Events numbered below this are not delivered (a by-stream start from an event number
    /// that the stream has not reached yet).
    pub event_number_floor: u64,
    /// The next position to scan.
    pub position: AtomicU64,
    pub caught_up_sent: AtomicBool,
    pub sender: mpsc::Sender<SubscriptionMessage>,
    /// The bytes of the events in `sender`'s channel.
    pub buffered: Arc<BufferedBytes>,
}

impl SubscriptionState {
    /// Whether the subscriber receives `event`.
    pub fn wants(&self, event: &RecordedEvent) -> bool {
        event.event_number >= self.event_number_floor && self.selector.matches(event)
    }

    pub fn next_position(&self) -> u64 {
        self.position.load(Ordering::Acquire)
    }

    pub(crate) fn set_position(&self, position: u64) {
        self.position.store(position, Ordering::Release);
    }

    pub(crate) fn caught_up(&self) -> bool {
        self.caught_up_sent.load(Ordering::Acquire)
    }

    pub(crate) fn mark_caught_up(&self) {
        self.caught_up_sent.store(true, Ordering::Release);
    }
}

/// The subscriptions of one store, by id.
#[derive(Default)]
pub struct SubscriptionRegistry {
    entries: Mutex<HashMap<String, Arc<SubscriptionState>>>,
}

impl SubscriptionRegistry {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Arc<SubscriptionState>>> {
        // Each critical section is one map operation.
        self.entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn insert(&self, state: Arc<SubscriptionState>) {
        self.lock().insert(state.id.clone(), state);
    }

    pub fn get(&self, id: &str) -> Option<Arc<SubscriptionState>> {
        self.lock().get(id).cloned()
    }

    pub fn remove(&self, id: &str) {
        self.lock().remove(id);
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// The ids of every subscription.
    pub fn ids(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }

    /// Ends every subscription: their subscribers see the end of their streams.
    pub fn clear(&self) {
        self.lock().clear();
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The subscriber's end: messages in position order. Dropping it ends the subscription.
#[derive(Debug)]
pub struct Subscription {
    pub(crate) receiver: mpsc::Receiver<SubscriptionMessage>,
    pub(crate) buffered: Arc<BufferedBytes>,
    pub(crate) id: String,
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn subset_matching() {
        let value = json!({"a": 1, "b": {"c": [1, 2], "d": "x"}});
        assert!(contains(&value, &json!({})));
        assert!(contains(&value, &json!({"a": 1})));
        assert!(contains(&value, &json!({"b": {"d": "x"}})));
        assert!(!contains(&value, &json!({"b": {"d": "y"}})));
        assert!(!contains(&value, &json!({"z": 1})));
        assert!(
            !contains(&value, &json!({"b": {"c": [1]}})),
            "arrays compare whole"
        );
    }
}
