//! What this node knows of the others: the last hello of each, and when it came.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::config::ClusterConfig;
use crate::raft::{PeerCall, PeerCallKind, decode, encode};

/// Who a node is, as it says in a hello.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Hello {
    pub node_id: u64,
    pub cluster_name: String,
    /// The cluster this node's store belongs to, once it belongs to one.
    pub cluster_id: Option<String>,
    pub peer_addr: String,
    pub client_addr: String,
    /// Whether the store's Raft group was formed on this node.
    pub formed: bool,
    /// The leader this node knows of.
    pub leader: Option<u64>,
}

/// A peer's last hello.
#[derive(Debug, Clone)]
pub(crate) struct Seen {
    pub hello: Hello,
    pub at: Instant,
}

/// The peers this node has heard from. Each change is signalled, so the coordinator waits on
/// it instead of polling.
pub(crate) struct ClusterView {
    peers: Mutex<BTreeMap<u64, Seen>>,
    changes: watch::Sender<u64>,
}

impl Default for ClusterView {
    fn default() -> Self {
        ClusterView {
            peers: Mutex::new(BTreeMap::new()),
            changes: watch::Sender::new(0),
        }
    }
}

impl ClusterView {
    /// Records a hello (one this node got as an answer, or one it answered).
    pub(crate) fn record(&self, hello: Hello) {
        let changed = {
            let mut peers = self
                .peers
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let changed = peers
                .get(&hello.node_id)
                .is_none_or(|seen| seen.hello != hello);
            peers.insert(
                hello.node_id,
                Seen {
                    hello,
                    at: Instant::now(),
                },
            );
            changed
        };
        if changed {
            self.changes.send_modify(|version| *version += 1);
        }
    }

    /// Every peer heard from, by id.
    pub(crate) fn peers(&self) -> BTreeMap<u64, Seen> {
        self.peers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// A receiver that changes with the view.
    pub(crate) fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }
}

/// How long a hello may take.
const HELLO_DEADLINE: Duration = Duration::from_secs(1);

/// Sends `hello` to the node at `peer_addr` and returns its own, if it answers and is of this
/// cluster's name; otherwise why not, in words.
pub(crate) async fn ask(
    cluster: &ClusterConfig,
    store_id: &str,
    peer_addr: &str,
    hello: &Hello,
) -> Result<Hello, String> {
    let body = encode(hello).map_err(|error| error.to_string())?;
    let call = PeerCall {
        store_id: store_id.to_string(),
        kind: PeerCallKind::Hello,
        body,
        cluster_id: hello.cluster_id.clone(),
        target_node: None,
    };
    let answer = tokio::time::timeout(
        HELLO_DEADLINE,
        cluster.transport.call(peer_addr, call, HELLO_DEADLINE),
    )
    .await
    .map_err(|_| format!("{peer_addr} did not answer within {HELLO_DEADLINE:?}"))?
    .map_err(|error| {
        tracing::debug!(%error, peer_addr, "no answer to a hello");
        error.to_string()
    })?;
    let answer: Result<Hello, String> =
        decode(&answer, "hello").map_err(|error| error.to_string())?;
    match answer {
        Ok(answer) if answer.cluster_name == cluster.cluster_name => Ok(answer),
        Ok(answer) => {
            tracing::warn!(
                peer_addr,
                theirs = answer.cluster_name,
                ours = cluster.cluster_name,
                "a seed belongs to another cluster name; ignoring it"
            );
            Err(format!(
                "{peer_addr} belongs to cluster name {}, not {}",
                answer.cluster_name, cluster.cluster_name
            ))
        }
        Err(refusal) => {
            tracing::warn!(peer_addr, refusal, "a seed refused our hello");
            Err(format!("{peer_addr} refused: {refusal}"))
        }
    }
}
