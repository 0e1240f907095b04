//! A store's place in its cluster, as one node sees it (cluster mode): what `exesdb cluster
//! status` prints and the `ClusterStatus` call carries.

use serde::Serialize;

/// A member of a store's Raft group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClusterMember {
    /// The node's id.
    pub node_id: u64,
    /// Where peers reach it.
    pub peer_addr: String,
    /// Where clients reach it.
    pub client_addr: String,
    /// `leader`, `follower`, `learner`, or `down` (not heard from for a while), as the
    /// answering node sees it.
    pub state: String,
}

/// A store's place in its cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClusterStatus {
    /// The store.
    pub store_id: String,
    /// The answering node's id.
    pub node_id: u64,
    /// The cluster the store belongs to, once formed or joined.
    pub cluster_id: Option<String>,
    /// The leader the answering node knows of.
    pub leader: Option<u64>,
    /// Where clients reach the leader.
    pub leader_client_addr: Option<String>,
    /// The Raft term.
    pub term: u64,
    /// The last log index the answering node knows is committed.
    pub commit_index: Option<u64>,
    /// The last log index applied on the answering node.
    pub applied_index: Option<u64>,
    /// The members, in id order.
    pub members: Vec<ClusterMember>,
}
