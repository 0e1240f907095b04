//! `ExESDB.System` [S] (:rest_for_one): one store's whole process tree, and [`System`], the
//! handle that starts and stops it. `CoreSystem` starts first, `GatewaySystem` last, so the
//! store takes requests only once its core is up, and a core restart restarts the gateway
//! after it. Restart intensity: `restarts_max` within `restart_period_ms`, the same for every
//! supervisor of the System. Each supervisor's module builds its own children (the tree as
//! data is `crates/exesdb/tests/data/supervision-tree-single.txt`); the API is
//! [`StoreApi`], in `store_api.rs`.

pub(crate) mod cluster;
pub(crate) mod context;
pub(crate) mod core;
pub(crate) mod gateway;
pub(crate) mod hops;
mod store_api;
pub(crate) mod wiring;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

#[cfg(feature = "fault-injection")]
use exesdb_types::StoreError;
use exesdb_types::{Kind, Strategy, TreeSnapshot};
use ractor::{Actor, ActorRef};
use tokio::sync::Semaphore;

use crate::config::SystemConfig;
use crate::error::StartError;
use crate::storage::Storage;
use crate::supervision::supervisor::{Supervisor, SupervisorArgs};
use crate::supervision::{ChildSpec, SupervisorSettings, TreeNode};
use context::StoreContext;
use core::notification::subscription::SubscriptionRegistry;
use gateway::Gateway;
use gateway::pubsub::PubSubShared;
use hops::Hop;
use store_api::Pools;
pub use store_api::{AllPages, StoreApi};
use wiring::Wiring;

/// The name of the root of the tree.
pub(crate) const ROOT_NAME: &str = "ExESDB.System";

/// Core first, gateway last: a core restart restarts the gateway after it.
const STRATEGY: Strategy = Strategy::RestForOne;

/// A running store: its supervision tree, and through [`System::api`] the embedded API.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use exesdb::{ExpectedVersion, NewEvent, System, SystemConfig};
/// let system = System::start(SystemConfig::new("./data", "default")).await?;
/// let result = system
///     .api()
///     .append("order-1", ExpectedVersion::NoStream, vec![NewEvent::new("OrderPlaced", "{}")])
///     .await?;
/// assert_eq!(result.first_event_number, 0);
/// system.stop().await;
/// # Ok(()) }
/// ```
pub struct System {
    api: StoreApi,
    gateway: Gateway,
    root: ActorRef<()>,
    root_node: Arc<TreeNode>,
}

impl System {
    /// Opens the store's data and starts its tree. Returns once every process is running.
    pub async fn start(config: SystemConfig) -> Result<System, StartError> {
        config.validate()?;
        let directory = config.store_dir();
        let storage_settings = config.storage.clone();
        let storage =
            tokio::task::spawn_blocking(move || Storage::open(&directory, &storage_settings))
                .await
                .map_err(|error| {
                    StartError::Tree(format!("opening storage panicked: {error}"))
                })??;
        let (next_position, bus_position) = storage
            .engine()
            .and_then(|engine| Ok((engine.next_position()?, engine.bus_position()?)))
            .map_err(|error| StartError::Corrupt(error.to_string()))?;
        let cluster_id = check_mode(&config, &storage, next_position)?;
        let admission = Arc::new(Semaphore::new(config.commit.requests_in_flight_max));
        let context = Arc::new(StoreContext::new(config, Arc::new(storage), next_position));
        context.set_cluster_id(cluster_id);
        let subscriptions = Arc::new(SubscriptionRegistry::default());
        // A bus forwards from where it was before the last stop or crash; a bus new to this
        // store, from the events committed from now on.
        let pubsub = Arc::new(PubSubShared {
            api: std::sync::Mutex::new(None),
            bus: context.config.event_bus.clone(),
            forwarded: std::sync::atomic::AtomicU64::new(bus_position.unwrap_or(next_position)),
            store_id: context.store_id().to_string(),
            context: context.clone(),
        });
        let wiring = Wiring {
            context: context.clone(),
            subscriptions: subscriptions.clone(),
            pubsub: pubsub.clone(),
            settings: supervisor_settings(&context),
        };
        let (pools, root_node, children) = build_tree(&wiring);
        let args = SupervisorArgs {
            node: root_node.clone(),
            strategy: STRATEGY,
            settings: wiring.settings,
            children,
        };
        let (root, _) = Actor::spawn(None, Supervisor, args)
            .await
            .map_err(|error| StartError::Tree(error.to_string()))?;
        root_node.set_cell(Some(root.get_cell()));
        let api = StoreApi {
            context,
            subscriptions,
            pools: Arc::new(pools),
            admission,
            accepting: Arc::new(AtomicBool::new(true)),
        };
        *lock_ignoring_poison(&pubsub.api) = Some(api.clone());
        // Before the first append can commit, so that a crash before PubSub's first store
        // does not make the next start begin after events it never handed over.
        if pubsub.bus.is_some() && bus_position.is_none() {
            gateway::pubsub::store_position(&api.context, next_position)
                .await
                .map_err(|error| {
                    StartError::Tree(format!("storing the event bus's position: {error}"))
                })?;
        }
        let pool_settings = &api.context.config.pools;
        let gateway = Gateway::new(
            api.clone(),
            api.pools.gateway_workers.clone(),
            pool_settings.gateway_workers,
            pool_settings.gateway_requests_in_flight_max,
        );
        Ok(System {
            api,
            gateway,
            root,
            root_node,
        })
    }

    /// Serves a call another node's Raft group (or discovery) made to this store, and returns
    /// the encoded answer. The server's peer port calls this.
    pub async fn handle_peer_call(&self, call: &crate::PeerCall) -> Vec<u8> {
        let context = &self.api.context;
        if let Some(refusal) = cluster::foreign_cluster(context, call) {
            return refusal;
        }
        if let Some(refusal) = cluster::another_node(context, call) {
            return refusal;
        }
        let (kind, body) = (call.kind, call.body.as_slice());
        match kind {
            crate::PeerCallKind::Hello => cluster::answer_hello(context, body),
            _ => match context.raft_group() {
                Some(group) => group.handle(kind, body).await,
                None => crate::raft::refusal("the store's Raft group is not running on this node"),
            },
        }
    }

    /// Serves a stream another node's Raft group opened to this store (the leader's pipelined
    /// AppendEntries), and returns the encoded answers in order. The server's peer port calls
    /// this; `call` is the stream's header (its body is unused).
    pub fn handle_peer_stream(
        &self,
        call: &crate::PeerCall,
        messages: crate::PeerMessages,
    ) -> crate::PeerMessages {
        let context = &self.api.context;
        let refusal = cluster::foreign_cluster(context, call)
            .or_else(|| cluster::another_node(context, call));
        let answers = match (refusal, call.kind, context.raft_group()) {
            (Some(refusal), _, _) => refusal,
            (None, crate::PeerCallKind::AppendEntries, Some(group)) => {
                return group.append_stream(messages);
            }
            (None, crate::PeerCallKind::AppendEntries, None) => {
                crate::raft::refusal("the store's Raft group is not running on this node")
            }
            (None, kind, _) => {
                crate::raft::refusal(&format!("a peer stream of {kind:?} calls is not served"))
            }
        };
        Box::pin(futures_util::stream::once(std::future::ready(answers)))
    }

    /// The store's place in its cluster as this node sees it; `None` in single mode.
    pub fn cluster_status(&self) -> Option<exesdb_types::ClusterStatus> {
        cluster::status(&self.api.context)
    }

    /// In cluster mode, while this node does not lead the store: the `not_leader` error that
    /// names the leader, for a client that asked to be redirected rather than forwarded.
    pub fn not_leader(&self) -> Option<exesdb_types::StoreError> {
        cluster::not_leader(&self.api.context)
    }

    /// Adds the node at `peer_addr` (its `--peer-advertise`) to the store's group: as a
    /// learner, then, once it has caught up, as a voter. Answers what was done.
    pub async fn cluster_add(&self, peer_addr: &str) -> Result<String, exesdb_types::StoreError> {
        cluster::add_member(&self.api.context, peer_addr).await
    }

    /// Removes node `node_id` from the store's group.
    pub async fn cluster_remove(&self, node_id: u64) -> Result<String, exesdb_types::StoreError> {
        cluster::remove_member(&self.api.context, node_id).await
    }

    /// Hands the store's leadership to node `to`.
    pub async fn cluster_transfer_leader(
        &self,
        to: u64,
    ) -> Result<String, exesdb_types::StoreError> {
        cluster::transfer_leader(&self.api.context, to).await
    }

    /// Whether the tree is up and this node accepts writes for the store.
    pub fn accepts_writes(&self) -> bool {
        self.api.accepting.load(Ordering::Acquire)
            && self.root.get_status() == ractor::ActorStatus::Running
            && self.api.context.is_leader()
    }

    /// The store's API: append, read, snapshot, subscribe. Clone it to share it among tasks.
    pub fn api(&self) -> &StoreApi {
        &self.api
    }

    /// The way in for network requests: admission control and gateway workers.
    pub fn gateway(&self) -> &Gateway {
        &self.gateway
    }

    /// The live supervision tree.
    pub fn tree(&self) -> TreeSnapshot {
        self.root_node.snapshot()
    }

    /// Sets the gauges a metrics scrape reads: active workers, gateway requests in flight and
    /// each process's restart count.
    pub fn publish_gauges(&self) {
        let store = self.api.store_id().to_string();
        metrics::gauge!("exesdb_active_workers", "store" => store.clone())
            .set(self.api.active_workers() as f64);
        metrics::gauge!("exesdb_gateway_in_flight", "store" => store.clone())
            .set(self.gateway.in_flight() as f64);
        metrics::counter!("exesdb_emitter_steps_total", "store" => store.clone())
            .absolute(self.api.emitter_steps());
        let hops = self.api.append_hops();
        for hop in Hop::ALL {
            let labels = [("store", store.clone()), ("hop", hop.name().to_string())];
            metrics::counter!("exesdb_append_hop_nanoseconds_total", &labels)
                .absolute(hops.nanos(hop));
            metrics::counter!("exesdb_append_hop_requests_total", &labels)
                .absolute(hops.count(hop));
        }
        fn restarts(node: &TreeSnapshot, store: &str) {
            metrics::gauge!(
                "exesdb_supervisor_restarts",
                "store" => store.to_string(),
                "process" => node.name.clone()
            )
            .set(node.restarts as f64);
            for child in &node.children {
                restarts(child, store);
            }
        }
        restarts(&self.tree(), &store);
    }
}

impl System {
    /// Stops cleanly: refuses new requests, lets those in flight finish (up to the shutdown
    /// timeout), then stops the tree in reverse start order. Everything acknowledged is durable.
    pub async fn stop(self) {
        self.shutdown().await;
    }

    /// [`System::stop`] for a System that is shared: stops the tree, leaves the handle, whose
    /// calls then answer `unavailable`.
    pub async fn shutdown(&self) {
        self.api.accepting.store(false, Ordering::Release);
        self.api.end_subscriptions();
        let all = u32::try_from(self.api.context.config.commit.requests_in_flight_max)
            .unwrap_or(u32::MAX);
        let timeout = Duration::from_millis(self.api.context.config.shutdown_timeout_ms);
        let _ = tokio::time::timeout(timeout, self.api.admission.acquire_many(all)).await;
        self.api.admission.close();
        // The leader hands over before its Store stops, so that the others need not wait an
        // election timeout to learn that it is gone.
        if let Some(group) = self.api.context.raft_group() {
            group.hand_over_leadership().await;
        }
        supervision_stop(&self.root, timeout).await;
        self.api.pools.emitters.work().detach();
    }

    /// Makes the named process of the tree fail, as a crash would (test builds only).
    #[cfg(feature = "fault-injection")]
    pub fn inject_fault(&self, process_name: &str) -> Result<(), StoreError> {
        let node = self
            .root_node
            .find(process_name)
            .ok_or_else(|| StoreError::invalid(format!("no process named {process_name}")))?;
        let cell = node
            .cell()
            .ok_or_else(|| StoreError::unavailable(format!("{process_name} is not running")))?;
        cell.kill();
        Ok(())
    }

    /// Arms a storage fault (test builds only): the commit it names fails the way fjall fails
    /// one, and the committer's recovery (answer `unavailable`, reopen the engine, go on) runs
    /// as after a real I/O error. See `storage/fault.rs`.
    #[cfg(feature = "fault-injection")]
    pub fn inject_storage_fault(&self, fault: crate::storage::fault::StorageFault) {
        self.api.context.storage.inject_fault(fault);
    }

    /// The actor id of the named process now (changes when it restarts).
    #[cfg(feature = "fault-injection")]
    pub fn process_id(&self, process_name: &str) -> Option<String> {
        let cell = self.root_node.find(process_name)?.cell()?;
        Some(cell.get_id().to_string())
    }
}

impl Drop for System {
    /// A System dropped without [`System::stop`] still stops its tree (in the background:
    /// a destructor cannot wait). Everything acknowledged is already durable.
    fn drop(&mut self) {
        if self.root.get_status() == ractor::ActorStatus::Running {
            self.root.stop(Some("the System handle was dropped".into()));
        }
        self.api.subscriptions.clear();
        self.api.pools.emitters.work().detach();
    }
}

async fn supervision_stop(root: &ActorRef<()>, timeout: Duration) {
    // The root's post_stop stops its children in reverse order, each waiting for its own.
    let patience = timeout * 4;
    if root
        .stop_and_wait(Some("shutdown".into()), Some(patience))
        .await
        .is_err()
    {
        tracing::error!("the tree did not stop in time; killing it");
        root.kill();
    }
}

fn supervisor_settings(context: &StoreContext) -> SupervisorSettings {
    SupervisorSettings {
        intensity: context.config.intensity,
        shutdown_timeout: Duration::from_millis(context.config.shutdown_timeout_ms),
    }
}

/// Refuses data of the other mode, and returns the cluster the data belongs to, if any:
/// cluster mode does not take over a single-mode store (its events were never in a Raft log,
/// so no other node could ever hold them), and single mode does not open a cluster's store
/// (its writes would never reach the other nodes).
fn check_mode(
    config: &SystemConfig,
    storage: &Storage,
    next_position: u64,
) -> Result<Option<String>, StartError> {
    let store_dir = config.store_dir();
    let io = |source| StartError::Io {
        path: store_dir.join(cluster::CLUSTER_ID_FILE),
        source,
    };
    let cluster_id = cluster::read_cluster_id(&store_dir).map_err(io)?;
    let voted = storage
        .engine()
        .and_then(|engine| engine.raft_meta("vote"))
        .map_err(|error| StartError::Corrupt(error.to_string()))?
        .is_some();
    let wrong = |detail: String| StartError::WrongMode {
        path: store_dir.clone(),
        detail,
    };
    match (&config.cluster, &cluster_id) {
        (Some(_), None) if !voted && next_position > 0 => Err(wrong(format!(
            "this store holds single-mode data ({next_position} events) and no cluster state; \
             cluster mode does not take it over. Start it with --mode single, or give cluster \
             mode another data directory"
        ))),
        (None, Some(cluster_id)) => Err(wrong(format!(
            "this store belongs to cluster {cluster_id}; start it with --mode cluster"
        ))),
        (None, None) if voted => Err(wrong(
            "this store holds a cluster's Raft state; start it with --mode cluster".to_string(),
        )),
        _ => Ok(cluster_id),
    }
}

fn lock_ignoring_poison<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The root's children and the handles of every pool, built by the modules that own them.
fn build_tree(wiring: &Wiring) -> (Pools, Arc<TreeNode>, Vec<ChildSpec>) {
    let (persistence, emitters, core) = core::core_system(wiring);
    let (gateway_workers, gateway) = gateway::gateway_system(wiring);
    let root = TreeNode::new(ROOT_NAME, Kind::Supervisor, Some(STRATEGY));
    // Cluster mode: LibCluster and ClusterSystem start after the core, before the gateway.
    let cluster_layer = match wiring.context.config.cluster {
        Some(_) => cluster::cluster_layer(wiring),
        None => Vec::new(),
    };
    let mut children = vec![core];
    children.extend(cluster_layer);
    children.push(gateway);
    for child in &children {
        root.add_child(child.node.clone());
    }
    let pools = Pools {
        gateway_workers,
        emitters,
        streams_writers: persistence.streams_writers,
        streams_readers: persistence.streams_readers,
        snapshots_writers: persistence.snapshots_writers,
        snapshots_readers: persistence.snapshots_readers,
        read_turn: std::sync::atomic::AtomicU64::new(0),
    };
    (pools, root, children)
}

/// Runs storage work that may wait for the disk without holding up the runtime's other tasks:
/// in place on a multi-thread runtime (`block_in_place` hands this thread's other tasks to
/// another; no thread to wake, so a live delivery stays quick), on a blocking thread on any
/// other runtime (where `block_in_place` would panic). A panic in `work` goes on in the caller,
/// either way, so the process's supervisor sees it as it would any other.
pub(crate) async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    use tokio::runtime::{Handle, RuntimeFlavor};
    if Handle::current().runtime_flavor() == RuntimeFlavor::MultiThread {
        return tokio::task::block_in_place(work);
    }
    match tokio::task::spawn_blocking(work).await {
        Ok(done) => done,
        Err(error) => match error.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            // Only a runtime shutting down cancels blocking work, and it drops this caller too.
            Err(_) => panic!("storage work cancelled: the runtime is shutting down"),
        },
    }
}
