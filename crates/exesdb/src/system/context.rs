//! What every process of one store's tree shares: the configuration, the open storage, the
//! door to the Store's committer, and the commit notices. It outlives process restarts;
//! process state is always re-derived from it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use std::time::Instant;

use tokio::sync::{mpsc, oneshot, watch};

use crate::config::SystemConfig;
use crate::raft::{RaftGroup, SharedClusterId};
use crate::storage::Storage;
use crate::system::cluster::ClusterView;
use crate::system::core::notification::persistent::PersistentRegistry;
use crate::system::core::notification::tail::CommitTail;
use crate::system::core::persistence::subscriptions::SubscriptionsProcesses;
use crate::system::core::store::state_machine::{Command, Outcome};
use crate::system::hops::HopCounters;
use exesdb_types::StoreError;

/// A command waiting for the committer, with the channel its outcome goes back on.
pub(crate) struct CommitRequest {
    pub command: Command,
    pub reply: oneshot::Sender<Result<Outcome, StoreError>>,
    /// When it was handed to the queue.
    pub submitted: Instant,
}

/// What the committer's queue carries.
pub(crate) enum CommitMsg {
    Command(CommitRequest),
    /// Finish what is queued, then exit.
    Stop,
}

/// Counters of the commit path, for benchmarks and metrics.
#[derive(Debug, Default)]
pub(crate) struct CommitCounters {
    /// Storage batches committed (one fsync each).
    pub batches: AtomicU64,
    /// Commands in those batches.
    pub commands: AtomicU64,
    /// Events appended by those batches.
    pub events: AtomicU64,
    /// Time spent applying commands to the state machine, in nanoseconds.
    pub apply_nanos: AtomicU64,
    /// Time spent writing and syncing batches, in nanoseconds.
    pub write_nanos: AtomicU64,
}

/// A copy of the commit counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CommitStats {
    /// Batches committed: one fsync each.
    pub batches: u64,
    /// Commands applied (appends, snapshot and subscription writes).
    pub commands: u64,
    /// Events appended.
    pub events: u64,
    /// Time spent applying commands to the state machine, ns.
    pub apply_nanos: u64,
    /// Time spent writing and syncing batches, ns.
    pub write_nanos: u64,
}

/// The shared context of one store's System.
pub(crate) struct StoreContext {
    pub config: SystemConfig,
    pub storage: Arc<Storage>,
    committer: RwLock<Option<mpsc::Sender<CommitMsg>>>,
    /// Held by the running committer thread, so that a restarted Store's committer cannot
    /// start (and derive its state) before the previous one has finished.
    pub committer_lease: Arc<Mutex<()>>,
    /// The position one past the last durable event: "committed up to".
    pub committed: watch::Sender<u64>,
    /// The last events committed, shared by live subscribers.
    pub tail: CommitTail,
    pub counters: CommitCounters,
    pub hops: HopCounters,
    /// Whether this node leads the store (always, in single mode); kept by `LeaderTracker`.
    leader: AtomicBool,
    /// The same, for those that wait for it to change (`LeaderWorker`).
    leadership: watch::Sender<bool>,
    /// The persistent subscriptions running on this node (loaded by `LeaderWorker`).
    pub persistent: PersistentRegistry,
    /// `SubscriptionsWriter` and `SubscriptionsReader`, while they run.
    pub subscription_processes: SubscriptionsProcesses,
    /// Cluster mode: the store's Raft group, while the Store runs it.
    raft: RwLock<Option<RaftGroup>>,
    /// Cluster mode: the shutdown of the group of a Store that was killed, which the restarted
    /// Store waits for.
    pub raft_stopping: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Cluster mode: the other nodes, as discovery last heard them.
    pub cluster_view: Arc<ClusterView>,
    /// Cluster mode: the cluster the store's data belongs to, once it belongs to one.
    cluster_id: SharedClusterId,
}

impl StoreContext {
    pub(crate) fn new(config: SystemConfig, storage: Arc<Storage>, next_position: u64) -> Self {
        let tail = CommitTail::new(
            config.limits.commit_tail_events_max,
            config.limits.commit_tail_bytes_max,
        );
        StoreContext {
            config,
            storage,
            committer: RwLock::new(None),
            committer_lease: Arc::new(Mutex::new(())),
            committed: watch::Sender::new(next_position),
            tail,
            counters: CommitCounters::default(),
            hops: HopCounters::default(),
            leader: AtomicBool::new(false),
            leadership: watch::Sender::new(false),
            persistent: PersistentRegistry::default(),
            subscription_processes: SubscriptionsProcesses::default(),
            raft: RwLock::new(None),
            raft_stopping: Mutex::new(None),
            cluster_view: Arc::new(ClusterView::default()),
            cluster_id: SharedClusterId::default(),
        }
    }

    pub(crate) fn store_id(&self) -> &str {
        &self.config.store_id
    }

    pub(crate) fn set_committer(&self, queue: Option<mpsc::Sender<CommitMsg>>) {
        *self
            .committer
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = queue;
    }

    fn committer(&self) -> Option<mpsc::Sender<CommitMsg>> {
        self.committer
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Queues a command for the committer; the outcome arrives on `reply`. When the queue is
    /// full this waits (backpressure); when there is no committer the reply is `unavailable`.
    pub(crate) async fn submit(
        &self,
        command: Command,
        reply: oneshot::Sender<Result<Outcome, StoreError>>,
    ) {
        let Some(queue) = self.committer() else {
            let _ = reply.send(Err(StoreError::unavailable(
                "the store is restarting or stopping",
            )));
            return;
        };
        if let Err(mpsc::error::SendError(CommitMsg::Command(request))) = queue
            .send(CommitMsg::Command(CommitRequest {
                command,
                reply,
                submitted: Instant::now(),
            }))
            .await
        {
            let _ = request.reply.send(Err(StoreError::unavailable(
                "the store stopped before accepting the command",
            )));
        }
    }

    pub(crate) fn commit_stats(&self) -> CommitStats {
        CommitStats {
            batches: self.counters.batches.load(Ordering::Relaxed),
            commands: self.counters.commands.load(Ordering::Relaxed),
            events: self.counters.events.load(Ordering::Relaxed),
            apply_nanos: self.counters.apply_nanos.load(Ordering::Relaxed),
            write_nanos: self.counters.write_nanos.load(Ordering::Relaxed),
        }
    }

    pub(crate) fn is_leader(&self) -> bool {
        self.leader.load(Ordering::Acquire)
    }

    /// Records whether this node leads the store, and tells those waiting when it changes.
    pub(crate) fn set_leader(&self, leading: bool) {
        self.leader.store(leading, Ordering::Release);
        self.leadership.send_if_modified(|now| {
            let changed = *now != leading;
            *now = leading;
            changed
        });
    }

    /// Follows whether this node leads the store.
    pub(crate) fn leadership(&self) -> watch::Receiver<bool> {
        self.leadership.subscribe()
    }

    /// The store's Raft group, while it runs (cluster mode).
    pub(crate) fn raft_group(&self) -> Option<RaftGroup> {
        self.raft
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    pub(crate) fn set_raft_group(&self, group: Option<RaftGroup>) {
        *self
            .raft
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = group;
    }

    /// The cluster the store's data belongs to (cluster mode, once formed or joined).
    pub(crate) fn cluster_id(&self) -> Option<String> {
        self.cluster_id
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// The cluster id as the Raft group shares it.
    pub(crate) fn shared_cluster_id(&self) -> SharedClusterId {
        self.cluster_id.clone()
    }

    pub(crate) fn set_cluster_id(&self, cluster_id: Option<String>) {
        *self
            .cluster_id
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = cluster_id;
    }
}
