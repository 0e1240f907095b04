//! Cluster mode's layer of the tree, started between `CoreSystem` and `GatewaySystem`:
//! `LibCluster` [S] finds the other nodes, and `ExESDB.ClusterSystem` [S] (:one_for_one) holds
//! `StoreCoordinator` [GS], which forms the store's Raft group exactly once, and `NodeMonitor`
//! [GS], which reports each peer's health and never changes membership (only the Raft
//! majority does). one_for_one: the coordinator and the monitor do not depend on each other.
//!
//! Discovery is static seeds plus a hello over the peer port: each node asks the seeds who
//! they are (id, addresses, cluster name and id, whether they are formed, their leader), and
//! learns from every hello it answers.

mod coordinator;
mod monitor;
mod view;

use std::sync::{Arc, Mutex};

use exesdb_types::{Kind, Strategy};
use tokio::task::AbortHandle;

use crate::ClusterConfig;
use crate::supervision::ChildSpec;
use crate::supervision::TreeNode;
use crate::supervision::service::{Service, ServiceActor, ServiceArgs};
use crate::system::context::StoreContext;
use crate::system::wiring::Wiring;
pub(crate) use coordinator::{CLUSTER_ID_FILE, StoreCoordinator, read_cluster_id};
use exesdb_types::{ClusterMember, ClusterStatus, StoreError};
pub(crate) use view::{ClusterView, Hello};

/// The coordinator and the monitor are independent.
const STRATEGY: Strategy = Strategy::OneForOne;

/// `LibCluster` and `ExESDB.ClusterSystem`, in start order.
pub(crate) fn cluster_layer(wiring: &Wiring) -> Vec<ChildSpec> {
    let context = wiring.context.clone();
    let discovery = Arc::new(Discovery {
        context: wiring.context.clone(),
        task: Task::default(),
    });
    // The spec draws LibCluster as an external supervisor with no strategy and no children
    // shown: it supervises its own discovery task.
    let lib_cluster = ChildSpec::actor(
        TreeNode::new("LibCluster", Kind::Supervisor, None),
        move || {
            (
                ServiceActor,
                ServiceArgs {
                    service: discovery.clone(),
                    context: context.clone(),
                },
            )
        },
    );
    let cluster_system = wiring.supervisor(
        "ExESDB.ClusterSystem",
        STRATEGY,
        vec![
            wiring.service(
                "ExESDB.StoreCoordinator",
                Arc::new(StoreCoordinator::new(wiring.context.clone())),
            ),
            wiring.service(
                "ExESDB.NodeMonitor",
                Arc::new(monitor::NodeMonitor::new(wiring.context.clone())),
            ),
        ],
    );
    vec![lib_cluster, cluster_system]
}

/// A task a process runs while it runs; replaced at a restart, ended at a stop.
#[derive(Default)]
pub(crate) struct Task(Mutex<Option<AbortHandle>>);

impl Task {
    pub(crate) fn replace(&self, task: Option<AbortHandle>) {
        let old = std::mem::replace(
            &mut *self
                .0
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
            task,
        );
        if let Some(old) = old {
            old.abort();
        }
    }
}

/// LibCluster's work: ask every seed who it is, every `discovery_interval_ms`, so that the
/// coordinator sees the nodes that are up and the monitor sees when each was last heard.
struct Discovery {
    context: Arc<StoreContext>,
    task: Task,
}

impl Service for Discovery {
    fn start(&self, _context: &StoreContext) -> Result<(), String> {
        let context = self.context.clone();
        let Some(cluster) = context.config.cluster.clone() else {
            return Err("LibCluster runs only in cluster mode".into());
        };
        let task = tokio::spawn(async move {
            let interval = std::time::Duration::from_millis(cluster.discovery_interval_ms);
            loop {
                let hello = own_hello(&context);
                // The seeds, and the members added since, which need not be seeds.
                let mut addresses: std::collections::BTreeSet<String> =
                    cluster.seeds.iter().cloned().collect();
                if let Some(group) = context.raft_group() {
                    let metrics = group.metrics();
                    addresses.extend(
                        metrics
                            .membership_config
                            .membership()
                            .nodes()
                            .map(|(_, node)| node.peer_addr.clone()),
                    );
                }
                addresses.remove(&cluster.peer_advertise);
                for address in &addresses {
                    if let Ok(answer) =
                        view::ask(&cluster, context.store_id(), address, &hello).await
                    {
                        context.cluster_view.record(answer);
                    }
                }
                tokio::time::sleep(interval).await;
            }
        });
        self.task.replace(Some(task.abort_handle()));
        Ok(())
    }

    fn stop(&self, _context: &StoreContext) {
        self.task.replace(None);
    }
}

/// This node's hello for the store: who it is, and what its Raft group knows.
pub(crate) fn own_hello(context: &StoreContext) -> Hello {
    let cluster = context.config.cluster.as_ref();
    let metrics = context.raft_group().map(|group| group.metrics());
    Hello {
        node_id: cluster.map_or(0, |cluster| cluster.node_id),
        cluster_name: cluster.map_or_else(String::new, |cluster| cluster.cluster_name.clone()),
        cluster_id: context.cluster_id(),
        peer_addr: cluster.map_or_else(String::new, |cluster| cluster.peer_advertise.clone()),
        client_addr: cluster.map_or_else(String::new, |cluster| cluster.client_advertise.clone()),
        formed: metrics.as_ref().is_some_and(|metrics| {
            metrics
                .membership_config
                .membership()
                .voter_ids()
                .next()
                .is_some()
        }),
        leader: metrics.and_then(|metrics| metrics.current_leader),
    }
}

/// The refusal of a call from a node of another cluster: when both stores belong to a cluster
/// and the two differ, the call is refused with both ids, counted and logged. A node that
/// holds a cluster's data never takes another cluster's log (KurrentDB #2436: a wrong DNS
/// entry merged two clusters, and most of their nodes truncated their data).
pub(crate) fn foreign_cluster(context: &StoreContext, call: &crate::PeerCall) -> Option<Vec<u8>> {
    let (Some(ours), Some(theirs)) = (context.cluster_id(), call.cluster_id.as_deref()) else {
        return None;
    };
    if ours == theirs {
        return None;
    }
    metrics::counter!("exesdb_peer_refused_total", "reason" => "cluster_id").increment(1);
    tracing::error!(
        store = context.store_id(),
        ours,
        theirs,
        kind = ?call.kind,
        "refused a call from a node of another cluster"
    );
    Some(crate::raft::refusal(&format!(
        "this node's store {} belongs to cluster {ours}, the caller's to cluster {theirs}: a \
         node never joins another cluster",
        context.store_id()
    )))
}

/// The refusal of a call meant for another node id than this one. A node that lost its data
/// starts with a new id; its peers still call the old id at its address. Taking those calls
/// would make its empty log count as the old voter's, which can lose committed writes, so it
/// refuses them until an operator removes the old id and adds the new one.
pub(crate) fn another_node(context: &StoreContext, call: &crate::PeerCall) -> Option<Vec<u8>> {
    let own = context.config.cluster.as_ref()?.node_id;
    let target = call.target_node?;
    if target == own {
        return None;
    }
    metrics::counter!("exesdb_peer_refused_total", "reason" => "node_id").increment(1);
    tracing::error!(
        store = context.store_id(),
        own,
        target,
        kind = ?call.kind,
        "refused a call for another node id: if node {target} lost its data and this node \
         replaced it, remove {target} (exesdb cluster remove {target}) and add this node \
         (exesdb cluster add)"
    );
    Some(crate::raft::refusal(&format!(
        "this is node {own}, not node {target}: the node at this address was replaced; remove \
         node {target} from the cluster and add node {own}"
    )))
}

/// Answers another node's hello for this store, and remembers who asked.
pub(crate) fn answer_hello(context: &StoreContext, body: &[u8]) -> Vec<u8> {
    let Some(cluster) = context.config.cluster.as_ref() else {
        return crate::raft::refusal("this node runs in single mode");
    };
    let asker: Hello = match crate::raft::decode(body, "hello") {
        Ok(asker) => asker,
        Err(error) => return crate::raft::refusal(&error.to_string()),
    };
    if asker.cluster_name != cluster.cluster_name {
        return crate::raft::refusal(&format!(
            "this node belongs to cluster name {}, not {}",
            cluster.cluster_name, asker.cluster_name
        ));
    }
    if asker.node_id != cluster.node_id {
        context.cluster_view.record(asker);
    }
    crate::raft::encode(&Ok::<Hello, String>(own_hello(context))).unwrap_or_default()
}

/// The store's group on this node and the node's cluster settings, in cluster mode.
fn running_group(
    context: &StoreContext,
) -> Result<(crate::raft::RaftGroup, &ClusterConfig), StoreError> {
    let Some(cluster) = context.config.cluster.as_ref() else {
        return Err(StoreError::invalid(
            "this node runs in single mode: cluster commands need a node started with --mode \
             cluster",
        ));
    };
    let group = context.raft_group().ok_or_else(|| {
        StoreError::unavailable("the store's Raft group is not running on this node")
    })?;
    Ok((group, cluster))
}

/// Adds the node whose peer address is `peer_addr` to the store's group: asks it who it is,
/// then has the leader take it in as a learner and, once caught up, as a voter.
pub(crate) async fn add_member(
    context: &StoreContext,
    peer_addr: &str,
) -> Result<String, StoreError> {
    let (group, cluster) = running_group(context)?;
    let hello = view::ask(cluster, context.store_id(), peer_addr, &own_hello(context))
        .await
        .map_err(|why| {
            StoreError::unavailable(format!(
                "cannot ask the node at {peer_addr} who it is: {why}"
            ))
        })?;
    if let (Some(theirs), Some(ours)) = (hello.cluster_id.as_deref(), context.cluster_id())
        && theirs != ours
    {
        return Err(StoreError::invalid(format!(
            "the node at {peer_addr} holds data of cluster {theirs}, this store belongs to \
             cluster {ours}: a node never joins another cluster"
        )));
    }
    group
        .change_membership(crate::raft::MembershipChange::Add {
            node_id: hello.node_id,
            node: crate::raft::PeerNode {
                peer_addr: hello.peer_addr,
                client_addr: hello.client_addr,
            },
        })
        .await
}

/// Removes node `node_id` from the store's group (through its leader).
pub(crate) async fn remove_member(
    context: &StoreContext,
    node_id: u64,
) -> Result<String, StoreError> {
    running_group(context)?
        .0
        .change_membership(crate::raft::MembershipChange::Remove { node_id })
        .await
}

/// Hands the store's leadership to node `to` (through the current leader).
pub(crate) async fn transfer_leader(context: &StoreContext, to: u64) -> Result<String, StoreError> {
    running_group(context)?
        .0
        .change_membership(crate::raft::MembershipChange::TransferLeader { to })
        .await
}

/// A member not heard from for this long is reported `down` (advisory: only Raft decides).
const DOWN_AFTER: std::time::Duration = std::time::Duration::from_secs(3);

/// The status of the store's group; `None` in single mode or while the group is not running.
/// In cluster mode, while this node does not lead the store: the `not_leader` answer naming
/// the leader it knows of.
pub(crate) fn not_leader(context: &StoreContext) -> Option<StoreError> {
    if context.is_leader() {
        return None;
    }
    context.config.cluster.as_ref()?;
    let group = context.raft_group()?;
    let metrics = group.metrics();
    let leader_node_id = metrics.current_leader;
    let leader_addr = leader_node_id
        .and_then(|leader| metrics.membership_config.membership().get_node(&leader))
        .map(|node| node.client_addr.clone());
    Some(StoreError::NotLeader {
        leader_node_id,
        leader_addr,
    })
}

pub(crate) fn status(context: &StoreContext) -> Option<ClusterStatus> {
    let cluster = context.config.cluster.as_ref()?;
    let group = context.raft_group()?;
    let metrics = group.metrics();
    let membership = metrics.membership_config.membership();
    let voters: std::collections::BTreeSet<u64> = membership.voter_ids().collect();
    let heard = context.cluster_view.peers();
    let members = membership
        .nodes()
        .map(|(node_id, node)| {
            let silent = *node_id != cluster.node_id
                && heard
                    .get(node_id)
                    .is_none_or(|seen| seen.at.elapsed() > DOWN_AFTER);
            ClusterMember {
                node_id: *node_id,
                peer_addr: node.peer_addr.clone(),
                client_addr: node.client_addr.clone(),
                state: if silent {
                    "down"
                } else if Some(*node_id) == metrics.current_leader {
                    "leader"
                } else if voters.contains(node_id) {
                    "follower"
                } else {
                    "learner"
                }
                .to_string(),
            }
        })
        .collect();
    let leader_client_addr = metrics
        .current_leader
        .and_then(|leader| membership.get_node(&leader))
        .map(|node| node.client_addr.clone());
    Some(ClusterStatus {
        store_id: context.store_id().to_string(),
        node_id: cluster.node_id,
        cluster_id: context.cluster_id(),
        leader: metrics.current_leader,
        leader_client_addr,
        term: metrics.current_term,
        commit_index: group.committed_index(),
        applied_index: metrics.last_applied.map(|log_id| log_id.index),
        members,
    })
}
