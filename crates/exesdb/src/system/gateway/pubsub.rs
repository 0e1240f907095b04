//! `ExESDB.PubSub` [GS]: topics for listeners.
//!
//! Native topics are names over subscriptions: `<store>:$all` carries every event, and
//! `<store>:<topic>` the events whose type is `<topic>`; an in-process listener gets them from
//! [`StoreApi::listen`](crate::StoreApi::listen), in order, none skipped. An application with
//! its own bus implements [`EventBus`] and names it in the configuration
//! ([`SystemConfig::event_bus`](crate::SystemConfig::event_bus)): the PubSub process then
//! forwards every committed event to it under both topics, at least once and in position
//! order. The position it has handed over is stored through the committer (at most every
//! [`POSITION_STORE_INTERVAL`], and only after `publish` returned for the events it covers),
//! so a restarted PubSub, or the next start after a crash, resumes from it: what was handed
//! over since the last store comes again, and nothing is skipped. A bus that refuses an event
//! gets it again, after a backoff, before anything after it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::system::StoreApi;
use crate::system::context::StoreContext;
use crate::system::core::store::state_machine::Command;
use exesdb_types::{ALL_STREAM, RecordedEvent};
use exesdb_types::{Selector, StartFrom, StoreError, SubscriptionMessage};

/// How often, at most, the forwarding position is stored while it moves.
pub(crate) const POSITION_STORE_INTERVAL: Duration = Duration::from_millis(100);
/// The first wait before a refused event is offered again; it doubles up to the next.
const RETRY_WAIT_FIRST: Duration = Duration::from_millis(10);
const RETRY_WAIT_MAX: Duration = Duration::from_secs(5);

/// Why a bus did not take an event (it is down, say). PubSub offers the event again.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BusError(pub String);

/// A bus the application provides; events are handed to it in position order.
///
/// `publish` runs off the async runtime's own threads, so it may block (on a socket, say).
pub trait EventBus: Send + Sync + 'static {
    /// Publishes one event under a topic (`<store>:$all` or `<store>:<event type>`). An error
    /// means the bus did not take it: the same event and topic are offered again, after a
    /// backoff (10 ms doubling to 5 s), and nothing after it is offered meanwhile.
    fn publish(&self, topic: &str, event: &RecordedEvent) -> Result<(), BusError>;
}

/// An application's bus, as a configuration value.
#[derive(Clone)]
pub struct ExternalBus(pub Arc<dyn EventBus>);

impl std::fmt::Debug for ExternalBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ExternalBus")
    }
}

/// The selector of a native topic (the part after `<store>:`).
pub(crate) fn topic_selector(topic: &str) -> Selector {
    if topic == ALL_STREAM {
        Selector::ByStream(ALL_STREAM.to_string())
    } else {
        Selector::ByEventType(topic.to_string())
    }
}

/// What the PubSub process works from; it outlives the process's restarts.
pub(crate) struct PubSubShared {
    /// The store's API, handed over once the System is built.
    pub api: Mutex<Option<StoreApi>>,
    pub bus: Option<ExternalBus>,
    /// The next position to forward to the external bus (handed over up to here; stored up
    /// to at most here).
    pub forwarded: AtomicU64,
    pub store_id: String,
    /// The door to the committer, through which the position is stored.
    pub context: Arc<StoreContext>,
}

impl PubSubShared {
    fn api(&self) -> Option<StoreApi> {
        self.api
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }
}

/// The PubSub process.
pub(crate) struct PubSub;

/// Its state: the forwarding task, ended with the process however the process ends.
pub(crate) struct PubSubState {
    shared: Arc<PubSubShared>,
    forwarder: Option<Forwarder>,
}

struct Forwarder(tokio::task::JoinHandle<()>);

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Starts forwarding once the API exists.
pub(crate) enum PubSubMsg {
    Start,
}

/// How often the process looks again for the API while the System is being built.
const API_RETRY: Duration = Duration::from_millis(20);

impl Actor for PubSub {
    type Msg = PubSubMsg;
    type State = PubSubState;
    type Arguments = Arc<PubSubShared>;

    async fn pre_start(
        &self,
        myself: ActorRef<PubSubMsg>,
        shared: Arc<PubSubShared>,
    ) -> Result<PubSubState, ActorProcessingErr> {
        if shared.bus.is_some() {
            myself.send_message(PubSubMsg::Start)?;
        }
        Ok(PubSubState {
            shared,
            forwarder: None,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<PubSubMsg>,
        _message: PubSubMsg,
        state: &mut PubSubState,
    ) -> Result<(), ActorProcessingErr> {
        let (Some(bus), None) = (state.shared.bus.clone(), state.forwarder.as_ref()) else {
            return Ok(());
        };
        let Some(api) = state.shared.api() else {
            myself.send_after(API_RETRY, || PubSubMsg::Start);
            return Ok(());
        };
        let shared = state.shared.clone();
        state.forwarder = Some(Forwarder(tokio::spawn(forward(api, bus, shared))));
        Ok(())
    }
}

async fn forward(api: StoreApi, bus: ExternalBus, shared: Arc<PubSubShared>) {
    let from = shared.forwarded.load(Ordering::Acquire);
    let selector = Selector::ByStream(ALL_STREAM.to_string());
    let mut subscription = match api.subscribe(selector, StartFrom::Position(from)).await {
        Ok(subscription) => subscription,
        Err(error) => {
            tracing::error!(%error, "PubSub cannot follow the store; nothing is forwarded");
            return;
        }
    };
    let store = shared.store_id.clone();
    let all_topic = format!("{store}:{ALL_STREAM}");
    // Set while the position has moved past what is stored: when to store it.
    let mut store_at: Option<Instant> = None;
    loop {
        let message = match store_at {
            None => subscription.next().await,
            Some(at) => match tokio::time::timeout_at(at, subscription.next()).await {
                Ok(message) => message,
                Err(_) => {
                    let position = shared.forwarded.load(Ordering::Acquire);
                    store_at = match store_position(&shared.context, position).await {
                        Ok(()) => None,
                        Err(error) => {
                            tracing::warn!(%error, position, "PubSub could not store its position; it tries again");
                            Some(Instant::now() + POSITION_STORE_INTERVAL)
                        }
                    };
                    continue;
                }
            },
        };
        let Some(message) = message else { break };
        let SubscriptionMessage::Event(event) = message else {
            continue;
        };
        let type_topic = format!("{store}:{}", event.event_type);
        for topic in [&all_topic, &type_topic] {
            publish_until_taken(&bus, topic, &event, &shared).await;
        }
        shared
            .forwarded
            .store(event.position + 1, Ordering::Release);
        report_lag(&shared);
        if store_at.is_none() {
            store_at = Some(Instant::now() + POSITION_STORE_INTERVAL);
        }
    }
}

/// Offers an event to the bus until it takes it, waiting longer after each refusal.
async fn publish_until_taken(
    bus: &ExternalBus,
    topic: &str,
    event: &Arc<RecordedEvent>,
    shared: &PubSubShared,
) {
    let mut wait = RETRY_WAIT_FIRST;
    for attempt in 1u64.. {
        let (publisher, topic_owned, shared_event) =
            (bus.0.clone(), topic.to_string(), event.clone());
        // A panicking bus is a bus that did not take the event: it is offered again.
        let result = crate::system::blocking(move || {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                publisher.publish(&topic_owned, &shared_event)
            }))
            .unwrap_or_else(|_| Err(BusError("the event bus panicked".into())))
        })
        .await;
        let Err(error) = result else { return };
        metrics::counter!("exesdb_pubsub_publish_failures_total", "store" => shared.store_id.clone())
            .increment(1);
        report_lag(shared);
        if attempt == 1 || attempt.is_power_of_two() {
            tracing::warn!(%error, topic, position = event.position, attempt, "the event bus refused an event; PubSub offers it again");
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(RETRY_WAIT_MAX);
    }
}

/// Events committed and not yet handed to the bus, as the gauge `exesdb_pubsub_lag_events`.
fn report_lag(shared: &PubSubShared) {
    let committed = *shared.context.committed.borrow();
    let forwarded = shared.forwarded.load(Ordering::Acquire);
    metrics::gauge!("exesdb_pubsub_lag_events", "store" => shared.store_id.clone())
        .set(committed.saturating_sub(forwarded) as f64);
}

/// Stores the forwarding position through the committer, durable when this returns.
pub(crate) async fn store_position(
    context: &StoreContext,
    position: u64,
) -> Result<(), StoreError> {
    let (reply, answer) = oneshot::channel();
    context
        .submit(Command::BusForwarded { position }, reply)
        .await;
    answer
        .await
        .map_err(|_| StoreError::unavailable("the store stopped before answering"))?
        .map(|_| ())
}
