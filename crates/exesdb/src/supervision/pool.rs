//! Keyed worker pools: a PartitionSupervisor of DynamicSupervisor partitions that start workers
//! on demand and stop them after an idle time.
//!
//! Routing: a key hashes to a partition. In a pool of shared workers (streams, snapshots) the
//! key then hashes to one of the partition's `stream_workers_per_partition_max` workers, so any
//! number of keys is served by a bounded set of processes, and one key always reaches the same
//! worker, in order. In a pool of own workers (emitters, whose steps wait on their subscriber)
//! each active key gets a worker of its own, at most `workers_per_partition_max` of them. The
//! partition's table maps the worker's key to its worker.
//! Every request sent to a worker is counted in the table under the table's lock, and a worker
//! leaves the table (and stops) only when it has received every request counted, so no request
//! is ever left in the mailbox of a worker that is going away.

use std::borrow::Cow;
use std::collections::HashMap;
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::marker::PhantomData;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, MessagingErr, SupervisionEvent};
use tokio::sync::oneshot;

use super::supervisor::{ChildSpec, SupervisorSettings, stop_gracefully};
use super::tree::TreeNode;
use exesdb_types::StoreError;
use exesdb_types::{Kind, Strategy};

/// Exit reason of a worker that stopped because it was idle (not a failure).
const IDLE_EXIT: &str = "idle";

/// What the workers of one pool do with a request for their key.
pub(crate) trait KeyedWork: Send + Sync + 'static {
    /// A request, carrying its own reply channel.
    type Request: Send + 'static;
    /// The name workers show in the tree, followed by their key.
    const WORKER_NAME: &'static str;
    /// Whether keys share the partition's workers (their requests never wait on anything but
    /// a bounded queue), rather than each key getting a worker of its own.
    const SHARED_WORKERS: bool = false;
    /// Serves one request. Requests for one key are served one at a time, in order.
    fn handle(&self, key: &str, request: Self::Request) -> impl Future<Output = ()> + Send;

    /// Work a (re)started worker must pick up by itself: the keys that need a worker as soon
    /// as a partition starts, each with its first request. Most pools have none: their work
    /// arrives as requests. Emitters resume their subscriptions here.
    fn resume(&self) -> Vec<(String, Self::Request)> {
        Vec::new()
    }
}

/// Sizes of a pool.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PoolSettings {
    pub partitions: usize,
    /// Shared workers: how many the keys of a partition share. Own workers: how many keys a
    /// partition serves at once (one more is refused).
    pub workers_per_partition_max: usize,
    pub idle: Duration,
}

impl PoolSettings {
    /// The key of the worker that serves `key`: the key itself, or in a pool of shared workers
    /// the number of the one it hashes to. Not the partition's hash: with one hash, a partition
    /// would use only every n-th of its workers.
    fn worker_key<'a, W: KeyedWork>(&self, key: &'a str) -> Cow<'a, str> {
        if !W::SHARED_WORKERS {
            return Cow::Borrowed(key);
        }
        let spread = key_hash(key) / self.partitions.max(1) as u64;
        Cow::Owned((spread % self.workers_per_partition_max.max(1) as u64).to_string())
    }
}

/// A handle to a pool: routes requests to workers, starting them when needed.
pub(crate) struct WorkerPool<W: KeyedWork> {
    work: Arc<W>,
    /// Shared, so that a handle is cheap to clone (an emitter takes one for every step).
    partitions: Arc<[Arc<Partition<W>>]>,
    settings: PoolSettings,
}

impl<W: KeyedWork> Clone for WorkerPool<W> {
    fn clone(&self) -> Self {
        WorkerPool {
            work: self.work.clone(),
            partitions: self.partitions.clone(),
            settings: self.settings,
        }
    }
}

struct Partition<W: KeyedWork> {
    node: Arc<TreeNode>,
    supervisor: RwLock<Option<ActorRef<PartitionMsg>>>,
    workers: Mutex<HashMap<String, WorkerEntry<W>>>,
}

struct WorkerEntry<W: KeyedWork> {
    actor: ActorRef<WorkerMsg<W::Request>>,
    sent: u64,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Critical sections are single map operations; a poisoned lock holds consistent data.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl<W: KeyedWork> Partition<W> {
    fn supervisor(&self) -> Option<ActorRef<PartitionMsg>> {
        self.supervisor
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    fn set_supervisor(&self, supervisor: Option<ActorRef<PartitionMsg>>) {
        *self
            .supervisor
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = supervisor;
    }
}

impl<W: KeyedWork> WorkerPool<W> {
    /// A pool and the child spec of its PartitionSupervisor, named `name`.
    pub(crate) fn new(
        name: &str,
        work: W,
        settings: PoolSettings,
        supervisor_settings: SupervisorSettings,
    ) -> (WorkerPool<W>, ChildSpec) {
        let work = Arc::new(work);
        let partitions: Vec<Arc<Partition<W>>> = (0..settings.partitions)
            .map(|index| {
                Arc::new(Partition {
                    node: TreeNode::new(
                        format!("{name}.Partition{index}"),
                        Kind::DynamicSupervisor,
                        Some(Strategy::OneForOne),
                    ),
                    supervisor: RwLock::new(None),
                    workers: Mutex::new(HashMap::new()),
                })
            })
            .collect();
        let count = partitions.len();
        let children = partitions
            .iter()
            .enumerate()
            .map(|(index, partition)| {
                let partition = partition.clone();
                let work = work.clone();
                ChildSpec::actor(partition.node.clone(), move || {
                    (
                        PartitionActor::<W>(PhantomData),
                        PartitionArgs {
                            index,
                            partitions: count,
                            partition: partition.clone(),
                            work: work.clone(),
                            settings,
                            supervisor_settings,
                        },
                    )
                })
            })
            .collect();
        let spec = ChildSpec::supervisor(
            name,
            Kind::PartitionSupervisor,
            Strategy::OneForOne,
            supervisor_settings,
            children,
        );
        let pool = WorkerPool {
            work,
            partitions: partitions.into(),
            settings,
        };
        (pool, spec)
    }

    /// The shared work object.
    pub(crate) fn work(&self) -> &Arc<W> {
        &self.work
    }

    /// Workers running now, over all partitions.
    pub(crate) fn active_workers(&self) -> usize {
        self.partitions.iter().map(|p| lock(&p.workers).len()).sum()
    }

    /// Hands `request` to the worker of `key`, starting the worker if it is not running.
    pub(crate) async fn dispatch(&self, key: &str, request: W::Request) -> Result<(), StoreError> {
        let partition = &self.partitions[partition_of(key, self.partitions.len())];
        let worker_key = self.settings.worker_key::<W>(key);
        let mut message = WorkerMsg::Request(key.to_string(), request);
        // Two rounds: a worker may stop between our start request and our send.
        for _ in 0..3 {
            {
                let mut workers = lock(&partition.workers);
                if let Some(entry) = workers.get_mut(worker_key.as_ref()) {
                    match entry.actor.send_message(message) {
                        Ok(()) => {
                            entry.sent += 1;
                            return Ok(());
                        }
                        Err(MessagingErr::SendErr(returned)) => {
                            workers.remove(worker_key.as_ref());
                            message = returned;
                        }
                        Err(_) => return Err(StoreError::unavailable("worker unreachable")),
                    }
                }
            }
            let supervisor = partition.supervisor().ok_or_else(|| {
                StoreError::unavailable(format!("{} is restarting", partition.node.name()))
            })?;
            let (reply, answer) = oneshot::channel();
            supervisor
                .send_message(PartitionMsg::StartWorker {
                    key: worker_key.to_string(),
                    reply,
                })
                .map_err(|_| {
                    StoreError::unavailable(format!("{} is restarting", partition.node.name()))
                })?;
            answer.await.map_err(|_| {
                StoreError::unavailable(format!("{} stopped", partition.node.name()))
            })??;
        }
        Err(StoreError::unavailable("worker kept stopping; try again"))
    }
}

fn partition_of(key: &str, partitions: usize) -> usize {
    (key_hash(key) % partitions.max(1) as u64) as usize
}

fn key_hash(key: &str) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut hasher);
    hasher.finish()
}

/// Messages of a partition (a DynamicSupervisor).
pub(crate) enum PartitionMsg {
    StartWorker {
        key: String,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
}

struct PartitionActor<W>(PhantomData<fn() -> W>);

struct PartitionArgs<W: KeyedWork> {
    index: usize,
    partitions: usize,
    partition: Arc<Partition<W>>,
    work: Arc<W>,
    settings: PoolSettings,
    supervisor_settings: SupervisorSettings,
}

struct PartitionState<W: KeyedWork> {
    args: PartitionArgs<W>,
    children: HashMap<ActorId, (String, Arc<TreeNode>)>,
    restart_times: std::collections::VecDeque<Instant>,
}

impl<W: KeyedWork> Actor for PartitionActor<W> {
    type Msg = PartitionMsg;
    type State = PartitionState<W>;
    type Arguments = PartitionArgs<W>;

    async fn pre_start(
        &self,
        myself: ActorRef<PartitionMsg>,
        args: PartitionArgs<W>,
    ) -> Result<PartitionState<W>, ActorProcessingErr> {
        // Workers of an earlier incarnation died with it.
        lock(&args.partition.workers).clear();
        args.partition.node.clear_children();
        args.partition.set_supervisor(Some(myself));
        Ok(PartitionState {
            args,
            children: HashMap::new(),
            restart_times: std::collections::VecDeque::new(),
        })
    }

    async fn post_start(
        &self,
        myself: ActorRef<PartitionMsg>,
        state: &mut PartitionState<W>,
    ) -> Result<(), ActorProcessingErr> {
        state.resume(&myself, None).await;
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<PartitionMsg>,
        message: PartitionMsg,
        state: &mut PartitionState<W>,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            PartitionMsg::StartWorker { key, reply } => {
                let result = state.start_worker(&myself, key, None).await;
                let _ = reply.send(result);
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<PartitionMsg>,
        event: SupervisionEvent,
        state: &mut PartitionState<W>,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, failure) = match event {
            SupervisionEvent::ActorTerminated(cell, final_state, reason) => {
                // The final state may own resources (the Store's committer guard): release
                // them now, before restarting anything that waits for them.
                drop(final_state);
                let idle = reason.as_deref() == Some(IDLE_EXIT);
                (
                    cell,
                    (!idle).then(|| reason.unwrap_or_else(|| "stopped".into())),
                )
            }
            SupervisionEvent::ActorFailed(cell, error) => (cell, Some(error.to_string())),
            _ => return Ok(()),
        };
        let Some((key, node)) = state.children.remove(&cell.get_id()) else {
            return Ok(());
        };
        {
            let mut workers = lock(&state.args.partition.workers);
            if workers
                .get(&key)
                .is_some_and(|entry| entry.actor.get_id() == cell.get_id())
            {
                workers.remove(&key);
            }
        }
        let Some(reason) = failure else {
            state.args.partition.node.remove_child(&node);
            return Ok(());
        };
        tracing::warn!(partition = state.args.partition.node.name(), worker = node.name(), %reason, "worker exited; restarting");
        if !state.allow_restart() {
            state.args.partition.node.remove_child(&node);
            state.stop_workers(&myself).await;
            return Err(format!(
                "{}: worker restart intensity exceeded (last: {})",
                state.args.partition.node.name(),
                node.name()
            )
            .into());
        }
        node.count_restart();
        match state
            .start_worker(&myself, key.clone(), Some(node.clone()))
            .await
        {
            Ok(()) => state.resume(&myself, Some(&key)).await,
            Err(error) => {
                state.args.partition.node.remove_child(&node);
                tracing::error!(%error, "worker restart failed");
            }
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        myself: ActorRef<PartitionMsg>,
        state: &mut PartitionState<W>,
    ) -> Result<(), ActorProcessingErr> {
        state.stop_workers(&myself).await;
        Ok(())
    }
}

impl<W: KeyedWork> PartitionState<W> {
    async fn start_worker(
        &mut self,
        myself: &ActorRef<PartitionMsg>,
        key: String,
        restarted_node: Option<Arc<TreeNode>>,
    ) -> Result<(), StoreError> {
        let partition = &self.args.partition;
        if lock(&partition.workers).contains_key(&key) {
            return Ok(());
        }
        // Shared workers never reach this: their keys map onto at most this many.
        if self.children.len() >= self.args.settings.workers_per_partition_max {
            return Err(StoreError::unavailable(format!(
                "{} runs its maximum of {} workers (workers_per_partition_max)",
                partition.node.name(),
                self.args.settings.workers_per_partition_max
            )));
        }
        let node = match restarted_node {
            Some(node) => node,
            None => {
                let node = TreeNode::new(format!("{}({key})", W::WORKER_NAME), Kind::Worker, None);
                partition.node.add_child(node.clone());
                node
            }
        };
        let args = WorkerArgs {
            key: key.clone(),
            work: self.args.work.clone(),
            partition: partition.clone(),
            idle: self.args.settings.idle,
        };
        let spawned =
            Actor::spawn_linked(None, WorkerActor::<W>(PhantomData), args, myself.get_cell()).await;
        let (actor, _) = match spawned {
            Ok(spawned) => spawned,
            Err(error) => {
                partition.node.remove_child(&node);
                return Err(StoreError::unavailable(format!(
                    "could not start a worker: {error}"
                )));
            }
        };
        node.set_cell(Some(actor.get_cell()));
        self.children.insert(actor.get_id(), (key.clone(), node));
        lock(&partition.workers).insert(key, WorkerEntry { actor, sent: 0 });
        Ok(())
    }

    /// Starts a worker for each key of this partition that has work to resume, and hands it
    /// that work (counted in the table like any request). Keys whose worker runs already are
    /// left alone, their work being in hand, except `restarted`, whose worker just replaced
    /// one that failed.
    async fn resume(&mut self, myself: &ActorRef<PartitionMsg>, restarted: Option<&str>) {
        for (key, request) in self.args.work.resume() {
            if partition_of(&key, self.args.partitions) != self.args.index {
                continue;
            }
            let worker_key = self.args.settings.worker_key::<W>(&key).into_owned();
            let running = lock(&self.args.partition.workers).contains_key(&worker_key);
            if running && restarted != Some(worker_key.as_str()) {
                continue;
            }
            if let Err(error) = self.start_worker(myself, worker_key.clone(), None).await {
                tracing::error!(%error, key, "cannot resume work");
                continue;
            }
            if let Some(entry) = lock(&self.args.partition.workers).get_mut(&worker_key)
                && entry
                    .actor
                    .send_message(WorkerMsg::Request(key, request))
                    .is_ok()
            {
                entry.sent += 1;
            }
        }
    }

    fn allow_restart(&mut self) -> bool {
        let now = Instant::now();
        let intensity = self.args.supervisor_settings.intensity;
        self.restart_times
            .retain(|at| now.saturating_duration_since(*at) < intensity.period());
        self.restart_times.push_back(now);
        self.restart_times.len() <= intensity.restarts_max as usize
    }

    async fn stop_workers(&mut self, myself: &ActorRef<PartitionMsg>) {
        let partition = &self.args.partition;
        let is_me = partition
            .supervisor()
            .is_some_and(|current| current.get_id() == myself.get_id());
        if is_me {
            partition.set_supervisor(None);
        }
        let entries: Vec<_> = lock(&partition.workers).drain().collect();
        for (_, entry) in entries {
            let cell = entry.actor.get_cell();
            cell.unlink(myself.get_cell());
            stop_gracefully(&cell, self.args.supervisor_settings.shutdown_timeout).await;
        }
        self.children.clear();
        partition.node.clear_children();
    }
}

/// Messages of a worker.
pub(crate) enum WorkerMsg<R> {
    /// A request for a key (the worker's own, or one of those sharing it).
    Request(String, R),
    IdleCheck,
}

struct WorkerActor<W>(PhantomData<fn() -> W>);

struct WorkerArgs<W: KeyedWork> {
    key: String,
    work: Arc<W>,
    partition: Arc<Partition<W>>,
    idle: Duration,
}

struct WorkerState<W: KeyedWork> {
    args: WorkerArgs<W>,
    received: u64,
    last_request: Instant,
}

impl<W: KeyedWork> Actor for WorkerActor<W> {
    type Msg = WorkerMsg<W::Request>;
    type State = WorkerState<W>;
    type Arguments = WorkerArgs<W>;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: WorkerArgs<W>,
    ) -> Result<WorkerState<W>, ActorProcessingErr> {
        myself.send_after(args.idle, || WorkerMsg::IdleCheck);
        Ok(WorkerState {
            args,
            received: 0,
            last_request: Instant::now(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut WorkerState<W>,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            WorkerMsg::Request(key, request) => {
                state.received += 1;
                state.last_request = Instant::now();
                state.args.work.handle(&key, request).await;
            }
            WorkerMsg::IdleCheck => {
                let idle_for = state.last_request.elapsed();
                if idle_for >= state.args.idle && state.leave_table_if_drained(&myself) {
                    myself.stop(Some(IDLE_EXIT.into()));
                    return Ok(());
                }
                let next = state
                    .args
                    .idle
                    .saturating_sub(idle_for)
                    .max(Duration::from_millis(1));
                myself.send_after(next, || WorkerMsg::IdleCheck);
            }
        }
        Ok(())
    }
}

impl<W: KeyedWork> WorkerState<W> {
    /// Leaves the routing table if every request sent to this worker has been received.
    fn leave_table_if_drained(&self, myself: &ActorRef<WorkerMsg<W::Request>>) -> bool {
        let mut workers = lock(&self.args.partition.workers);
        match workers.get(&self.args.key) {
            Some(entry) if entry.actor.get_id() == myself.get_id() => {
                if entry.sent == self.received {
                    workers.remove(&self.args.key);
                    true
                } else {
                    false
                }
            }
            // Not in the table (replaced or cleared): nobody can send to this worker any more.
            _ => true,
        }
    }
}
