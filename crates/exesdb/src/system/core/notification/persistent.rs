//! Persistent subscriptions: named, stored, shared by a group of consumers, delivered at least
//! once.
//!
//! A group's emitter reads storage from its read position, hands each selected event to a
//! consumer (round robin, or pinned: a stream's events always to the same consumer while the
//! group does not change), and keeps it in flight until the consumer acks it, nacks it, or the
//! ack timeout passes. A timed-out or retried event is redelivered; after `retries_max`
//! deliveries it is parked (stored, readable, replayable). The checkpoint, the first position
//! not yet done, is stored through the committer, so after a restart delivery resumes there:
//! events after it may come again (at least once), none before it is lost.

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use super::subscription::scan_source;
use crate::storage::Scan;
use crate::system::context::StoreContext;
use crate::system::core::store::state_machine::Command;
use exesdb_types::RecordedEvent;
use exesdb_types::StoreError;
use exesdb_types::{ConsumerStrategy, Delivery, NackAction, StartFrom, SubscriptionDefinition};

struct InFlight {
    event: RecordedEvent,
    attempts: u32,
    consumer: u64,
    deadline: Instant,
}

struct ConsumerSlot {
    id: u64,
    sender: mpsc::Sender<Delivery>,
}

/// A group's mutable state.
pub(crate) struct GroupState {
    /// The next position to read from storage.
    pub read_position: u64,
    /// The checkpoint last stored.
    pub stored_checkpoint: u64,
    last_checkpoint_write: Instant,
    in_flight: BTreeMap<u64, InFlight>,
    /// Events to deliver again, with their delivery count so far.
    redeliver: BTreeMap<u64, (RecordedEvent, u32)>,
    consumers: Vec<ConsumerSlot>,
    next_consumer_id: u64,
    round_robin: usize,
}

impl GroupState {
    /// The first position not yet done.
    fn checkpoint(&self) -> u64 {
        let in_flight = self.in_flight.keys().next().copied();
        let redeliver = self.redeliver.keys().next().copied();
        [in_flight, redeliver, Some(self.read_position)]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(self.read_position)
    }

    /// The consumer for `event`, if one has room (for pinned, only its own consumer counts).
    fn pick(&mut self, event: &RecordedEvent, strategy: ConsumerStrategy) -> Option<usize> {
        if self.consumers.is_empty() {
            return None;
        }
        match strategy {
            ConsumerStrategy::Pinned => {
                let mut hasher = std::collections::hash_map::DefaultHasher::new();
                event.stream_id.hash(&mut hasher);
                let index = (hasher.finish() % self.consumers.len() as u64) as usize;
                (self.consumers[index].sender.capacity() > 0).then_some(index)
            }
            ConsumerStrategy::RoundRobin => {
                let count = self.consumers.len();
                for offset in 0..count {
                    let index = (self.round_robin + offset) % count;
                    if self.consumers[index].sender.capacity() > 0 {
                        self.round_robin = (index + 1) % count;
                        return Some(index);
                    }
                }
                None
            }
        }
    }

    /// Hands `event` to a consumer; gives it back if none can take it now.
    fn deliver(
        &mut self,
        event: RecordedEvent,
        attempts: u32,
        definition: &SubscriptionDefinition,
    ) -> Option<RecordedEvent> {
        let Some(index) = self.pick(&event, definition.strategy) else {
            return Some(event);
        };
        let consumer = self.consumers[index].id;
        let delivery = Delivery {
            event: event.clone(),
            attempt: attempts + 1,
        };
        if self.consumers[index].sender.try_send(delivery).is_err() {
            return Some(event);
        }
        let deadline = Instant::now() + Duration::from_millis(definition.ack_timeout_ms);
        self.in_flight.insert(
            event.position,
            InFlight {
                event,
                attempts: attempts + 1,
                consumer,
                deadline,
            },
        );
        None
    }

    /// Consumers that went away: their events go back for redelivery.
    fn drop_closed_consumers(&mut self) {
        let closed: Vec<u64> = self
            .consumers
            .iter()
            .filter(|c| c.sender.is_closed())
            .map(|c| c.id)
            .collect();
        for id in closed {
            self.release_consumer(id);
        }
    }

    fn release_consumer(&mut self, id: u64) {
        self.consumers.retain(|c| c.id != id);
        let theirs: Vec<u64> = self
            .in_flight
            .iter()
            .filter(|(_, f)| f.consumer == id)
            .map(|(position, _)| *position)
            .collect();
        for position in theirs {
            if let Some(flight) = self.in_flight.remove(&position) {
                // Not a failed delivery: the consumer left. It keeps its count.
                self.redeliver
                    .insert(position, (flight.event, flight.attempts.saturating_sub(1)));
            }
        }
    }
}

/// One persistent subscription at run time.
pub(crate) struct PersistentGroup {
    pub definition: SubscriptionDefinition,
    state: Mutex<GroupState>,
    /// Whether a step of its emitter is queued: at most one chain of steps runs per group.
    step_queued: std::sync::atomic::AtomicBool,
    /// Set when the group is removed, replaced or the store stops: no more steps and, above
    /// all, no more checkpoints (its in-memory state no longer says what is done).
    closed: std::sync::atomic::AtomicBool,
}

impl PersistentGroup {
    pub(crate) fn new(definition: SubscriptionDefinition, checkpoint: u64) -> Self {
        PersistentGroup {
            definition,
            step_queued: std::sync::atomic::AtomicBool::new(false),
            closed: std::sync::atomic::AtomicBool::new(false),
            state: Mutex::new(GroupState {
                read_position: checkpoint,
                stored_checkpoint: checkpoint,
                last_checkpoint_write: Instant::now(),
                in_flight: BTreeMap::new(),
                redeliver: BTreeMap::new(),
                consumers: Vec::new(),
                next_consumer_id: 0,
                round_robin: 0,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, GroupState> {
        // Every critical section leaves the state whole (no await inside).
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn join(
        self: &Arc<Self>,
        context: Arc<StoreContext>,
        buffer: usize,
    ) -> PersistentConsumer {
        let (sender, receiver) = mpsc::channel(buffer.max(1));
        let mut state = self.lock();
        let id = state.next_consumer_id;
        state.next_consumer_id += 1;
        state.consumers.push(ConsumerSlot { id, sender });
        PersistentConsumer {
            group: self.clone(),
            context,
            id,
            receiver,
        }
    }

    /// Claims the right to queue the next step; false if one is queued already.
    pub(crate) fn claim_step(&self) -> bool {
        !self
            .step_queued
            .swap(true, std::sync::atomic::Ordering::AcqRel)
    }

    /// Marks the queued step as taken (called as the step starts).
    pub(crate) fn step_taken(&self) {
        self.step_queued
            .store(false, std::sync::atomic::Ordering::Release);
    }

    /// The next position the emitter reads from storage.
    pub(crate) fn read_position(&self) -> u64 {
        self.lock().read_position
    }

    /// Whether the group has nothing to do until a commit past `committed` (a consumer
    /// joining and a replay of parked events queue a step themselves): nothing in flight (so
    /// no deadline to watch), its checkpoint stored, and no consumer or nothing to deliver.
    pub(crate) fn is_idle(&self, committed: u64) -> bool {
        let state = self.lock();
        state.in_flight.is_empty()
            && state.checkpoint() == state.stored_checkpoint
            && (state.consumers.is_empty()
                || (state.redeliver.is_empty() && state.read_position >= committed))
    }

    /// One emitter step: expire, redeliver, read and deliver, store the checkpoint. Returns
    /// whether it did anything (if not, the emitter waits for commits).
    pub(crate) async fn step(
        &self,
        context: &StoreContext,
        scan_max: u64,
    ) -> Result<bool, StoreError> {
        if self.is_closed() {
            return Ok(false);
        }
        let definition = &self.definition;
        let mut to_park = Vec::new();
        let mut progressed = false;
        let read_from = {
            let mut state = self.lock();
            state.drop_closed_consumers();
            let now = Instant::now();
            let expired: Vec<u64> = state
                .in_flight
                .iter()
                .filter(|(_, f)| f.deadline <= now)
                .map(|(position, _)| *position)
                .collect();
            for position in expired {
                progressed = true;
                let exhausted = state
                    .in_flight
                    .get(&position)
                    .is_some_and(|flight| flight.attempts >= definition.retries_max);
                if exhausted {
                    // Stays in flight, holding the checkpoint, until its park is durable.
                    to_park.push(position);
                } else if let Some(flight) = state.in_flight.remove(&position) {
                    state
                        .redeliver
                        .insert(position, (flight.event, flight.attempts));
                }
            }
            while state.in_flight.len() < definition.in_flight_max {
                let Some((position, (event, attempts))) = state.redeliver.pop_first() else {
                    break;
                };
                match state.deliver(event, attempts, definition) {
                    None => progressed = true,
                    Some(event) => {
                        state.redeliver.insert(position, (event, attempts));
                        break;
                    }
                }
            }
            let room = state.in_flight.len() < definition.in_flight_max
                && !state.consumers.is_empty()
                && state.redeliver.is_empty();
            room.then_some(state.read_position)
        };
        for position in to_park {
            park(context, &definition.name, position).await?;
            self.lock().in_flight.remove(&position);
        }
        let committed = *context.committed.borrow();
        if let Some(from) = read_from
            && from < committed
        {
            // The scan can wait for the disk: off the runtime's own threads.
            let engine = context.storage.engine()?;
            let selector = definition.selector.clone();
            let (events, next) = crate::system::blocking(move || {
                let scan = Scan {
                    from,
                    until: committed,
                    count_max: scan_max,
                    bytes_max: None,
                };
                engine.scan(scan_source(&selector, None), scan, |event| {
                    selector.matches(event)
                })
            })
            .await?;
            let mut state = self.lock();
            let mut stopped_at = None;
            for event in events {
                if state.in_flight.len() >= definition.in_flight_max {
                    stopped_at = Some(event.position);
                    break;
                }
                let position = event.position;
                if state.deliver(event, 0, definition).is_some() {
                    stopped_at = Some(position);
                    break;
                }
                progressed = true;
            }
            let new_read = stopped_at.unwrap_or(next);
            if new_read != state.read_position {
                progressed = true;
            }
            state.read_position = new_read;
        }
        self.store_checkpoint(context).await?;
        Ok(progressed)
    }

    /// Stores the checkpoint when it moved, at most every `CHECKPOINT_INTERVAL` (each store
    /// is an fsync'd commit).
    async fn store_checkpoint(&self, context: &StoreContext) -> Result<(), StoreError> {
        let position = {
            let state = self.lock();
            if self.is_closed() {
                return Ok(());
            }
            let checkpoint = state.checkpoint();
            if checkpoint == state.stored_checkpoint
                || state.last_checkpoint_write.elapsed() < CHECKPOINT_INTERVAL
            {
                return Ok(());
            }
            checkpoint
        };
        submit(
            context,
            Command::Checkpoint {
                name: self.definition.name.clone(),
                position,
            },
        )
        .await?;
        let mut state = self.lock();
        state.stored_checkpoint = position;
        state.last_checkpoint_write = Instant::now();
        Ok(())
    }

    /// Ends every consumer's stream (the subscription was removed or replaced, or the store
    /// stops). The group stops stepping and never stores another checkpoint: after this its
    /// in-flight events are no longer tracked, and a checkpoint computed now would skip them.
    pub(crate) fn close(&self) {
        self.closed
            .store(true, std::sync::atomic::Ordering::Release);
        self.lock().consumers.clear();
    }

    fn is_closed(&self) -> bool {
        self.closed.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Queues stored events for delivery again (replaying parked events).
    pub(crate) fn requeue(&self, events: Vec<RecordedEvent>) {
        let mut state = self.lock();
        for event in events {
            state.redeliver.insert(event.position, (event, 0));
        }
    }

    fn acknowledge(&self, position: u64) {
        let mut state = self.lock();
        if state.in_flight.remove(&position).is_none() {
            state.redeliver.remove(&position);
        }
    }
}

/// How often, at most, a moving checkpoint is stored.
const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(100);

async fn submit(context: &StoreContext, command: Command) -> Result<(), StoreError> {
    let (reply, answer) = oneshot::channel();
    context.submit(command, reply).await;
    answer
        .await
        .map_err(|_| StoreError::unavailable("the store stopped before answering"))?
        .map(|_| ())
}

async fn park(context: &StoreContext, name: &str, position: u64) -> Result<(), StoreError> {
    submit(
        context,
        Command::Park {
            name: name.to_string(),
            position,
            parked: true,
        },
    )
    .await
}

/// One consumer of a persistent subscription. Dropping it leaves the group; its unacknowledged
/// events go to the others.
pub struct PersistentConsumer {
    group: Arc<PersistentGroup>,
    context: Arc<StoreContext>,
    id: u64,
    receiver: mpsc::Receiver<Delivery>,
}

impl std::fmt::Debug for PersistentConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PersistentConsumer")
            .field("subscription", &self.group.definition.name)
            .field("id", &self.id)
            .finish()
    }
}

impl PersistentConsumer {
    /// The next event; `None` when the subscription was removed or the store stopped.
    pub async fn next(&mut self) -> Option<Delivery> {
        self.receiver.recv().await
    }

    /// The next delivery if one is waiting, without waiting.
    pub fn try_next(&mut self) -> Option<Delivery> {
        self.receiver.try_recv().ok()
    }

    /// Marks an event done. A late ack counts too: an event whose ack timeout passed, queued
    /// for redelivery or already redelivered to another consumer, is done all the same.
    pub fn ack(&self, position: u64) {
        self.group.acknowledge(position);
    }

    /// Reports an event this consumer could not handle. A retry past `retries_max`
    /// deliveries parks the event instead.
    ///
    /// The event keeps holding the checkpoint until its fate is settled: a park is made durable
    /// before the event leaves flight, and a retry moves it to the redelivery queue in the
    /// same step, so no checkpoint can pass an event that is neither done nor queued.
    pub async fn nack(&self, position: u64, action: NackAction) -> Result<(), StoreError> {
        let attempts = {
            let state = self.group.lock();
            match state.in_flight.get(&position) {
                Some(flight) if flight.consumer == self.id => flight.attempts,
                _ => return Ok(()),
            }
        };
        let retries_max = self.group.definition.retries_max;
        let parks = match action {
            NackAction::Park => true,
            NackAction::Retry => attempts >= retries_max,
            NackAction::Skip => false,
        };
        if parks {
            park(&self.context, &self.group.definition.name, position).await?;
        }
        let mut state = self.group.lock();
        match state.in_flight.remove(&position) {
            Some(flight) if action == NackAction::Retry && !parks => {
                state
                    .redeliver
                    .insert(position, (flight.event, flight.attempts));
            }
            Some(_) => {}
            // It expired while parking and is queued again: parked is what it is now.
            None if parks => {
                state.redeliver.remove(&position);
            }
            None => {}
        }
        Ok(())
    }

    /// The subscription's name.
    pub fn subscription(&self) -> &str {
        &self.group.definition.name
    }
}

impl Drop for PersistentConsumer {
    fn drop(&mut self) {
        self.group.lock().release_consumer(self.id);
    }
}

/// The persistent subscriptions of one store, by name.
#[derive(Default)]
pub(crate) struct PersistentRegistry {
    groups: Mutex<HashMap<String, Arc<PersistentGroup>>>,
}

impl PersistentRegistry {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Arc<PersistentGroup>>> {
        self.groups
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn get(&self, name: &str) -> Option<Arc<PersistentGroup>> {
        self.lock().get(name).cloned()
    }

    pub(crate) fn insert(&self, group: Arc<PersistentGroup>) {
        self.lock().insert(group.definition.name.clone(), group);
    }

    pub(crate) fn remove(&self, name: &str) -> Option<Arc<PersistentGroup>> {
        self.lock().remove(name)
    }

    pub(crate) fn names(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }

    /// Stops every group on this node (it no longer leads): their consumers' streams end, and
    /// they connect to the new leader, which resumes from the replicated checkpoints.
    pub(crate) fn unload(&self) -> usize {
        let groups: Vec<_> = self.lock().drain().map(|(_, group)| group).collect();
        for group in &groups {
            group.close();
        }
        groups.len()
    }

    /// Loads every stored definition not running yet, from its checkpoint.
    pub(crate) fn load(&self, context: &StoreContext) -> Result<usize, StoreError> {
        let mut loaded = 0;
        let engine = context.storage.engine()?;
        for (name, bytes) in engine.subscription_definitions()? {
            if self.get(&name).is_some() {
                continue;
            }
            let definition = SubscriptionDefinition::decode(&bytes)?;
            let checkpoint = engine.checkpoint(&name)?.unwrap_or(match definition.start {
                StartFrom::Position(position) => position,
                _ => 0,
            });
            self.insert(Arc::new(PersistentGroup::new(definition, checkpoint)));
            loaded += 1;
        }
        Ok(loaded)
    }
}
