//! What a subscriber selects and where it starts, what it receives, and how a persistent
//! subscription is defined: the subscription half of the contract, shared by the engine, the
//! server and the client.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::StoreError;
use crate::event::{ALL_STREAM, RecordedEvent};
use crate::index::{IndexedStream, validate_readable_stream_id};

/// Which events a subscription receives (the original's four kinds).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "value", rename_all = "snake_case")]
pub enum Selector {
    /// One stream's events, every event for `$all`, or an index's events for `$et-<type>`
    /// and `$ce-<category>`.
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
            Selector::ByStream(stream) => validate_readable_stream_id(stream),
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
            Selector::ByStream(stream) if stream == ALL_STREAM => true,
            Selector::ByStream(stream) => match IndexedStream::parse(stream) {
                Some(index) => index.matches(&event.stream_id, &event.event_type),
                None => *stream == event.stream_id,
            },
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "from", content = "value", rename_all = "snake_case")]
pub enum StartFrom {
    /// The first event of the store.
    Beginning,
    /// Only events committed after the subscription starts.
    End,
    /// This global position (inclusive).
    Position(u64),
    /// This event number of the stream a `ByStream` selector names (inclusive); not for
    /// `$all` nor the index streams, whose events are found by position.
    EventNumber(u64),
}

/// What a subscriber receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubscriptionMessage {
    /// An event, in position order. Shared: a live event reaches every subscriber that wants
    /// it without a copy each.
    Event(std::sync::Arc<RecordedEvent>),
    /// Every event committed before this point has been delivered; what follows is live.
    CaughtUp,
}

/// How a group shares events among its consumers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConsumerStrategy {
    /// Each event to the next consumer with room.
    RoundRobin,
    /// Each stream's events to one consumer, in order (chosen by the stream id).
    Pinned,
}

/// A persistent subscription's settings, as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubscriptionDefinition {
    /// The subscription's name, unique in its store.
    pub name: String,
    /// Which events it delivers.
    pub selector: Selector,
    /// Where delivery starts the first time (later: the checkpoint).
    pub start: StartFrom,
    /// How its consumers share the events.
    pub strategy: ConsumerStrategy,
    /// An unacknowledged event is redelivered after this long.
    pub ack_timeout_ms: u64,
    /// Deliveries before an event is parked. (Stored definitions written before the rename
    /// say `max_retries`.)
    #[serde(alias = "max_retries")]
    pub retries_max: u32,
    /// Events delivered and not yet acknowledged, over all consumers (formerly
    /// `max_in_flight`).
    #[serde(alias = "max_in_flight")]
    pub in_flight_max: usize,
}

impl SubscriptionDefinition {
    /// A definition with the defaults: round robin, 30 s ack timeout, 10 deliveries, 256 in
    /// flight.
    pub fn new(name: impl Into<String>, selector: Selector, start: StartFrom) -> Self {
        SubscriptionDefinition {
            name: name.into(),
            selector,
            start,
            strategy: ConsumerStrategy::RoundRobin,
            ack_timeout_ms: 30_000,
            retries_max: 10,
            in_flight_max: 256,
        }
    }

    /// Checks the definition as `save_subscription` does (public for the fuzz targets).
    pub fn validate(&self) -> Result<(), StoreError> {
        self.selector.validate()?;
        if self.in_flight_max == 0 || self.retries_max == 0 || self.ack_timeout_ms == 0 {
            return Err(StoreError::invalid(
                "in_flight_max, retries_max and ack_timeout_ms must be at least 1",
            ));
        }
        if matches!(self.start, StartFrom::EventNumber(_)) {
            return Err(StoreError::invalid(
                "a persistent subscription starts at the beginning, the end or a position",
            ));
        }
        Ok(())
    }

    /// The stored form (JSON, sealed as a blob by storage); public for the fuzz targets.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Reads the stored form back; public for the fuzz targets.
    pub fn decode(bytes: &[u8]) -> Result<Self, StoreError> {
        serde_json::from_slice(bytes).map_err(|error| {
            StoreError::unavailable(format!("stored definition unreadable: {error}"))
        })
    }
}

/// What a consumer does with an event it could not handle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NackAction {
    /// Deliver it again (counts as a delivery).
    Retry,
    /// Set it aside now (readable and replayable later).
    Park,
    /// Treat it as done.
    Skip,
}

/// An event delivered to a consumer of a persistent subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The event.
    pub event: RecordedEvent,
    /// 1 for the first delivery, 2 for the first redelivery, ...
    pub attempt: u32,
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
