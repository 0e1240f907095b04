//! `ExESDB.StoreCoordinator` [GS]: forms the store's Raft group exactly once, and keeps a node
//! from mixing clusters.
//!
//! Bootstrap: when `cluster_size` nodes of this cluster's name are known (this one and those
//! discovery heard from), none of them formed, the one with the lowest id among the first
//! `cluster_size` ids initializes the group with all of them, and records a new cluster id.
//! The others join when the new leader reaches them, and take the cluster id from a member's
//! hello. Every node decides from the same view, and openraft refuses a second initialize of a
//! node that is formed, so two groups are never formed from one set of nodes.

use std::collections::BTreeMap;
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::{Task, own_hello};
use crate::raft::PeerNode;
use crate::supervision::service::Service;
use crate::system::context::StoreContext;

/// The file in the store's directory that names the cluster its data belongs to.
pub(crate) const CLUSTER_ID_FILE: &str = "CLUSTER_ID";

/// The cluster the store's data belongs to, if it belongs to one.
pub(crate) fn read_cluster_id(store_dir: &Path) -> io::Result<Option<String>> {
    match std::fs::read_to_string(store_dir.join(CLUSTER_ID_FILE)) {
        Ok(text) => Ok(Some(text.trim().to_string()).filter(|id| !id.is_empty())),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(error),
    }
}

fn write_cluster_id(store_dir: &Path, cluster_id: &str) -> io::Result<()> {
    let path = store_dir.join(CLUSTER_ID_FILE);
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format!("{cluster_id}\n"))?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    std::fs::File::open(store_dir)?.sync_all()
}

/// The coordinator of one store.
pub(crate) struct StoreCoordinator {
    context: Arc<StoreContext>,
    task: Task,
}

impl StoreCoordinator {
    pub(crate) fn new(context: Arc<StoreContext>) -> Self {
        StoreCoordinator {
            context,
            task: Task::default(),
        }
    }
}

impl Service for StoreCoordinator {
    fn start(&self, _context: &StoreContext) -> Result<(), String> {
        let context = self.context.clone();
        let task = tokio::spawn(async move {
            if let Err(error) = coordinate(&context).await {
                tracing::error!(store = context.store_id(), %error, "the store's coordinator stopped");
                return;
            }
            balance(&context).await;
        });
        self.task.replace(Some(task.abort_handle()));
        Ok(())
    }

    fn stop(&self, _context: &StoreContext) {
        self.task.replace(None);
    }
}

/// How often the coordinator looks at where its store's leadership is. A clock, not a signal:
/// what matters (a preferred node back and caught up) builds up gradually, and a look is cheap.
const BALANCE_EVERY: Duration = Duration::from_secs(2);

/// Keeps the store's leadership on its preferred node while that one is up (see
/// `RaftGroup::lead_where_preferred`), so that with several stores the leaders, and the write
/// load, spread over the nodes.
async fn balance(context: &StoreContext) {
    let mut clock = tokio::time::interval(BALANCE_EVERY);
    clock.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        clock.tick().await;
        let Some(group) = context.raft_group() else {
            continue;
        };
        // Every node hosts the same stores; they register as they start. With one store
        // there is nothing to spread, and an operator's transfer-leader stands.
        let stores = context.config.node_stores.list();
        if stores.len() < 2 {
            continue;
        }
        let rank = stores
            .iter()
            .position(|store| store == context.store_id())
            .unwrap_or(0);
        let heard = context.cluster_view.peers();
        group
            .lead_where_preferred(rank, |node_id| {
                heard
                    .get(&node_id)
                    .is_some_and(|seen| seen.at.elapsed() < super::DOWN_AFTER)
            })
            .await;
    }
}

/// Forms the group or waits to be taken in; returns once the store belongs to a cluster.
async fn coordinate(context: &StoreContext) -> io::Result<()> {
    let Some(cluster) = context.config.cluster.clone() else {
        return Ok(());
    };
    let store_dir = context.config.store_dir();
    let mut changes = context.cluster_view.changes();
    let recheck = Duration::from_millis(cluster.discovery_interval_ms.max(50));
    let mut waiting_said = false;
    loop {
        let Some(group) = context.raft_group() else {
            return Err(io::Error::other("the store's Raft group is not running"));
        };
        let peers = context.cluster_view.peers();
        if group.is_initialized().await {
            if context.cluster_id().is_none() {
                let learned = peers
                    .values()
                    .find_map(|seen| seen.hello.cluster_id.clone());
                if let Some(cluster_id) = learned {
                    write_cluster_id(&store_dir, &cluster_id)?;
                    context.set_cluster_id(Some(cluster_id.clone()));
                    tracing::info!(store = context.store_id(), cluster_id, "joined the cluster");
                }
            }
            if context.cluster_id().is_some() {
                return Ok(());
            }
        } else if peers.values().any(|seen| seen.hello.formed) {
            if !waiting_said {
                tracing::info!(
                    store = context.store_id(),
                    node_id = cluster.node_id,
                    "the cluster is already formed: waiting to be added (exesdb cluster add)"
                );
                waiting_said = true;
            }
        } else {
            let own = own_hello(context);
            let mut candidates: BTreeMap<u64, PeerNode> = peers
                .values()
                .filter(|seen| seen.hello.cluster_id.is_none())
                .map(|seen| {
                    (
                        seen.hello.node_id,
                        PeerNode {
                            peer_addr: seen.hello.peer_addr.clone(),
                            client_addr: seen.hello.client_addr.clone(),
                        },
                    )
                })
                .collect();
            candidates.insert(
                own.node_id,
                PeerNode {
                    peer_addr: own.peer_addr,
                    client_addr: own.client_addr,
                },
            );
            if candidates.len() >= cluster.cluster_size {
                let members: BTreeMap<u64, PeerNode> =
                    candidates.into_iter().take(cluster.cluster_size).collect();
                let chosen = members.keys().next().copied();
                if chosen == Some(cluster.node_id) && context.cluster_id().is_none() {
                    let cluster_id = uuid::Uuid::now_v7().to_string();
                    write_cluster_id(&store_dir, &cluster_id)?;
                    context.set_cluster_id(Some(cluster_id.clone()));
                    let ids: Vec<u64> = members.keys().copied().collect();
                    tracing::info!(
                        store = context.store_id(),
                        cluster_id,
                        ?ids,
                        "forming the cluster"
                    );
                    group.initialize(members).await?;
                }
            }
        }
        // The view changes with every new hello; formed groups show up there too.
        let _ = tokio::time::timeout(recheck, changes.changed()).await;
    }
}
