//! `ExESDB.Subscriptions` [S] (:one_for_one): `SubscriptionsReader` and `SubscriptionsWriter`,
//! independent GenServers over the `subscriptions` keyspace: the writer stores and removes
//! persistent subscription definitions (through the Store's committer, durable before it
//! answers), the reader lists them. one_for_one: a failing reader never interrupts writes.
//! Restart intensity: the System's (`restarts_max` within `restart_period_ms`).

use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::oneshot;

use exesdb_types::Strategy;

use crate::supervision::ChildSpec;
use crate::supervision::slot::ProcessSlot;
use crate::system::context::StoreContext;
use crate::system::core::store::state_machine::Command;
use crate::system::wiring::Wiring;
use exesdb_types::StoreError;
use exesdb_types::SubscriptionDefinition;

/// Requests to the writer.
pub(crate) enum WriterMsg {
    Save {
        definition: SubscriptionDefinition,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    Remove {
        name: String,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
}

/// Requests to the reader.
pub(crate) enum ReaderMsg {
    List {
        reply: oneshot::Sender<Result<Vec<SubscriptionDefinition>, StoreError>>,
    },
}

/// Where callers find the two processes.
#[derive(Default)]
pub(crate) struct SubscriptionsProcesses {
    pub writer: ProcessSlot<WriterMsg>,
    pub reader: ProcessSlot<ReaderMsg>,
}

impl SubscriptionsProcesses {
    /// Stores (or replaces) a definition.
    pub(crate) async fn save(&self, definition: SubscriptionDefinition) -> Result<(), StoreError> {
        let (reply, answer) = oneshot::channel();
        send(&self.writer, WriterMsg::Save { definition, reply })?;
        answer_of(answer).await
    }

    /// Removes a definition with its checkpoint and parked events.
    pub(crate) async fn remove(&self, name: &str) -> Result<(), StoreError> {
        let (reply, answer) = oneshot::channel();
        let name = name.to_string();
        send(&self.writer, WriterMsg::Remove { name, reply })?;
        answer_of(answer).await
    }

    /// The stored definitions.
    pub(crate) async fn list(&self) -> Result<Vec<SubscriptionDefinition>, StoreError> {
        let (reply, answer) = oneshot::channel();
        send(&self.reader, ReaderMsg::List { reply })?;
        answer_of(answer).await
    }
}

fn send<M: ractor::Message>(slot: &ProcessSlot<M>, message: M) -> Result<(), StoreError> {
    slot.get()
        .ok_or_else(|| StoreError::unavailable("the subscriptions process is restarting"))?
        .send_message(message)
        .map_err(|_| StoreError::unavailable("the subscriptions process is restarting"))
}

async fn answer_of<T>(answer: oneshot::Receiver<Result<T, StoreError>>) -> Result<T, StoreError> {
    answer.await.map_err(|_| {
        StoreError::unavailable("the subscriptions process stopped before answering")
    })?
}

/// The writer process.
#[derive(Clone)]
pub(crate) struct SubscriptionsWriter;

impl Actor for SubscriptionsWriter {
    type Msg = WriterMsg;
    type State = Arc<StoreContext>;
    type Arguments = Arc<StoreContext>;

    async fn pre_start(
        &self,
        myself: ActorRef<WriterMsg>,
        context: Arc<StoreContext>,
    ) -> Result<Arc<StoreContext>, ActorProcessingErr> {
        context.subscription_processes.writer.set(myself);
        Ok(context)
    }

    async fn handle(
        &self,
        _myself: ActorRef<WriterMsg>,
        message: WriterMsg,
        context: &mut Arc<StoreContext>,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            WriterMsg::Save { definition, reply } => {
                let command = Command::SaveSubscription {
                    name: definition.name.clone(),
                    definition: definition.encode(),
                };
                let _ = reply.send(commit(context, command).await);
            }
            WriterMsg::Remove { name, reply } => {
                let _ = reply.send(commit(context, Command::RemoveSubscription { name }).await);
            }
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        myself: ActorRef<WriterMsg>,
        context: &mut Arc<StoreContext>,
    ) -> Result<(), ActorProcessingErr> {
        context.subscription_processes.writer.clear(&myself);
        Ok(())
    }
}

async fn commit(context: &StoreContext, command: Command) -> Result<(), StoreError> {
    let (reply, answer) = oneshot::channel();
    context.submit(command, reply).await;
    answer_of(answer).await.map(|_| ())
}

/// The reader process.
#[derive(Clone)]
pub(crate) struct SubscriptionsReader;

impl Actor for SubscriptionsReader {
    type Msg = ReaderMsg;
    type State = Arc<StoreContext>;
    type Arguments = Arc<StoreContext>;

    async fn pre_start(
        &self,
        myself: ActorRef<ReaderMsg>,
        context: Arc<StoreContext>,
    ) -> Result<Arc<StoreContext>, ActorProcessingErr> {
        context.subscription_processes.reader.set(myself);
        Ok(context)
    }

    async fn handle(
        &self,
        _myself: ActorRef<ReaderMsg>,
        message: ReaderMsg,
        context: &mut Arc<StoreContext>,
    ) -> Result<(), ActorProcessingErr> {
        let ReaderMsg::List { reply } = message;
        let storage = context.storage.clone();
        let definitions = crate::system::blocking(move || {
            storage
                .engine()
                .and_then(|engine| engine.subscription_definitions())
        })
        .await
        .map_err(StoreError::from)
        .and_then(|stored| {
            stored
                .into_iter()
                .map(|(_, bytes)| SubscriptionDefinition::decode(&bytes))
                .collect()
        });
        let _ = reply.send(definitions);
        Ok(())
    }

    async fn post_stop(
        &self,
        myself: ActorRef<ReaderMsg>,
        context: &mut Arc<StoreContext>,
    ) -> Result<(), ActorProcessingErr> {
        context.subscription_processes.reader.clear(&myself);
        Ok(())
    }
}

/// The reader and the writer are independent: a failing reader never interrupts writes.
const STRATEGY: Strategy = Strategy::OneForOne;

/// `ExESDB.Subscriptions`.
pub(crate) fn subscriptions(wiring: &Wiring) -> ChildSpec {
    wiring.supervisor(
        "ExESDB.Subscriptions",
        STRATEGY,
        vec![
            wiring.gen_server("ExESDB.SubscriptionsReader", SubscriptionsReader),
            wiring.gen_server("ExESDB.SubscriptionsWriter", SubscriptionsWriter),
        ],
    )
}
