//! `ExESDB.PubSub` [GS]: topics for listeners.
//!
//! Native topics are names over subscriptions: `<store>:$all` carries every event, and
//! `<store>:<topic>` the events whose type is `<topic>`; an in-process listener gets them from
//! [`StoreApi::listen`](crate::StoreApi::listen), in order, none skipped. An application with
//! its own bus implements [`EventBus`] and names it in the configuration
//! ([`SystemConfig::event_bus`](crate::SystemConfig::event_bus)): the PubSub process then
//! forwards every committed event to it under both topics, and a restarted PubSub resumes from
//! the last event it handed over.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef};

use crate::system::StoreApi;
use exesdb_types::{ALL_STREAM, RecordedEvent};
use exesdb_types::{Selector, StartFrom, SubscriptionMessage};

/// A bus the application provides; events are handed to it in position order.
pub trait EventBus: Send + Sync + 'static {
    /// Publishes one event under a topic (`<store>:$all` or `<store>:<event type>`).
    fn publish(&self, topic: &str, event: &RecordedEvent);
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
    /// The next position to forward to the external bus.
    pub forwarded: AtomicU64,
    pub store_id: String,
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
    let all_topic = format!("{}:{ALL_STREAM}", shared.store_id);
    while let Some(message) = subscription.next().await {
        if let SubscriptionMessage::Event(event) = message {
            bus.0.publish(&all_topic, &event);
            bus.0
                .publish(&format!("{}:{}", shared.store_id, event.event_type), &event);
            shared
                .forwarded
                .store(event.position + 1, Ordering::Release);
        }
    }
}
